"""Library code raises what went wrong; only the command line turns it into one line and an exit
code (1 for what it was given, as when the library raised SystemExit itself)."""

from __future__ import annotations

import re

import pytest

from orchestrator.entrypoints import cli
from orchestrator.entrypoints.bootstrap import BootstrapError, load_workflows
from orchestrator.entrypoints.settings import ConfigurationError, Settings, SettingsError


@pytest.mark.parametrize(
    ("variable", "raw", "says"),
    [
        ("ORCHESTRATOR_MAX_PARKED", "0", "ORCHESTRATOR_MAX_PARKED must be at least 1, not '0'"),
        ("ORCHESTRATOR_PREFETCH", "many", "ORCHESTRATOR_PREFETCH must be an integer, not 'many'"),
        (
            "ORCHESTRATOR_STALL_SECONDS",
            "inf",
            "ORCHESTRATOR_STALL_SECONDS must be a positive number of seconds up to 3155760000, not 'inf'",
        ),
    ],
)
def test_a_bad_setting_raises_and_the_command_line_says_it_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, raw: str, says: str
) -> None:
    monkeypatch.setenv(variable, raw)

    with pytest.raises(SettingsError) as raised:
        Settings.from_env()
    with pytest.raises(SystemExit) as exited:
        cli.main(["verify"])

    assert str(raised.value) == says and isinstance(raised.value, ValueError)
    assert exited.value.code == 1
    assert capsys.readouterr().err == f"orchestrator: {says}\n"


@pytest.mark.parametrize(
    ("modules", "says"),
    [
        (
            "no_such_package.workflows",
            "no workflow module 'no_such_package.workflows': it must be importable, installed in this"
            " environment or on PYTHONPATH (PYTHONPATH=. for the current directory)",
        ),
        ("json", "no workflows found in 'json'"),
    ],
)
def test_a_workflow_module_that_gives_nothing_raises_and_the_command_line_says_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], modules: str, says: str
) -> None:
    monkeypatch.setattr(cli, "migrate", lambda url: None)  # the database's part, not this test's

    with pytest.raises(BootstrapError, match=re.escape(says)) as raised:
        load_workflows(modules)
    with pytest.raises(SystemExit) as exited:
        cli.main(["migrate", "--workflows", modules])

    assert isinstance(raised.value, ConfigurationError)
    assert exited.value.code == 1
    assert capsys.readouterr().err == f"orchestrator: {says}\n"


def test_a_workflow_module_that_contradicts_itself_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "migrate", lambda url: None)  # the database's part, not this test's

    with pytest.raises(SystemExit) as exited:
        cli.main(["migrate", "--workflows", "tests.unit.refused_workflow"])

    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("orchestrator: the workflow definition is refused: refused.start:")
    assert err.count("\n") == 1 and "Traceback" not in err
