"""The PostgreSQL store's one-statement save, where it differs from a row-at-a-time one: rows a
sibling CTE inserts are invisible to the rest of the statement. Its locks, its pool, its replicas'
outbox claims. What every store must do, the memory store too, is tests/store_contract.py's."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from orchestrator.adapters.memory import MemoryStore
from orchestrator.adapters.postgres.store import PostgresStore, driver_dsn
from orchestrator.core.engine import saga_id_for
from orchestrator.core.messages import Message, dump
from orchestrator.core.replay import differences, replay
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import Line, OrderPlaced, PaymentCharged, StockReserved
from orchestrator.service.batch import BatchResult, Envelope, Verdict, fire_due_deadlines, process_batch
from orchestrator.service.faults import BATCH, Fault, attempt
from tests import replies as answers
from tests.integration.conftest import migrated_database
from tests.integration.workflows import WORKFLOWS as FAST

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


async def test_read_batch_locks_the_sagas_until_the_transaction_ends(database_url: str) -> None:
    """FOR UPDATE in the one statement that also reads the inbox: another session cannot take the
    saga meanwhile. What read_batch returns is the store contract's (tests/store_contract.py)."""
    _, delivery = _order_placed()
    postgres = PostgresStore.from_url(database_url, pool_size=2)
    try:
        saga_id = (await process_batch(REGISTRY, postgres, [delivery], NOW)).decisions[0].saga.id
        async with postgres.transaction() as tx:
            assert saga_id in (await tx.read_batch([saga_id], []))[0]
            other = await asyncpg.connect(driver_dsn(database_url))
            try:
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await other.execute("SELECT 1 FROM sagas WHERE id = $1 FOR UPDATE NOWAIT", saga_id)
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


# timers -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def timers_database() -> Iterator[str]:
    """A database of their own: the sweeps below fire every timer due, whoever set it."""
    with migrated_database("orchestrator_timers") as url:
        yield url


def _event(message: Message, message_id: str, saga_id: str | None = None) -> Envelope:
    return Envelope(orjson.dumps(dump(message)), message.TYPE, message_id, saga_id)


async def test_a_stale_retry_in_the_same_sweep_keeps_the_retry_its_deadline_set(timers_database: str) -> None:
    """The charge's deadline (t+1s) and its next retry (t+1.25s) both due in one sweep at t+1.5s: the
    deadline moves the saga to compensating_reserve, whose retry row the charge's stale retry
    must not remove, in the statement that saves it nor in the service before it."""
    registry = Registry(FAST)
    postgres = PostgresStore.from_url(timers_database, pool_size=2)
    memory = MemoryStore()
    try:
        for store in (postgres, memory):
            key = f"o-{uuid.uuid4().hex[:12]}"
            saga_id = saga_id_for("order", key)
            placed = OrderPlaced(key, "c-1", [Line("sku-1", 1)], 1000)
            await process_batch(registry, store, [_event(placed, f"placed-{key}")], NOW)
            reserved = await answers.answer(store, StockReserved(key, "r"), saga_id)
            await process_batch(registry, store, [reserved], NOW)
            sweep = await fire_due_deadlines(registry, store, NOW + timedelta(seconds=0.75))
            [retried] = [d for d in sweep.decisions if d.saga.id == saga_id]
            assert retried.retry is not None and retried.retry.due_at == NOW + timedelta(seconds=1.25)

            fired = await fire_due_deadlines(registry, store, NOW + timedelta(seconds=1.5))

            [moved] = [d for d in fired.decisions if d.saga.id == saga_id]
            assert moved.saga.state == "compensating_reserve"
            [release] = [c for c in fired.commands if c.saga_id == saga_id]
            version = moved.saga.version
            assert await _timers(store, saga_id) == [
                ("retry", "compensating_reserve", version, NOW + timedelta(seconds=1.75))
            ]
            again = await fire_due_deadlines(registry, store, NOW + timedelta(seconds=1.75))
            resent = [(c.type, c.message_id) for c in again.commands if c.saga_id == saga_id]
            assert resent == [(release.type, release.message_id)]
    finally:
        await postgres.close()


async def _timers(store: PostgresStore | MemoryStore, saga_id: str) -> list[tuple[str, str, int, datetime]]:
    if isinstance(store, MemoryStore):
        return sorted(
            (kind, d.state, version, d.due_at)
            for (s, kind), (d, version) in store.deadlines.items()
            if s == saga_id
        )
    pool = await store.pool()
    rows = await pool.fetch(
        "SELECT kind, state, version, due_at FROM deadlines WHERE saga_id = $1 ORDER BY kind", saga_id
    )
    return [(r["kind"], r["state"], r["version"], r["due_at"]) for r in rows]


async def as_the_bus_commits(
    store: PostgresStore, envelopes: list[Envelope], now: datetime, failures: list[BaseException]
) -> BatchResult:
    """``process_batch`` under the bus's fault policy, each failed try kept."""

    def note(fault: Fault, error: BaseException, pause: float | None) -> None:
        failures.append(error)

    return await attempt(
        lambda: process_batch(REGISTRY, store, envelopes, now), store.classify, BATCH, note, asyncio.sleep
    )


async def test_deadline_sweeps_and_batches_on_the_same_sagas_never_deadlock(timers_database: str) -> None:
    """The worker and the alarm on connections of their own, on the same sagas at once: every
    sweep and every batch locks the sagas first, in id order, then their timer rows. Before, a
    sweep locked timer rows and then waited for a saga that a batch held, while the batch waited
    for those timer rows: PostgreSQL broke the cycle with 40P01."""
    worker = PostgresStore.from_url(timers_database, pool_size=6)
    alarm = PostgresStore.from_url(timers_database, pool_size=6)
    run = uuid.uuid4().hex[:6]
    keys = [f"o-{run}-{i:03d}" for i in range(120)]
    ids = {key: saga_id_for("order", key) for key in keys}
    shuffle = random.Random(11).shuffle
    start = NOW - timedelta(days=400)  # the other tests' timers here are not due in these sweeps
    try:
        placed = [_event(OrderPlaced(k, "c-1", [Line("sku-1", 1)], 1000), f"placed-{k}") for k in keys]
        for i in range(0, len(placed), 40):
            assert (await process_batch(REGISTRY, worker, placed[i : i + 40], start)).decisions

        # reserve's deadline (30 s) and charge's (2 min) due while each reply comes in
        rounds = [
            (start + timedelta(seconds=31), lambda k: StockReserved(k, f"r-{k}")),
            (start + timedelta(seconds=31 + 121), lambda k: PaymentCharged(k, f"ch-{k}")),
        ]
        fired = 0
        failures: list[BaseException] = []
        for now, reply in rounds:
            replies = [await answers.answer(worker, reply(k), ids[k]) for k in keys]
            shuffle(replies)
            calls: list[Awaitable[BatchResult]] = []
            for i in range(0, len(replies), 8):
                calls.append(as_the_bus_commits(worker, replies[i : i + 8], now, failures))
                calls.append(fire_due_deadlines(REGISTRY, alarm, now, limit=8))
            results = await asyncio.gather(*calls, return_exceptions=True)

            errors = [r for r in results if isinstance(r, BaseException)]
            assert errors == [], [f"{type(e).__name__}: {e}" for e in errors]
            # a sweep that commits between a batch's read and its save fails the save, which the
            # bus tries again at once; a deadlock would be tried again too, and is never seen
            assert all(isinstance(f, asyncpg.SerializationError) for f in failures), failures
            fired += sum(len(r.decisions) for r in results[1::2] if isinstance(r, BatchResult))
            # a reply whose saga a sweep held was set aside (BUSY), as the intake sets it aside,
            # and is taken again once the sweep committed
            taken: list[Verdict] = []
            for result in results[::2]:
                assert isinstance(result, BatchResult)
                taken += [v for v in result.verdicts if v is not Verdict.BUSY]
            waiting = [
                reply
                for i, result in enumerate(results[::2])
                if isinstance(result, BatchResult)
                for reply, verdict in zip(replies[i * 8 : i * 8 + 8], result.verdicts, strict=True)
                if verdict is Verdict.BUSY
            ]
            if waiting:
                taken += (await process_batch(REGISTRY, worker, waiting, now)).verdicts
            assert taken == [Verdict.ACCEPTED] * len(keys)
        assert fired, "no sweep fired a deadline: the sweeps never met the batches"

        compiled = REGISTRY.workflows["order"]
        for key in keys:
            row, entries = await worker.snapshot(ids[key])
            assert differences(row, replay(compiled, entries)) == [], key
            message_ids = [e.message.message_id for e in entries]
            assert len(message_ids) == len(set(message_ids)), f"{key}: a timer fired twice: {message_ids}"
    finally:
        await worker.close()
        await alarm.close()


async def test_a_sweep_leaves_a_live_replicas_outbox_rows_and_takes_a_dead_ones(database_url: str) -> None:
    """Issue 14, item 1: each replica's outbox rows name its advisory lock; another replica's
    sweep re-sends them only once that lock is gone (the replica's session ended: it died)."""
    first = PostgresStore.from_url(database_url, pool_size=2)
    second = PostgresStore.from_url(database_url, pool_size=2)
    try:
        mine = await first.hold()
        theirs = await second.hold()
        assert mine != theirs
        _, envelope = _order_placed()
        result = await process_batch(REGISTRY, first, [envelope], NOW)
        [command] = result.commands
        by_first = {c.message_id for c in await first.unsent(5000)}
        by_second = {c.message_id for c in await second.unsent(5000)}
        assert command.message_id in by_first  # its own
        assert command.message_id not in by_second  # a live replica's: left to it
        long_ago = NOW - timedelta(days=1)  # what the periodic sweep asks: rows at least this old
        assert command.message_id not in {c.message_id for c in await first.unsent(5000, long_ago)}
        await first.close()  # the replica is gone: PostgreSQL releases its lock
        for _ in range(50):
            # a dead replica's rows, however young: nobody else is about to send them
            if command.message_id in {c.message_id for c in await second.unsent(5000, long_ago)}:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the dead replica's command was never swept")
    finally:
        await first.close()
        await second.close()


async def test_the_trace_context_survives_the_outbox_and_the_timer_rows(database_url: str) -> None:
    """A command published after a restart, and a deadline fired later, keep the trace context
    their message came with (migration 0008): read back from the rows, not from memory."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _, delivery = _order_placed()
    traced = replace(delivery, trace=f"{traceparent} a=1")
    postgres = PostgresStore.from_url(database_url, pool_size=2)
    try:
        result = await process_batch(REGISTRY, postgres, [traced], NOW)
        [command] = result.commands
        unsent = {c.message_id: c.trace for c in await postgres.unsent(5000)}
        assert unsent[command.message_id] == f"{traceparent} a=1"
        mine: list[str | None] = []
        for _ in range(50):  # the module's other sagas have timers due too: 500 at a time
            fired = await fire_due_deadlines(REGISTRY, postgres, NOW + timedelta(minutes=5))
            mine += [e.message.trace for e in fired.journal if e.saga_id == command.saga_id]
            if mine or not fired.journal:
                break
        assert mine == [f"{traceparent} a=1"]
    finally:
        await postgres.close()
