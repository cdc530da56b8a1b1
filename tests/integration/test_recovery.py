"""Crash recovery with real processes: kill -9, SIGTERM, a dropped broker connection, killed
database sessions. Nothing may be lost, stuck, or decided twice."""

from __future__ import annotations

import asyncio
import random
import subprocess

import asyncpg
import pytest

from orchestrator.core.engine import saga_id_for

from .conftest import Bench, unique

pytestmark = pytest.mark.integration

order_ids = unique("order")


async def assert_each_decided_once(bench: Bench, keys: list[str], *workflows: str) -> None:
    """No message taken twice, no command decided twice, and every journal replays to its row and
    the commands it records, through ``workflows`` (``--workflows ...``: the ones that ran)."""
    assert bench.store is not None
    for key in keys:
        journal = await bench.store.journal(saga_id_for("order", key))
        taken = [e.message.message_id for e in journal]
        assert len(taken) == len(set(taken)), f"{key} took a message twice: {taken}"
        sent = [
            c["type"] for e in journal if e.decision["outcome"] != "retried" for c in e.decision["commands"]
        ]
        assert len(sent) == len(set(sent)), f"{key} decided a command twice: {sent}"
    verify = bench.verify(*workflows)
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_kill_9_at_any_moment_loses_nothing(bench: Bench) -> None:
    await bench.work()
    orchestrator = await bench.start_orchestrator()
    keys = [order_ids() for _ in range(300)]
    rng = random.Random(7)

    async def place_all() -> None:
        for index, key in enumerate(keys):
            await bench.place_order(key)
            if index % 25 == 0:
                await asyncio.sleep(0.02)

    placing = asyncio.create_task(place_all())
    for _ in range(4):
        await asyncio.sleep(rng.uniform(0.1, 0.6))
        orchestrator.kill()  # SIGKILL: mid-batch, between commit and publish, between publish and ack
        orchestrator = await bench.start_orchestrator()
    await placing

    sagas = await bench.finished("order", keys, timeout=120)
    assert {s.status for s in sagas.values()} == {"completed"}
    await assert_each_decided_once(bench, keys)


async def test_sigterm_finishes_the_batch_in_hand_and_the_next_start_goes_on(bench: Bench) -> None:
    await bench.work()
    orchestrator = await bench.start_orchestrator()
    keys = [order_ids() for _ in range(200)]
    for key in keys:
        await bench.place_order(key)
    await asyncio.sleep(0.3)

    code = orchestrator.stop(timeout=30)
    assert code == 0, orchestrator.output()
    assert "orchestrator stopped" in orchestrator.output()

    await bench.start_orchestrator()
    sagas = await bench.finished("order", keys, timeout=90)
    assert {s.status for s in sagas.values()} == {"completed"}
    await assert_each_decided_once(bench, keys)


async def test_a_dropped_broker_connection_is_reopened_without_a_restart(bench: Bench) -> None:
    await bench.work()
    orchestrator = await bench.start_orchestrator()
    before = [order_ids() for _ in range(20)]
    for key in before:
        await bench.place_order(key)
    await bench.finished("order", before)

    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"], capture_output=True, text=True
    )
    pids = [line.split()[0] for line in listing.stdout.splitlines() if "orchestrator-" in line]
    assert pids, listing.stdout
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: broker dropped us"], check=False)

    after = [order_ids() for _ in range(20)]
    for key in after:
        await bench.place_order(key)
    sagas = await bench.finished("order", after, timeout=60)
    assert {s.status for s in sagas.values()} == {"completed"}
    assert orchestrator.popen.poll() is None


async def test_killed_database_sessions_are_retried_and_nothing_is_acked_before_commit(bench: Bench) -> None:
    await bench.work()
    orchestrator = await bench.start_orchestrator()
    keys = [order_ids() for _ in range(150)]
    dsn = bench.database_url.replace("postgresql+asyncpg://", "postgresql://")
    database = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(dsn)
    try:
        for index, key in enumerate(keys):
            await bench.place_order(key)
            if index % 30 == 0:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database,
                )
                await asyncio.sleep(0.05)
    finally:
        await admin.close()
    sagas = await bench.finished("order", keys, timeout=90)
    assert {s.status for s in sagas.values()} == {"completed"}
    assert orchestrator.popen.poll() is None
    await assert_each_decided_once(bench, keys)
