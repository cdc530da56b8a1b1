"""Retention in PostgreSQL: archive finished sagas to a file, prune what has outlived its use.

Both work in small transactions beside the running service. The archive locks the sagas of a
batch ``FOR UPDATE SKIP LOCKED`` (a saga a batch of messages holds is left for later, never
waited for), takes the same lock order as every writer (the saga rows first, then their journal,
inbox and timer rows), writes the batch to the archive file and fsyncs it, and only then commits
the transaction that leaves a tombstone per saga and deletes its rows: no saga is deleted before
it is on disk. The pruning deletes rows nothing locks on the hot path (old dead letters, old
tombstones, inbox rows of sagas finished long ago) a few thousand at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from orchestrator.adapters.archive import ArchiveWriter, saga_record

__all__ = ["ArchiveReport", "PruneReport", "Pruner", "archive", "prune", "prune_inbox"]

log = logging.getLogger("orchestrator")

#: The statuses ``archive`` takes by default: finished, nothing left for an operator to do.
#: A failed saga waits for an operator; it is archived only when asked (``--include-failed``).
ARCHIVED_BY_DEFAULT = ("completed", "compensated")

_SAGA_COLUMNS = (
    "id, workflow, key, release, state, status, version, data, parked, last_error,"
    " created_at, updated_at, awaiting, attempt, timed_out, branches"
)

#: How long after it finished a saga with a step given up on at its deadline (``timed_out``) is
#: kept: that step's success may still arrive, and only the saga can undo it. Archived before,
#: the success would be dead-lettered as ``unknown_saga`` and never undone (docs/retention.md).
LATE_SUCCESS_WINDOW = timedelta(days=30)

#: The next batch of one status, oldest finish first, past the keyset cursor; a saga another
#: transaction holds is skipped, as is one with commands not yet confirmed by the broker (its
#: outbox rows would go with it, unsent), and one with a step whose late success it may still
#: have to undo, until ``LATE_SUCCESS_WINDOW`` after it finished ($6): taken by a later run. A child
#: saga stays while its parent does: the parent may still compensate it (reopen it), and it is
#: archived by the first run after its parent's; a parent stays while a child of it runs or
#: compensates (its outcome is for the parent; a failed one waits for an operator, and its parent
#: does not wait for it: else neither would ever go).
_CLAIM = f"""
SELECT {_SAGA_COLUMNS} FROM sagas s
WHERE s.status = $1 AND s.updated_at < $2
  AND s.updated_at >= $3 AND (s.updated_at > $3 OR s.id > $4)
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.saga_id = s.id)
  AND (s.timed_out = '[]'::jsonb OR s.updated_at < $6)
  AND NOT EXISTS (
    SELECT 1 FROM jsonb_array_elements(s.branches) b JOIN sagas l ON l.id = b->>'saga_id'
    WHERE b->>'link' = 'parent'
       OR (b->>'link' = 'child' AND l.status IN ('running', 'compensating')))
ORDER BY s.updated_at, s.id
LIMIT $5
FOR UPDATE OF s SKIP LOCKED
"""

_JOURNAL = """
SELECT saga_id, seq, kind, message_type, message_id, message, decision, actor, recorded_at
FROM journal WHERE saga_id = ANY($1::text[]) ORDER BY saga_id, seq
"""

_TIMERS = "SELECT saga_id, kind, state, version, due_at FROM deadlines WHERE saga_id = ANY($1::text[])"

#: One statement: a tombstone per saga, then every row of it gone (the saga rows last).
_BURY = """
WITH buried AS (
    INSERT INTO tombstones (saga_id, workflow, key, release, state, status, version, created_at,
                            finished_at, archived_at)
    SELECT id, workflow, key, release, state, status, version, created_at, updated_at, $2
    FROM sagas WHERE id = ANY($1::text[])
    ON CONFLICT (saga_id) DO UPDATE SET
        workflow = excluded.workflow, key = excluded.key, release = excluded.release,
        state = excluded.state, status = excluded.status, version = excluded.version,
        created_at = excluded.created_at, finished_at = excluded.finished_at,
        archived_at = excluded.archived_at
    RETURNING 1
), journal_gone AS (
    DELETE FROM journal WHERE saga_id = ANY($1::text[]) RETURNING 1
), inbox_gone AS (
    DELETE FROM inbox WHERE saga_id = ANY($1::text[]) RETURNING 1
), timers_gone AS (
    DELETE FROM deadlines WHERE saga_id = ANY($1::text[]) RETURNING 1
)
DELETE FROM sagas WHERE id = ANY($1::text[])
"""

_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


@dataclass
class ArchiveReport:
    sagas: int = 0
    journal_entries: int = 0
    batches: int = 0
    seconds: float = 0.0
    by_status: dict[str, int] = field(default_factory=dict)


async def archive(
    pool: asyncpg.Pool,
    writer: ArchiveWriter,
    finished_before: datetime,
    *,
    statuses: Sequence[str] = ARCHIVED_BY_DEFAULT,
    batch_size: int = 500,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    limit: int | None = None,
) -> ArchiveReport:
    """Archive the sagas of ``statuses`` that finished before ``finished_before`` (their
    ``updated_at``) into ``writer``, at most ``limit`` of them: batch by batch, each on disk
    before the transaction that deletes it commits. The caller closes the writer."""
    report = ArchiveReport()
    started = time.monotonic()
    for status in statuses:
        # Two passes: the second finds those a batch of messages held (skipped) during the first.
        for _ in range(2):
            cursor: tuple[datetime, str] = (_EPOCH, "")
            while limit is None or report.sagas < limit:
                size = batch_size if limit is None else min(batch_size, limit - report.sagas)
                try:
                    rows, entries = await _archive_batch(
                        pool, writer, status, finished_before, cursor, size, now
                    )
                except BaseException:
                    writer.discard()  # rolled back: those sagas are still in the database
                    raise
                if not rows:
                    break
                cursor = (rows[-1]["updated_at"], rows[-1]["id"])
                report.sagas += len(rows)
                report.journal_entries += len(entries)
                report.batches += 1
                report.by_status[status] = report.by_status.get(status, 0) + len(rows)
    report.seconds = time.monotonic() - started
    return report


async def _archive_batch(
    pool: asyncpg.Pool,
    writer: ArchiveWriter,
    status: str,
    finished_before: datetime,
    cursor: tuple[datetime, str],
    size: int,
    now: Callable[[], datetime],
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """One batch in one transaction: lock, read, write and fsync, bury. Its sagas and journal."""
    async with pool.acquire() as connection, connection.transaction():
        late_until = now() - LATE_SUCCESS_WINDOW
        rows = await connection.fetch(_CLAIM, status, finished_before, *cursor, size, late_until)
        if not rows:
            return [], []
        ids = [r["id"] for r in rows]
        entries = await connection.fetch(_JOURNAL, ids)
        timers = await connection.fetch(_TIMERS, ids)
        by_saga: dict[str, list[asyncpg.Record]] = {}
        for entry in entries:
            by_saga.setdefault(entry["saga_id"], []).append(entry)
        timers_of: dict[str, list[asyncpg.Record]] = {}
        for timer in timers:
            timers_of.setdefault(timer["saga_id"], []).append(timer)
        for row in rows:
            journal = [{k: v for k, v in e.items() if k != "saga_id"} for e in by_saga.get(row["id"], [])]
            timer_rows = [
                {k: v for k, v in t.items() if k != "saga_id"} for t in timers_of.get(row["id"], [])
            ]
            writer.write(saga_record(dict(row), journal, timer_rows))
        writer.commit_point()  # on disk before the delete commits: never lose a saga
        await connection.execute(_BURY, ids, now())
    return rows, entries


@dataclass
class PruneReport:
    inbox: int = 0
    dead_letters: int = 0
    tombstones: int = 0
    seconds: float = 0.0
    #: the inbox was pruned of sagas finished up to here: the next prune may start from it
    inbox_until: datetime | None = None


_PRUNE_INBOX = """
WITH finished AS MATERIALIZED (
    SELECT id, updated_at FROM sagas
    WHERE status = $1 AND updated_at < $2 AND updated_at >= $3 AND (updated_at > $3 OR id > $4)
    ORDER BY updated_at, id LIMIT $5
), gone AS (
    DELETE FROM inbox WHERE saga_id IN (SELECT id FROM finished) RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted, last.updated_at, last.id
FROM (SELECT updated_at, id FROM finished ORDER BY updated_at DESC, id DESC LIMIT 1) AS last
"""


async def prune_inbox(
    pool: asyncpg.Pool, finished_before: datetime, since: datetime | None = None, batch_size: int = 1000
) -> int:
    """Delete the inbox rows of sagas that finished (completed or compensated) before
    ``finished_before``, and after ``since`` when given (what an earlier prune did not reach).
    A failed saga keeps its inbox, as everything else, for an operator. Returns the rows deleted."""
    deleted = 0
    for status in ARCHIVED_BY_DEFAULT:
        cursor: tuple[datetime, str] = (since or _EPOCH, "")
        while True:
            row = await pool.fetchrow(_PRUNE_INBOX, status, finished_before, *cursor, batch_size)
            if row is None:
                break
            deleted += row["deleted"]
            cursor = (row["updated_at"], row["id"])
    return deleted


async def _prune_by_age(pool: asyncpg.Pool, table: str, key: str, column: str, before: datetime) -> int:
    deleted = 0
    statement = (
        f"WITH gone AS (DELETE FROM {table} WHERE {key} = ANY(ARRAY("
        f"SELECT {key} FROM {table} WHERE {column} < $1 LIMIT 5000)) RETURNING 1)"
        " SELECT count(*) FROM gone"
    )
    while True:
        count: int = await pool.fetchval(statement, before)
        deleted += count
        if count < 5000:
            return deleted


async def prune(
    pool: asyncpg.Pool,
    now: datetime,
    *,
    inbox_after: timedelta,
    dead_letters_after: timedelta,
    tombstones_after: timedelta,
    inbox_since: datetime | None = None,
) -> PruneReport:
    """Delete what has outlived its lifetime: inbox rows of sagas finished more than
    ``inbox_after`` ago, dead letters dead more than ``dead_letters_after`` ago (replayed or
    not), tombstones of sagas archived more than ``tombstones_after`` ago."""
    started = time.monotonic()
    report = PruneReport()
    report.inbox_until = now - inbox_after
    report.inbox = await prune_inbox(pool, report.inbox_until, inbox_since)
    report.dead_letters = await _prune_by_age(pool, "dead_letters", "id", "dead_at", now - dead_letters_after)
    report.tombstones = await _prune_by_age(
        pool, "tombstones", "saga_id", "archived_at", now - tombstones_after
    )
    report.seconds = time.monotonic() - started
    return report


class Pruner:
    """The running service's periodic prune (``ORCHESTRATOR_PRUNE_INTERVAL_SECONDS``): the same
    as ``orchestrator prune``, every interval, the first a minute after the start (or sooner, for
    a shorter interval). A failure (the database away) is logged and waits for the next round:
    pruning is never urgent, and never a reason to stop the service. It remembers how far the
    inbox was pruned, so each round reads only the sagas that finished since the last one."""

    def __init__(
        self,
        pool: Callable[[], Awaitable[asyncpg.Pool]],
        interval: float,
        inbox_after: timedelta,
        dead_letters_after: timedelta,
        tombstones_after: timedelta,
    ) -> None:
        self.pool = pool
        self.interval = interval
        self.lifetimes = (inbox_after, dead_letters_after, tombstones_after)
        self.inbox_until: datetime | None = None
        self.rounds = 0

    async def once(self, now: datetime) -> PruneReport:
        inbox_after, dead_letters_after, tombstones_after = self.lifetimes
        report = await prune(
            await self.pool(),
            now,
            inbox_after=inbox_after,
            dead_letters_after=dead_letters_after,
            tombstones_after=tombstones_after,
            inbox_since=self.inbox_until,
        )
        self.inbox_until = report.inbox_until
        self.rounds += 1
        return report

    async def run(self) -> None:
        await asyncio.sleep(min(60.0, self.interval))
        while True:
            try:
                report = await self.once(datetime.now(UTC))
            except Exception as error:
                log.warning("prune failed, trying again in %gs: %s", self.interval, error)
            else:
                if report.inbox or report.dead_letters or report.tombstones:
                    log.info(
                        "pruned %d inbox rows, %d dead letters, %d tombstones in %.1fs",
                        report.inbox,
                        report.dead_letters,
                        report.tombstones,
                        report.seconds,
                    )
            await asyncio.sleep(self.interval)
