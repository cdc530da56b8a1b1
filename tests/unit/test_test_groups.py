"""The suite's xdist groups hold (tests/conftest.py, docs/testing.md): tests of one group run on
one worker. pytest-xdist's loadgroup ignores groups without a word when it cannot mark them (as
with pytest 9.2's node ids, pytest-dev/pytest-xdist#1386): then the tests of a private node would
boot one per worker, bounded runs would meet, and a module's tests that build on one another would
be split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import GROUP_OF_MODULE

ROOT = Path(__file__).resolve().parents[2]

GROUPED = """
import os
from pathlib import Path

import pytest

OUT = Path(__file__).parent / "workers"


def record(name: str) -> None:
    with OUT.open("a") as out:
        out.write(f"{name} {os.environ['PYTEST_XDIST_WORKER']}\\n")


@pytest.mark.xdist_group("together")
def test_first_of_the_group() -> None:
    record("first")


@pytest.mark.parametrize("n", range(6))
def test_alone(n: int) -> None:
    record(f"alone-{n}")


@pytest.mark.xdist_group("together")
def test_last_of_the_group() -> None:
    record("last")
"""


def test_two_workers_run_a_group_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    workers = dict(line.split() for line in (tmp_path / "workers").read_text().splitlines())
    assert len(workers) == 8
    assert workers["first"] == workers["last"], workers
    # how xdist marks a test of a group; by chance alone the two could meet on one worker
    assert "test_first_of_the_group@together" in run.stdout


def test_each_grouped_module_is_there() -> None:
    assert [m for m in GROUP_OF_MODULE if not (ROOT / m).is_file()] == []
