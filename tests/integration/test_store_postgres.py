"""The PostgreSQL store's one-statement save, where it differs from a row-at-a-time one: rows a
sibling CTE inserts are invisible to the rest of the statement."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import Line, OrderPlaced
from orchestrator.messages import dump
from orchestrator.routing import Registry
from orchestrator.service import Envelope, Verdict, process_batch
from orchestrator.store_memory import MemoryStore
from orchestrator.store_postgres import PostgresStore, driver_dsn

pytestmark = pytest.mark.integration

REGISTRY = Registry(WORKFLOWS)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _order_placed() -> tuple[str, Envelope]:
    """A new order's start event as it comes off the wire, with its message id."""
    key = f"o-{uuid.uuid4().hex[:12]}"
    placed = OrderPlaced(key, "c-1", [Line("sku-1", 1)], 1000)
    message_id = f"placed-{key}"
    return message_id, Envelope(orjson.dumps(dump(placed)), placed.TYPE, message_id)


async def test_duplicates_are_counted_within_a_batch_and_across_batches(database_url: str) -> None:
    message_id, delivery = _order_placed()
    postgres = PostgresStore.from_url(database_url, pool_size=2)
    memory = MemoryStore()
    try:
        for store in (postgres, memory):
            first = await process_batch(REGISTRY, store, [delivery, delivery, delivery], NOW)
            assert first.verdicts == [Verdict.ACCEPTED, Verdict.DUPLICATE, Verdict.DUPLICATE]
            again = await process_batch(REGISTRY, store, [delivery, delivery], NOW)
            assert again.verdicts == [Verdict.DUPLICATE, Verdict.DUPLICATE]

        pool = await postgres.pool()
        counted = await pool.fetchval("SELECT duplicates FROM inbox WHERE message_id = $1", message_id)
        assert counted == memory.duplicate_counts[message_id] == 4
    finally:
        await postgres.close()


async def test_read_batch_locks_the_sagas_and_tells_the_messages_seen(database_url: str) -> None:
    message_id, delivery = _order_placed()
    postgres = PostgresStore.from_url(database_url, pool_size=2)
    memory = MemoryStore()
    try:
        for store in (postgres, memory):
            saga_id = (await process_batch(REGISTRY, store, [delivery], NOW)).decisions[0].saga.id
            async with store.transaction() as tx:
                assert await tx.read_batch([], []) == ({}, set())
                current, seen = await tx.read_batch([saga_id, "no-such-saga"], [message_id, "new-message"])
                assert current == {saga_id: await store.get_saga(saga_id)}
                assert seen == {message_id}
                if store is postgres:
                    other = await asyncpg.connect(driver_dsn(database_url))
                    try:
                        with pytest.raises(asyncpg.LockNotAvailableError):
                            await other.execute(
                                "SELECT 1 FROM sagas WHERE id = $1 FOR UPDATE NOWAIT", saga_id
                            )
                    finally:
                        await other.close()
    finally:
        await postgres.close()


async def test_a_failed_batch_leaves_no_transaction_open_on_the_pooled_connection(database_url: str) -> None:
    """The pool's reset does nothing but asyncpg's rollback: a connection must come back clean."""
    store = PostgresStore.from_url(database_url, pool_size=1)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            async with store.transaction() as tx:
                await tx.connection.execute("SELECT * FROM no_such_table")
        pool = await store.pool()
        async with pool.acquire() as connection:
            assert not connection.is_in_transaction()
            assert await connection.fetchval("SELECT 1") == 1
            # the hot path's array statements are planned once, not on every call
            assert await connection.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    finally:
        await store.close()
