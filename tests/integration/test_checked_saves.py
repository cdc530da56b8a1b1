"""A batch reads without a transaction and its save checks what it read (issue 30: two round
trips a batch instead of four), on the real PostgreSQL. Whatever another transaction does between
the read and the save, the save writes all or nothing: a saga moved or started meanwhile, or a
partition handed over, fails it as a conflict (tried again, the batch sees what happened); a saga
locked meanwhile sets its messages aside (BUSY) and the rest of the batch commits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from orchestrator.adapters.postgres import store as postgres_store
from orchestrator.adapters.postgres.partitions import PostgresPartitionLocks
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.messages import dump
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import Line, OrderPlaced, StockReserved
from orchestrator.service.batch import Envelope, Verdict, process_batch
from orchestrator.service.faults import Fault
from orchestrator.service.store import Changes, Transaction
from tests import replies as answers
from tests.integration.conftest import migrated_database

pytestmark = pytest.mark.integration

REGISTRY = Registry(WORKFLOWS)
NAMESPACE = "checked"


@pytest.fixture(scope="module")
def checked_database() -> Iterator[str]:
    with migrated_database("orchestrator_checked") as url:
        yield url


@pytest_asyncio.fixture
async def store(checked_database: str) -> AsyncIterator[PostgresStore]:
    made = PostgresStore.from_url(checked_database, pool_size=3, namespace=NAMESPACE)
    yield made
    await made.close()


class _SavesLate:
    """A batch's unit of work that runs ``meanwhile`` after its reads, before its save."""

    def __init__(self, tx: Transaction, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self._tx = tx
        self._meanwhile = meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    async def save(self, changes: Changes) -> None:
        await self._meanwhile()
        await self._tx.save(changes)


class Interleaved:
    """The store, with something done by another transaction between the first batch's read and
    its save (only the first's: a batch decided again reads after it)."""

    def __init__(self, store: PostgresStore, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self._store = store
        self._meanwhile: Callable[[], Awaitable[None]] | None = meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def _once(self) -> None:
        if self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            await meanwhile()

    def batch(self) -> AbstractAsyncContextManager[Transaction]:
        @asynccontextmanager
        async def unit() -> AsyncIterator[Transaction]:
            async with self._store.batch() as tx:
                yield _SavesLate(tx, self._once)  # type: ignore[misc]

        return unit()


def placed(key: str | None = None, message_id: str | None = None) -> Envelope:
    key = key or f"o-{uuid.uuid4().hex[:8]}"
    body = orjson.dumps(dump(OrderPlaced(key, "c-1", [Line("sku-1", 1)], 100)))
    return Envelope(body, OrderPlaced.TYPE, message_id or f"placed-{uuid.uuid4().hex[:8]}")


async def started(store: PostgresStore) -> str:
    result = await process_batch(REGISTRY, store, [placed()], datetime.now(UTC))
    assert result.verdicts == [Verdict.ACCEPTED]
    return result.decisions[0].saga.id


async def reserved(store: PostgresStore, saga_id: str) -> Envelope:
    """The reply to the saga's stock reservation."""
    saga = await store.get_saga(saga_id)
    assert saga is not None
    return await answers.answer(store, StockReserved(saga.key, "r-1"), saga_id)


async def taken(store: PostgresStore, message_id: str) -> bool:
    pool = await store.pool()
    return bool(await pool.fetchval("SELECT count(*) FROM inbox WHERE message_id = $1", message_id))


async def test_a_saga_moved_between_read_and_save_fails_the_save_whole(store: PostgresStore) -> None:
    saga_id = await started(store)
    reply = await reserved(store, saga_id)
    pool = await store.pool()

    async def moved() -> None:  # as a release's fail-over marks a saga, in a transaction of its own
        await pool.execute("UPDATE sagas SET version = version + 1 WHERE id = $1", saga_id)

    before = await store.get_saga(saga_id)
    assert before is not None
    with pytest.raises(asyncpg.SerializationError, match="moved") as failed:
        await process_batch(REGISTRY, Interleaved(store, moved), [reply], datetime.now(UTC))  # type: ignore[arg-type]
    assert store.classify(failed.value) is Fault.CONFLICT  # the bus tries the batch again

    after = await store.get_saga(saga_id)
    assert after is not None and after.version == before.version + 1  # not overwritten
    assert after.state == before.state
    assert not await taken(store, reply.message_id)  # nothing of the batch was written
    assert len(await store.journal(saga_id)) == 1

    again = await process_batch(REGISTRY, store, [reply], datetime.now(UTC))  # the retry reads anew
    assert again.verdicts == [Verdict.ACCEPTED], again.reasons
    assert again.decisions[0].saga.version == before.version + 2


async def test_a_saga_started_between_read_and_save_is_not_overwritten(store: PostgresStore) -> None:
    key = f"o-{uuid.uuid4().hex[:8]}"
    first, second = placed(key), placed(key)

    async def started_meanwhile() -> None:
        result = await process_batch(REGISTRY, store, [first], datetime.now(UTC))
        assert result.verdicts == [Verdict.ACCEPTED]

    with pytest.raises(asyncpg.UniqueViolationError) as failed:
        await process_batch(REGISTRY, Interleaved(store, started_meanwhile), [second], datetime.now(UTC))  # type: ignore[arg-type]
    assert store.classify(failed.value) is Fault.CONFLICT

    saga_ids = [
        d.saga.id for d in (await process_batch(REGISTRY, store, [second], datetime.now(UTC))).decisions
    ]
    journal = await store.journal(saga_ids[0])
    assert [e.message.message_id for e in journal][:1] == [first.message_id]  # the first start stands
    assert await taken(store, first.message_id) and await taken(store, second.message_id)


async def test_a_saga_locked_between_read_and_save_waits_and_the_rest_commits(store: PostgresStore) -> None:
    held_id, free_id = await started(store), await started(store)
    held, free = await reserved(store, held_id), await reserved(store, free_id)
    locker = await asyncpg.connect(store.dsn)
    transaction = locker.transaction()

    async def locked() -> None:  # an operator's open transaction
        await transaction.start()
        await locker.execute("SELECT id FROM sagas WHERE id = $1 FOR UPDATE", held_id)

    try:
        result = await process_batch(REGISTRY, Interleaved(store, locked), [held, free], datetime.now(UTC))  # type: ignore[arg-type]
    finally:
        await transaction.rollback()
        await locker.close()

    assert result.verdicts == [Verdict.BUSY, Verdict.ACCEPTED]
    assert result.waits[0] == frozenset({held_id})
    assert not await taken(store, held.message_id) and await taken(store, free.message_id)
    later = await process_batch(REGISTRY, store, [held], datetime.now(UTC))  # the lock gone
    assert later.verdicts == [Verdict.ACCEPTED]


async def test_a_partition_handed_over_between_read_and_save_fences_the_batch(store: PostgresStore) -> None:
    old_owner = PostgresPartitionLocks(store.dsn, NAMESPACE)
    new_owner = PostgresPartitionLocks(store.dsn, NAMESPACE)
    await old_owner.open()
    await new_owner.open()
    try:
        epoch = await old_owner.take(5)
        assert epoch is not None

        async def handed_over() -> None:
            await old_owner.give_up(5)
            assert await new_owner.take(5) == epoch + 1  # nothing holds the fence: not waited for

        mine = placed()
        late = Interleaved(store, handed_over)
        with pytest.raises(asyncpg.SerializationError, match="handed over") as failed:
            await process_batch(REGISTRY, late, [mine], datetime.now(UTC), fences=[(5, epoch)])  # type: ignore[arg-type]
        assert store.classify(failed.value) is Fault.CONFLICT
        again = await process_batch(REGISTRY, store, [mine], datetime.now(UTC), fences=[(5, epoch)])
    finally:
        await old_owner.close()
        await new_owner.close()
    assert again.verdicts == [Verdict.FENCED]
    assert not again.decisions and not await taken(store, mine.message_id)


async def test_the_checked_save_names_its_failures() -> None:
    """The messages the statement fails with are the ones the adapter reads (a typo would turn a
    busy saga into a conflict retried five times)."""
    for message in (postgres_store.SAGAS_BUSY, postgres_store.SAGA_MOVED, postgres_store.FENCE_MOVED):
        assert f"'{message}'" in postgres_store._SAVE_CHECKED
