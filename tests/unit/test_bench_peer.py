"""The peer (bench/peer_dbos.py): where its database is, how it is skipped, what the table says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import bench.processes
from bench.__main__ import parse, sizes_of
from bench.config import FULL, QUICK, TARGET_TO_PEER, Stack
from bench.processes import NO_DBOS, run_peer
from bench.report import table


def stack(tmp_path: Path, database_url: str) -> Stack:
    return Stack.make(tmp_path, sys.executable, database_url, "amqp://", tmp_path, True)


def test_the_peer_has_a_database_of_its_own_beside_the_benchmark_s(tmp_path: Path) -> None:
    ours = stack(tmp_path, "postgresql+asyncpg://u:p%40ss@db:5433/orchestrator_bench?sslmode=disable")
    assert ours.peer_dsn == "postgresql://u:p%40ss@db:5433/orchestrator_bench_dbos?sslmode=disable"


def test_the_peer_s_size_comes_from_its_flags() -> None:
    assert sizes_of(parse([])).peer_sagas == FULL.peer_sagas == 1000
    assert sizes_of(parse(["--quick"])).peer_sagas == QUICK.peer_sagas == 50
    assert sizes_of(parse(["--quick", "--peer-sagas", "7"])).peer_sagas == 7
    assert sizes_of(parse(["--peer-sagas", "7", "--no-peer"])).peer_sagas == 0


async def test_without_dbos_the_peer_is_a_note_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench.processes, "has_dbos", lambda: False)
    here = stack(tmp_path, "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    assert await run_peer(here, 10, "bench-none") == (None, NO_DBOS)


def test_the_table_sets_the_peer_beside_the_orchestrator() -> None:
    throughput = {
        "orchestrator": {"sagas_per_s": 400.0, "steps_per_s": 1200.0},
        "peer": {"name": "dbos", "version": "3.4.0", "steps_per_s": 77.4, "sagas": 1000, "completed": 1000},
        "orchestrator_to_peer": 15.5,
        "orchestrator_to_peer_target": TARGET_TO_PEER,
    }
    lines = table({"throughput": throughput}).splitlines()
    assert any(
        "steps/s of the peer (dbos 3.4.0)" in line and "1,000 of 1,000 sagas" in line for line in lines
    )
    assert any("orchestrator / peer" in line and "15.5" in line and ">= 15" in line for line in lines)
    skipped = {**throughput, "peer": None, "peer_note": NO_DBOS, "orchestrator_to_peer": None}
    lines = table({"throughput": skipped}).splitlines()
    assert any("steps/s of the peer (dbos)" in line and NO_DBOS in line for line in lines)
