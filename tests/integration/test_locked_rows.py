"""One saga row locked by another session stops that saga only (issue 27, case 4), on the real
broker and database: its reply is set aside, unacked, and taken again once the lock goes; the
other sagas are decided meanwhile, and their deadlines fire; nothing is dead-lettered or counted
as a failure."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from orchestrator.core.engine import saga_id_for

from .conftest import Bench, unique

pytestmark = pytest.mark.integration

keys = unique("lock")
WAITING = re.compile(r"^orchestrator_messages_waiting_on_locks ([0-9.]+)$", re.M)


@asynccontextmanager
async def row_locked(bench: Bench, saga_id: str) -> AsyncIterator[None]:
    """The saga's row held ``FOR UPDATE`` by another session, as an operator's open ``psql``
    transaction holds it, until the block ends."""
    connection = await asyncpg.connect(bench.database_url.replace("postgresql+asyncpg", "postgresql"))
    transaction = connection.transaction()
    await transaction.start()
    try:
        assert await connection.fetchval("SELECT id FROM sagas WHERE id = $1 FOR UPDATE", saga_id) == saga_id
        yield
    finally:
        await transaction.rollback()
        await connection.close()


async def waiting_on_locks(bench: Bench) -> float:
    async with bench.api() as api:
        text = (await api.get("/metrics")).text
    found = WAITING.search(text)
    assert found is not None, text
    return float(found.group(1))


async def test_a_locked_row_holds_up_its_own_saga_only(bench: Bench) -> None:
    orchestrator = await bench.serve(database_lock_timeout_seconds=1.0)
    locked = keys()
    await bench.place_order(locked)  # no participant yet: it waits for its stock
    saga_id = saga_id_for("order", locked)
    while (await bench.saga("order", locked)) is None:
        await asyncio.sleep(0.05)

    async with row_locked(bench, saga_id):
        await bench.work()  # the inventory service answers the locked saga's command now
        others = [keys() for _ in range(10)]
        began = time.monotonic()
        for key in others:
            await bench.place_order(key)
        decided = await bench.finished("order", others, timeout=10)
        took = time.monotonic() - began
        deadline = time.monotonic() + 10
        while await waiting_on_locks(bench) < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        waiting = await waiting_on_locks(bench)
        before = await bench.saga("order", locked)
        async with bench.api() as api:  # an operator's action on it waits lock_timeout, not forever
            asked = time.monotonic()
            cancel = await api.post(f"/sagas/{saga_id}/cancel", json={"reason": "r"})
            answered = time.monotonic() - asked

    assert {s.status for s in decided.values()} == {"completed"}, took
    assert waiting >= 1  # the locked saga's reply, set aside
    assert before is not None and before.state == "reserve" and before.version == 1
    assert cancel.status_code == 503 and cancel.headers["Retry-After"] == "5", (cancel.text, answered)
    after = await bench.finished("order", [locked], timeout=20)  # the lock gone, it goes on
    assert after[locked].status == "completed"
    assert await waiting_on_locks(bench) == 0
    assert await bench.dead_letters(0, timeout=0) == []
    output = orchestrator.output()
    assert "wait for saga rows another transaction holds (saga " in output
    assert "batch of" not in output  # no batch failed, none was retried


async def test_every_session_of_the_service_has_its_timeouts(bench: Bench) -> None:
    served = await bench.serve(database_statement_timeout_seconds=7.0, database_lock_timeout_seconds=2.0)
    pool = await served.orchestrator.store.pool()  # type: ignore[attr-defined]

    async with pool.acquire() as connection:
        statement, lock = await connection.fetchrow(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
        )
    async with served.orchestrator.store.engine.connect() as connection:  # type: ignore[attr-defined]
        read = (await connection.exec_driver_sql("SHOW lock_timeout")).scalar()

    assert (statement, lock, read) == ("7s", "2s", "2s")
