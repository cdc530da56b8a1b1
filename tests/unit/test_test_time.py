"""The suite does not wait for time to pass (docs/testing.md, "Time without waiting").

Deadlines, retries and waits in the tests are driven by a clock the test moves (the in-process
orchestrator's held clock, ``tests/stepped_time.py``) or last a second at most. A test that must
wait longer in real time is marked ``realtime`` with its reason, is one of at most ten, and is
listed in docs/testing.md."""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from pathlib import Path

from orchestrator.core.definitions import Retry, Workflow
from tests.integration import workflows as fast_workflows

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
TESTING_DOC = ROOT / "docs" / "testing.md"
SECOND = timedelta(seconds=1)
MOST_REALTIME = 10


def _marked_realtime(node: ast.AST) -> bool:
    decorators = getattr(node, "decorator_list", [])
    return any("realtime" in ast.unparse(d) for d in decorators)


def _seconds(node: ast.expr) -> float | None:
    """The longest a sleep's argument may be, when it is written as a number or a
    ``uniform(a, b)`` of numbers; None when it is computed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("uniform") and len(node.args) == 2:
        bounds = [_seconds(arg) for arg in node.args]
        return max(b for b in bounds if b is not None) if all(b is not None for b in bounds) else None
    return None


def long_sleeps() -> list[str]:
    """Every ``sleep(n)`` over a second in the tests, outside a test marked realtime."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "sleep"):
                continue
            seconds = _seconds(node.args[0]) if node.args else None
            if seconds is None or seconds <= 1.0:
                continue
            enclosing, realtime = parents.get(node), False
            while enclosing is not None and not realtime:
                realtime = _marked_realtime(enclosing)
                enclosing = parents.get(enclosing)
            if not realtime:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def realtime_tests() -> list[str]:
    found = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _marked_realtime(node):
                found.append(node.name)
    return found


def test_no_test_sleeps_over_a_second_unless_marked_realtime() -> None:
    assert long_sleeps() == []


def test_the_scan_finds_a_long_sleep_and_reads_its_bounds() -> None:
    call = ast.parse("asyncio.sleep(rng.uniform(0.2, 1.5))").body[0].value  # type: ignore[attr-defined]
    assert _seconds(call.args[0]) == 1.5
    assert _seconds(ast.parse("sleep(delay)").body[0].value.args[0]) is None  # type: ignore[attr-defined]


def test_at_most_ten_tests_are_realtime_and_the_testing_guide_lists_each() -> None:
    marked = realtime_tests()
    assert len(marked) <= MOST_REALTIME, marked
    listed = set(re.findall(r"`(test_\w+)`", TESTING_DOC.read_text()))
    assert set(marked) <= listed, f"not in docs/testing.md: {set(marked) - listed}"


def _intervals(workflow: Workflow) -> list[tuple[str, timedelta]]:
    found: list[tuple[str, timedelta]] = []
    for name, spec in workflow.states.items():
        if spec.deadline is not None:
            found.append((f"{name} deadline", spec.deadline))
        retry: Retry | None = spec.retry
        if retry is not None:
            found.append((f"{name} retry", retry.every))
            if retry.max_every is not None:
                found.append((f"{name} retry's longest", retry.max_every))
    return found


def test_the_workflows_tests_run_against_time_wait_a_second_at_most() -> None:
    """The fast order saga is the one the tests run until its deadlines and retries fall due;
    the bundled examples' and the fixtures' longer ones (drawn, dry-run, checked) never do."""
    intervals = [(w.name, what, d) for w in fast_workflows.WORKFLOWS for what, d in _intervals(w)]
    assert intervals, "the fast order saga has deadlines and retries"
    assert [(n, what, d) for n, what, d in intervals if d > SECOND] == []
