"""``orchestrator sagas``'s arguments and printing, without a database: what a typo costs (exit 2
and one line, before anything is asked of PostgreSQL), how a saga is named, what a table shows.
The commands against the real database and broker are tests/integration/test_cli_sagas.py."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from orchestrator.core.engine import saga_id_for
from orchestrator.entrypoints import cli, cli_sagas, cli_sagas_output
from orchestrator.entrypoints.api import models as m
from orchestrator.entrypoints.cli_dead_letters import CommandError
from orchestrator.entrypoints.cli_sagas_args import add_parser

SAGA = "d64bd942-956d-5a0a-981d-055fe83a181e"
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="orchestrator")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["sagas", *argv])


def exit_of(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(["sagas", *argv])
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("show", "1234"), "argument SAGA: not a saga id: '1234'"),
        (("skip", SAGA, "--outcome", "x", "--data", "{"), "argument --data: not JSON"),
        (("skip", SAGA, "--outcome", "x", "--data", "[1]"), "argument --data: must be a JSON object"),
        (("cancel", SAGA, "--actor", " bob"), "argument --actor: printable ASCII"),
        (("list", "--limit", "0"), "argument --limit: must be between 1 and 500"),
        (("list", "--status", "stuck"), "argument --status: invalid choice: 'stuck'"),
        (("skip", SAGA), "the following arguments are required: --outcome"),
        (("cancel", SAGA, "--new-attempt"), "unrecognized arguments: --new-attempt"),
    ],
)
def test_bad_arguments_exit_2_with_argparse_s_line(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    code, err = exit_of(capsys, *argv)

    assert code == 2 and says in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("show",), "show: give SAGA (a saga id), or --workflow and --key"),
        (("retry", "--workflow", "order"), "retry: give SAGA (a saga id), or --workflow and --key"),
        (("history", SAGA, "--key", "o-1"), "history: give SAGA, or --workflow and --key, not both"),
    ],
)
def test_a_saga_named_twice_or_half_exits_2_before_the_database_is_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/none")

    assert exit_of(capsys, *argv) == (2, f"orchestrator: {says}\n")


def test_a_saga_is_its_id_in_any_case_or_its_workflow_and_key() -> None:
    assert cli_sagas._chosen_saga(parse("show", SAGA.upper())) == SAGA
    assert cli_sagas._chosen_saga(parse("cancel", "--workflow", "order", "--key", "o-1")) == saga_id_for(
        "order", "o-1"
    )
    with pytest.raises(CommandError) as both:
        cli_sagas._chosen_saga(parse("cancel", SAGA, "--workflow", "order", "--key", "o-1"))
    assert both.value.code == 2


def test_the_arguments_are_the_rest_bodies() -> None:
    skip = parse("skip", SAGA, "--outcome", "inventory.StockReserved", "--data", '{"reservation_id": "r"}')
    resume = parse(
        "resume", SAGA, "--step", "reserve", "--new-attempt", "--reason", "fixed", "--actor", "bob"
    )

    assert (skip.outcome, skip.data, skip.actor) == ("inventory.StockReserved", {"reservation_id": "r"}, None)
    assert (resume.step, resume.new_attempt, resume.reason, resume.actor) == ("reserve", True, "fixed", "bob")


def test_the_help_says_the_exit_statuses_and_when_timers_fire(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["sagas", "cancel", "--help"])

    shown = capsys.readouterr().out
    assert exited.value.code == 0
    for line in ("3  refused", "4  no such saga", "5  PostgreSQL unreachable", "6  the action is done"):
        assert line in shown
    assert "next safety sweep (within 15 s)" in shown


def summary(key: str, state: str = "reserve") -> m.SagaSummary:
    return m.SagaSummary(
        id=SAGA,
        workflow="order",
        release="1",
        key=key,
        state=state,
        status=m.Status.RUNNING,
        version=1,
        last_error=None,
        created_at=AT,
        updated_at=AT,
    )


def test_a_page_is_a_table_then_how_many_and_the_next_cursor(capsys: pytest.CaptureFixture[str]) -> None:
    cli_sagas_output.print_page(m.SagaPage(items=[summary("o-1"), summary("\x1b[31mred")], next_cursor="abc"))

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "WORKFLOW", "KEY", "STATE", "STATUS", "UPDATED", "(UTC)"]
    assert lines[1].split() == [SAGA, "order", "o-1", "reserve", "running", "2026-01-02", "03:04:05"]
    assert lines[1].index("reserve") == lines[0].index("STATE")  # in columns
    assert "\x1b" not in lines[2] and "\\x1b[31mred" in lines[2]  # no escape sequence reaches the terminal
    assert lines[3] == "2 sagas; next page: --cursor abc"


def test_a_journal_is_one_line_per_entry(capsys: pytest.CaptureFixture[str]) -> None:
    entry = m.HistoryEntry(
        seq=2,
        recorded_at=AT,
        kind="operator",
        actor="cli:ann",
        message=m.Incoming(type="operator.cancel", message_id="operator:1", payload={}, schema_version=1),
        outcome="moved",
        from_state="charge",
        to_state="refund",
        status="compensating",
        reason="cancel by cli:ann: asked",
        commands=[m.SentCommand(type="payment.RefundPayment", message_id="m-1", payload={})],
        decision={},
    )

    cli_sagas_output.print_history(m.HistoryPage(items=[entry], next_after=2))

    header, line, footer = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["SEQ", "RECORDED", "(UTC)", "KIND", "ACTOR"]
    assert line.split() == [
        "2",
        "2026-01-02",
        "03:04:05",
        "operator",
        "cli:ann",
        "operator.cancel",
        "moved",
        "charge",
        "->",
        "refund",
        "(compensating)",
        "sent",
        "payment.RefundPayment;",
        "reason:",
        "cancel",
        "by",
        "cli:ann:",
        "asked",
    ]
    assert footer == "1 journal entry; more: --after 2"
