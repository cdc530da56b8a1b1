"""The database round trips of the hot path, counted: a batch of any size costs the same few, and
a change that adds one fails here (issue 30: the step's cost had doubled, a statement at a time).

Every statement the store sends is counted on its one pooled connection (asyncpg's query logger
sees the transaction's BEGIN and COMMIT too), on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from orchestrator.adapters.postgres import store as postgres_store
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.messages import dump
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import Line, OrderPlaced, StockReserved
from orchestrator.service.batch import Envelope, Verdict, process_batch
from tests import replies as answers
from tests.integration.conftest import cloned_database

pytestmark = pytest.mark.integration

REGISTRY = Registry(WORKFLOWS)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
#: the one read (sagas, inbox, tombstones), the one save (locks and checks what was read, writes
#: everything, its own transaction): no BEGIN, no COMMIT
BATCH_ROUND_TRIPS = 2


class Counted:
    """The statements sent on the store's only connection, by their first words."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, record: asyncpg.connection.LoggedQuery) -> None:
        self.statements.append(" ".join(record.query.split())[:60])

    def take(self) -> list[str]:
        taken, self.statements = self.statements, []
        return taken


async def counting_store(url: str) -> tuple[PostgresStore, Counted]:
    store = PostgresStore.from_url(url, pool_size=1)
    counted = Counted()
    pool = await store.pool()
    async with pool.acquire() as connection:
        connection.add_query_logger(counted)
    return store, counted


def _starts(count: int) -> list[Envelope]:
    envelopes = []
    for _ in range(count):
        key = f"o-{uuid.uuid4().hex[:12]}"
        placed = OrderPlaced(key, "c-1", [Line("sku-1", 1)], 1000)
        envelopes.append(Envelope(orjson.dumps(dump(placed)), placed.TYPE, f"placed-{key}"))
    return envelopes


@pytest.mark.parametrize("size", [1, 64])
async def test_a_batch_of_starts_then_one_of_replies_costs_two_round_trips_each(
    database_url: str, size: int
) -> None:
    store, counted = await counting_store(database_url)
    try:
        await process_batch(REGISTRY, store, _starts(1), NOW)  # asyncpg learns the statements' types
        counted.take()
        started = await process_batch(REGISTRY, store, _starts(size), NOW)
        assert started.verdicts == [Verdict.ACCEPTED] * size
        statements = counted.take()
        assert len(statements) == BATCH_ROUND_TRIPS, statements
        assert statements[0].startswith("SELECT") and statements[1].startswith("WITH fenced"), statements

        sagas = [d.saga for d in started.decisions]
        replies = [await answers.answer(store, StockReserved(s.key, "r-1"), s.id) for s in sagas]
        counted.take()  # the test's own reads, above
        answered = await process_batch(REGISTRY, store, replies, NOW)
        assert answered.verdicts == [Verdict.ACCEPTED] * size
        assert len(counted.take()) == BATCH_ROUND_TRIPS

        again = await process_batch(REGISTRY, store, replies, NOW)  # redelivered: all duplicates
        assert again.verdicts == [Verdict.DUPLICATE] * size
        assert len(counted.take()) == BATCH_ROUND_TRIPS
    finally:
        await store.close()


async def test_confirmed_commands_leave_the_outbox_in_one_round_trip(database_url: str) -> None:
    store, counted = await counting_store(database_url)
    try:
        started = await process_batch(REGISTRY, store, _starts(32), NOW)
        counted.take()
        await store.mark_sent([c.message_id for c in started.commands])
        assert len(counted.take()) == 1
        pool = await store.pool()
        left = await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE message_id = ANY($1::text[])",
            [c.message_id for c in started.commands],
        )
        assert left == 0
    finally:
        await store.close()


async def test_confirmed_commands_leave_the_outbox_with_the_next_batch(database_url: str) -> None:
    """A command confirmed while batches come in costs no statement of its own: the next batch's
    save deletes its outbox row (one commit, one WAL flush for both)."""
    store, counted = await counting_store(database_url)
    try:
        started = await process_batch(REGISTRY, store, _starts(8), NOW)
        sent = [c.message_id for c in started.commands]
        counted.take()
        marking = asyncio.create_task(store.mark_sent(sent))
        await asyncio.sleep(0)  # handed over, waiting for a save
        more = await process_batch(REGISTRY, store, _starts(4), NOW)
        await asyncio.wait_for(marking, 5)
        assert more.verdicts == [Verdict.ACCEPTED] * 4
        assert len(counted.take()) == BATCH_ROUND_TRIPS
        pool = await store.pool()
        left = await pool.fetchval("SELECT count(*) FROM outbox WHERE message_id = ANY($1::text[])", sent)
        assert left == 0
    finally:
        await store.close()


#: the tables the hot path reads and writes by key
HOT_TABLES = ("sagas", "inbox", "outbox", "deadlines", "tombstones", "journal")


async def _generic_plan(connection: asyncpg.Connection, sql: str) -> str:
    """The plan the hot path's connection makes for ``sql`` once, and keeps: its generic plan."""
    await connection.execute(f"PREPARE hot AS {sql}")
    try:
        types = await connection.fetchval(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'hot'"
        )
        values = ", ".join(f"NULL::{t}" for t in types)
        rows = await connection.fetch(f"EXPLAIN EXECUTE hot({values})")
        return "\n".join(r[0] for r in rows)
    finally:
        await connection.execute("DEALLOCATE hot")


async def test_the_hot_path_finds_its_rows_by_key_whatever_its_tables_held_when_it_planned(
    template_database: str,
) -> None:
    """A generic plan is made once per connection. Made over empty tables (a fresh database, a
    burst before statistics catch up), it scanned whole tables on every batch: a quarter of the
    database's CPU in the benchmark's burst. The hot path's connections plan by index."""
    async with cloned_database(template_database) as url:
        store = PostgresStore.from_url(url, pool_size=1)
        try:
            pool = await store.pool()
            async with pool.acquire() as connection:
                statements = {
                    "batch read": postgres_store._READ_UNLOCKED,
                    "batch save": postgres_store._SAVE_CHECKED,
                    "locked read": postgres_store._READ_BATCH,
                    "locked save": postgres_store._SAVE,
                    "sent": postgres_store._SENT_COMMANDS,
                    "mark sent": postgres_store._MARK_SENT,
                    "due timers": postgres_store._DUE_SAGAS,
                }
                for name, sql in statements.items():
                    plan = await _generic_plan(connection, sql)
                    scans = [t for t in HOT_TABLES if f"Seq Scan on {t}" in plan]
                    assert not scans, f"{name} scans {scans}:\n{plan}"
                # the same statements on a connection without the setting do scan: the test can fail
                await connection.execute("SET enable_seqscan = on")
                plan = await _generic_plan(connection, postgres_store._SAVE)
                assert "Seq Scan on deadlines" in plan or "Seq Scan on inbox" in plan, plan
        finally:
            await store.close()
