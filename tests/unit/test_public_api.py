"""The public API (``orchestrator``, ``orchestrator.testing``) is enough to write and test a
workflow, and typed: a user module written against it alone passes ``mypy --strict`` with no
``# type: ignore``, and runs under the test kit."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import orchestrator
import orchestrator.testing
from tests.unit import user_workflow
from tests.unit.strict_typing import USER_MODULE as TYPED_USER_MODULE
from tests.unit.strict_typing import StrictTyping

USER_MODULE = Path(user_workflow.__file__)


def test_the_package_exports_what_a_workflow_is_written_with() -> None:
    assert sorted(orchestrator.__all__) == sorted(
        [
            "Command",
            "CommandBuilder",
            "DefinitionError",
            "Event",
            "FAIL",
            "IGNORE",
            "Message",
            "PARK",
            "Policy",
            "Retry",
            "Saga",
            "SagaView",
            "Status",
            "Undo",
            "Workflow",
            "ChildCompensated",
            "ChildCompleted",
            "ChildFailed",
            "child",
            "parallel",
            "wait",
            "wait_for",
            "step",
            "upcaster",
        ]
    )
    assert sorted(orchestrator.testing.__all__) == [
        "ActionRefused",
        "Applied",
        "BatchResult",
        "Envelope",
        "JournalEntry",
        "MemoryStore",
        "OutgoingCommand",
        "SagaSnapshot",
        "Verdict",
        "WorkflowTestKit",
    ]
    for module in (orchestrator, orchestrator.testing):
        assert all(hasattr(module, name) for name in module.__all__)


def test_the_docstring_says_which_modules_are_public() -> None:
    doc = orchestrator.__doc__ or ""
    assert "``orchestrator.testing``" in doc and "internal" in doc


def test_importing_the_api_loads_only_the_core() -> None:
    """Every process that loads a workflow module imports ``orchestrator``: it brings the core
    and nothing else, no database driver, broker client or web framework."""
    probe = "import sys, orchestrator; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    modules = loaded.stdout.split()
    ours = [m for m in modules if m.startswith("orchestrator.")]
    assert "orchestrator.core.steps" in ours
    assert [m for m in ours if not m.startswith("orchestrator.core")] == []
    assert [m for m in ("asyncpg", "sqlalchemy", "aio_pika", "fastapi") if m in modules] == []


def test_the_user_module_imports_only_the_public_modules() -> None:
    tree = ast.parse(USER_MODULE.read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in imported if m.split(".")[0] == "orchestrator"} == {
        "orchestrator",
        "orchestrator.testing",
    }
    assert "type: ignore" not in USER_MODULE.read_text()


@pytest.mark.xdist_group("mypy")
def test_the_user_module_passes_mypy_strict(strict_typing: StrictTyping) -> None:
    assert strict_typing.errors_in(TYPED_USER_MODULE) == []


def test_the_user_module_runs_under_the_test_kit() -> None:
    user_workflow.check()
