"""The benchmark's floor comes from ``BENCH_FLOOR`` alone, and a run without one says why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.config import Stack, floor_from_env, floor_missing
from bench.processes import run_floor

DATABASE = "postgresql+asyncpg://nobody@127.0.0.1:1/none"


def stack(tmp_path: Path, floor: Path | None) -> Stack:
    return Stack.make(tmp_path, sys.executable, DATABASE, "amqp://", tmp_path, True, floor)


def test_the_floor_is_what_bench_floor_names_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_FLOOR", raising=False)
    assert floor_from_env() is None
    monkeypatch.setenv("BENCH_FLOOR", "  ")
    assert floor_from_env() is None
    monkeypatch.setenv("BENCH_FLOOR", "/opt/limit/pipeline.py")
    assert floor_from_env() == Path("/opt/limit/pipeline.py")


async def test_without_a_floor_the_note_says_why(tmp_path: Path) -> None:
    assert "BENCH_FLOOR is not set" in (floor_missing(None) or "")
    absent = tmp_path / "pipeline.py"
    assert f"BENCH_FLOOR names {absent}, which is not a file" in (floor_missing(absent) or "")
    assert await run_floor(stack(tmp_path, None), 10) == (None, floor_missing(None))
    assert await run_floor(stack(tmp_path, absent), 10) == (None, floor_missing(absent))


async def test_a_floor_is_run_with_the_scenario_s_size_and_its_last_json_line_read(tmp_path: Path) -> None:
    floor = tmp_path / "pipeline.py"
    floor.write_text(
        "import json, os, sys\n"
        "print('warming up')\n"
        "print(json.dumps({'steps_per_s': 900.0, 'argv': sys.argv[1:], 'dsn': os.environ['LIMIT_DSN']}))\n"
    )
    assert floor_missing(floor) is None
    result, note = await run_floor(stack(tmp_path, floor), 10, rate=5)
    assert result is not None, note
    assert result["steps_per_s"] == 900.0
    assert result["argv"][:4] == ["--sagas", "10", "--steps", "3"] and "--rate" in result["argv"]
    assert result["dsn"] == "postgresql://nobody@127.0.0.1:1/none"  # the form asyncpg takes
    # its CPU, read when it ended: the whole pipeline's, per step of the run asked for
    assert result["cpu_s"] >= 0  # cpu_s is rounded to 10 ms: 30 steps make that 0.17 ms a step
    assert result["cpu_ms_per_step"] == pytest.approx(result["cpu_s"] * 1000 / 30, abs=0.2)

    floor.write_text("import sys\nprint('broken', file=sys.stderr)\nsys.exit(3)\n")
    assert await run_floor(stack(tmp_path, floor), 10) == (None, "floor failed (exit 3): broken")
