"""The PostgreSQL store's one-statement save, where it differs from a row-at-a-time one: rows a
sibling CTE inserts are invisible to the rest of the statement."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import Line, OrderPlaced
from orchestrator.messages import dump
from orchestrator.routing import Registry
from orchestrator.service import Envelope, Verdict, process_batch
from orchestrator.store_memory import MemoryStore
from orchestrator.store_postgres import PostgresStore

pytestmark = pytest.mark.integration

REGISTRY = Registry(WORKFLOWS)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_duplicates_are_counted_within_a_batch_and_across_batches(database_url: str) -> None:
    key = f"o-{uuid.uuid4().hex[:12]}"
    placed = OrderPlaced(key, "c-1", [Line("sku-1", 1)], 1000)
    message_id = f"placed-{key}"
    delivery = Envelope(orjson.dumps(dump(placed)), placed.TYPE, message_id)
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
