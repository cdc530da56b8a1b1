"""Parked sagas written straight into the database, through the service's own batch (no broker, no
orchestrator process): a million take minutes this way, hours through the broker.

Each start is decided by :func:`orchestrator.service.batch.process_batch`, as the service decides
it, so the rows are the service's own: the saga waiting on its first command, the journal, the
timer, the inbox entry, and the command in the outbox. The outbox is then emptied of all but the
commands of ``unsent`` of them (written last), as if the relay had sent the rest: a process
started afterwards sends only those, and its participants answer only their sagas.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import orjson

from bench.config import Stack
from bench.infra import Database
from bench.workflows import WORKFLOWS
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.ingress import Envelope
from orchestrator.core.messages import dump
from orchestrator.core.routing import Registry
from orchestrator.examples.contracts import Line, OrderPlaced
from orchestrator.service.batch import Verdict, process_batch

__all__ = ["park"]

#: starts decided and committed together: one transaction each, as a full batch of the service
BATCH = 1000
#: sagas a writer parks between two analyses of the tables. Each batch's read is a prepared
#: statement planned once: planned over tables whose statistics say "empty", it scans them whole,
#: and the millionth saga would cost a thousand times the first
ANALYZE_EVERY = 50_000


def _placed(key: str) -> Envelope:
    placed = OrderPlaced(key, "c-1", [Line("sku-1", 1)], 1000)
    return Envelope(orjson.dumps(dump(placed)), placed.TYPE, f"placed-{uuid.uuid4()}")


async def park(stack: Stack, db: Database, keys: list[str], unsent: int = 0, writers: int = 2) -> float:
    """Start a ``bench_order`` saga for each key, leaving ``unsent`` of their commands in the
    outbox (the first keys'); the seconds it took. ``writers`` batches are decided and committed
    at a time: one decides while the other's commit is in the database."""
    began = time.monotonic()
    stores = [PostgresStore.from_url(stack.database_url, pool_size=1) for _ in range(writers)]
    try:
        key = await stores[0].id_key()

        async def write(part: list[str]) -> None:
            shares = zip(stores, (part[i::writers] for i in range(writers)), strict=True)
            await asyncio.gather(*(_write(store, db, key, share) for store, share in shares))

        sent, kept = keys[unsent:], keys[:unsent]
        if sent:
            await write(sent)
            await db.execute("DELETE FROM outbox")  # sent, as the relay would have it
        await write(kept)
        await db.analyze()  # the orchestrator about to start plans on these statistics
    finally:
        for store in stores:
            await store.close()
    return time.monotonic() - began


async def _write(store: PostgresStore, db: Database, id_key: bytes, keys: list[str]) -> None:
    registry = Registry(WORKFLOWS)
    registry.use_id_key(id_key)
    for first in range(0, len(keys), BATCH):
        if first and first % ANALYZE_EVERY == 0:  # as autovacuum would, where the server has none
            await db.analyze()
        chunk = [_placed(key) for key in keys[first : first + BATCH]]
        done = await process_batch(registry, store, chunk, datetime.now(UTC))
        refused = [v for v in done.verdicts if v is not Verdict.ACCEPTED]
        if refused:
            raise RuntimeError(f"parking: {len(refused)} starts not accepted: {refused[:3]}")
