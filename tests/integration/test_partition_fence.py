"""A partition's hand-over is fenced (issue 27), on real PostgreSQL: the replica that takes a
partition raises its epoch, which waits for the batches its last owner is committing; a batch
taken before the hand-over and committed after it finds its fence gone, and its messages are
neither decided nor recorded, but handed over (FENCED). The epoch is a row: unlike the advisory
locks it survives a failover of the database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import orjson
import pytest
import pytest_asyncio

from orchestrator.adapters.postgres.partitions import PostgresPartitionLocks
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.messages import dump
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import Line, OrderPlaced
from orchestrator.service.batch import Envelope, Verdict, process_batch
from tests.integration.conftest import migrated_database

pytestmark = pytest.mark.integration

REGISTRY = Registry(WORKFLOWS)
NAMESPACE = "fence"


@pytest.fixture(scope="module")
def fence_database() -> Iterator[str]:
    with migrated_database("orchestrator_fence") as url:
        yield url


@pytest_asyncio.fixture
async def store(fence_database: str) -> AsyncIterator[PostgresStore]:
    made = PostgresStore.from_url(fence_database, pool_size=3, namespace=NAMESPACE)
    yield made
    await made.close()


def placed() -> Envelope:
    key = f"o-{uuid.uuid4().hex[:8]}"
    return Envelope(
        orjson.dumps(dump(OrderPlaced(key, "c-1", [Line("sku-1", 1)], 100))), OrderPlaced.TYPE, key
    )


async def test_a_batch_taken_before_a_hand_over_does_not_commit_after_it(store: PostgresStore) -> None:
    old_owner = PostgresPartitionLocks(store.dsn, NAMESPACE)
    new_owner = PostgresPartitionLocks(store.dsn, NAMESPACE)
    await old_owner.open()
    await new_owner.open()
    try:
        taken = await old_owner.take(3)
        assert taken is not None
        mine = [placed()]
        before = await process_batch(REGISTRY, store, mine, datetime.now(UTC), fences=[(3, taken)])

        # the old owner's batch holds the fence while it commits: the taker waits for it
        async with store.transaction() as tx:
            assert await tx.fence({(3, taken)}) == {(3, taken)}
            await old_owner.give_up(3)
            taking = asyncio.create_task(new_owner.take(3))
            await asyncio.sleep(0.3)
            assert not taking.done(), "the partition was taken while a batch of its old owner committed"
        epoch = await asyncio.wait_for(taking, 10)

        late = [placed(), placed()]
        after = await process_batch(REGISTRY, store, late, datetime.now(UTC), fences=[(3, taken), None])
        current = await process_batch(REGISTRY, store, [placed()], datetime.now(UTC), fences=[(3, epoch)])
    finally:
        await old_owner.close()
        await new_owner.close()

    assert before.verdicts == [Verdict.ACCEPTED]
    assert epoch == taken + 1
    assert after.verdicts == [Verdict.FENCED, Verdict.ACCEPTED]  # the one from no partition goes on
    assert await store.get_saga(after.decisions[0].saga.id) is not None
    assert len(after.decisions) == 1  # the fenced one decided nothing, recorded nothing
    assert current.verdicts == [Verdict.ACCEPTED]
