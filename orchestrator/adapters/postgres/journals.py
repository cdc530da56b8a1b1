"""Journals read in bulk for the dry run (``orchestrator check --journals``).

One query, streamed through a server-side cursor in saga id order and grouped into one
:class:`~orchestrator.core.dry_run.Journal` per saga as the rows come: 100,000 sagas in flight
cost one round trip per chunk, not one query per saga (``PostgresStore.records``, which
``verify`` reads saga by saga, would take minutes), and never more than a few chunks in memory.
The read is one REPEATABLE READ, read-only transaction: a saga's row and its journal are of one
moment, even while the service runs.

asyncpg directly, not SQLAlchemy: the rows are many and the JSON columns are decoded by orjson
in the driver, which is most of the reading's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import orjson

from orchestrator.adapters.postgres.store import driver_dsn
from orchestrator.core.dry_run import IN_FLIGHT, Journal
from orchestrator.core.engine import Incoming
from orchestrator.core.journal import JournalEntry

__all__ = ["CHUNK", "FINISHED_STATUSES", "read_journals"]

#: rows fetched per round trip
CHUNK = 5000

#: statuses nothing decides any more: where the sample of finished sagas is taken from
FINISHED_STATUSES = ("completed", "compensated")

#: The sagas in flight, and the ``$2`` most recently finished (by ``updated_at``: the ones the
#: latest definitions wrote), each row with one journal entry, in saga id then seq order; only
#: those of partition ``$5`` out of ``$4`` (by a hash of the id, so each saga is in one).
_QUERY = """
SELECT s.id, s.workflow, s.release, s.key, s.state, s.status,
       j.seq, j.message, j.decision, j.recorded_at
FROM sagas s JOIN journal j ON j.saga_id = s.id
WHERE (s.status = ANY($1::text[])
       OR s.id IN (SELECT id FROM sagas WHERE status = ANY($3::text[]) ORDER BY updated_at DESC, id LIMIT $2))
  AND ($4::int = 1 OR mod(hashtext(s.id) & 2147483647, $4::int) = $5::int)
ORDER BY s.id, j.seq
"""


async def _init(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=orjson.dumps, decoder=orjson.loads, format="text"
    )


def _journal(rows: Sequence[asyncpg.Record]) -> Journal:
    first = rows[0]
    saga_id = first["id"]
    return Journal(
        saga_id,
        first["workflow"],
        first["release"],
        first["key"],
        first["state"],
        first["status"],
        [
            JournalEntry(saga_id, r["seq"], Incoming.from_json(r["message"]), r["decision"], r["recorded_at"])
            for r in rows
        ],
    )


async def read_journals(
    url: str, *, finished_sample: int = 0, chunk: int = CHUNK, partition: tuple[int, int] = (0, 1)
) -> AsyncIterator[Journal]:
    """Every saga in flight (status running, compensating or failed) with its journal, and the
    ``finished_sample`` most recently updated finished ones, one :class:`Journal` each, in saga id
    order. The next chunk is fetched while the caller works on this one. ``partition``: ``(k, n)``
    reads only the k-th of n disjoint parts, for n processes to share the work (each reads in a
    snapshot of its own)."""
    index, parts = partition
    if not 0 <= index < parts:
        raise ValueError(f"partition {index} of {parts}")
    connection = await asyncpg.connect(driver_dsn(url), timeout=10)
    try:
        await _init(connection)
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            cursor = await connection.cursor(
                _QUERY, sorted(IN_FLIGHT), max(finished_sample, 0), list(FINISHED_STATUSES), parts, index
            )
            chunks: asyncio.Queue[list[asyncpg.Record] | Exception] = asyncio.Queue(maxsize=2)

            async def fetch() -> None:
                try:
                    while True:
                        rows = await cursor.fetch(chunk)
                        await chunks.put(rows)
                        if not rows:
                            return
                except Exception as error:  # the reader's to raise, not a task's to lose
                    await chunks.put(error)

            reader = asyncio.create_task(fetch())
            try:
                held: list[Any] = []
                while True:
                    rows = await chunks.get()
                    if isinstance(rows, Exception):
                        raise rows
                    if not rows:
                        break
                    for row in rows:
                        if held and held[0]["id"] != row["id"]:
                            yield _journal(held)
                            held = []
                        held.append(row)
                await reader
                if held:
                    yield _journal(held)
            finally:
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reader
    finally:
        await connection.close()
