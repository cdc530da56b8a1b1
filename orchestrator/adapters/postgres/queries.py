"""The read model for the REST API and the metrics: SQLAlchemy Core queries over the saga tables.

Reads never lock and never go through the service layer: the saga row is already the read model,
written in the same transaction as the journal. Lists page by keyset (newest first, by
``(created_at, id)``), so a page costs the same however deep it is and a saga created meanwhile
never shifts the pages after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, literal, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.adapters.metrics import DatabaseGauges
from orchestrator.adapters.postgres.cursors import BadCursor, decode_cursor, encode_cursor
from orchestrator.adapters.postgres.schema import deadlines, journal, outbox, sagas, workflow_releases
from orchestrator.core.definitions import Status

__all__ = [
    "Activity",
    "BadCursor",
    "HistoryRow",
    "Queries",
    "SagaFilter",
    "SagaPage",
    "SagaRow",
    "StateCount",
    "Timer",
]

#: Sagas still in progress: what "stuck" can apply to.
UNFINISHED = (str(Status.RUNNING), str(Status.COMPENSATING))


def _in_flight() -> ColumnElement[bool]:
    """``status IN ('running', 'compensating')`` written out, not bound: only then can PostgreSQL
    match it with the predicate of the partial index ``sagas_in_flight`` in a generic plan too."""
    return text("sagas.status IN ('running', 'compensating')")  # type: ignore[return-value]


@dataclass(frozen=True)
class SagaFilter:
    workflow: str | None = None
    status: str | None = None
    state: str | None = None
    key: str | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    #: only stuck sagas: unfinished, no pending timer, not updated since this time
    stuck_since: datetime | None = None


@dataclass(frozen=True)
class SagaRow:
    """A saga as a list shows it: identity and where it stands, not its data."""

    id: str
    workflow: str
    key: str
    state: str
    status: str
    version: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    release: str = "1"


@dataclass(frozen=True)
class SagaPage:
    items: list[SagaRow]
    next_cursor: str | None


@dataclass(frozen=True)
class Timer:
    kind: str
    state: str
    due_at: datetime
    version: int


@dataclass(frozen=True)
class HistoryRow:
    seq: int
    kind: str
    message: dict[str, Any]
    decision: dict[str, Any]
    actor: str | None
    recorded_at: datetime


@dataclass(frozen=True)
class Activity:
    started: int
    finished: dict[str, int]  # completed, compensated, failed: those that came to it in the window
    stuck: int


@dataclass(frozen=True)
class StateCount:
    workflow: str
    state: str
    status: str
    sagas: int


_SUMMARY = (
    sagas.c.id,
    sagas.c.workflow,
    sagas.c.release,
    sagas.c.key,
    sagas.c.state,
    sagas.c.status,
    sagas.c.version,
    sagas.c.last_error,
    sagas.c.created_at,
    sagas.c.updated_at,
)


def _no_timer() -> ColumnElement[bool]:
    return ~exists().where(deadlines.c.saga_id == sagas.c.id)


def _conditions(f: SagaFilter) -> list[ColumnElement[bool]]:
    c = sagas.c
    found: list[ColumnElement[bool]] = []
    for column, value in (
        (c.workflow, f.workflow),
        (c.status, f.status),
        (c.state, f.state),
        (c.key, f.key),
    ):
        if value is not None:
            found.append(column == value)
    if f.started_after is not None:
        found.append(c.created_at > f.started_after)
    if f.started_before is not None:
        found.append(c.created_at < f.started_before)
    if f.updated_after is not None:
        found.append(c.updated_at > f.updated_after)
    if f.updated_before is not None:
        found.append(c.updated_at < f.updated_before)
    if f.stuck_since is not None:
        found += [_in_flight(), c.updated_at < f.stuck_since, _no_timer()]
    return found


def listing_query(f: SagaFilter, limit: int, cursor: str | None = None) -> Select[Any]:
    """A page of ``GET /sagas``: newest first along the index ``sagas_created``, from ``cursor``."""
    query = select(*_SUMMARY).where(*_conditions(f))
    if cursor is not None:
        created_at, saga_id = decode_cursor(cursor, str)
        query = query.where(
            tuple_(sagas.c.created_at, sagas.c.id) < tuple_(literal(created_at), literal(saga_id))
        )
    return query.order_by(sagas.c.created_at.desc(), sagas.c.id.desc()).limit(limit)


def gauge_queries(stuck_since: datetime) -> tuple[Select[Any], Select[Any], Select[Any]]:
    """The scrape's saga queries: in flight and failed by workflow, release, state and status,
    stuck by workflow and state (tests/integration/test_history_scale.py reads their plans).

    Grouped by state, the in-flight count still reads only the partial index ``sagas_in_flight``
    (workflow, release, state) and the heap rows it points to (for the status): sagas in flight,
    never the finished ones. States are bounded by the definitions, so are the groups."""
    by_state = (sagas.c.workflow, sagas.c.release, sagas.c.state, sagas.c.status)
    in_flight = select(*by_state, func.count()).where(_in_flight()).group_by(*by_state)
    failed = select(*by_state, func.count()).where(text("sagas.status = 'failed'")).group_by(*by_state)
    stuck = (
        select(sagas.c.workflow, sagas.c.state, func.count())
        .where(*_conditions(SagaFilter(stuck_since=stuck_since)))
        .group_by(sagas.c.workflow, sagas.c.state)
    )
    return in_flight, failed, stuck


class Queries:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def sagas(self, f: SagaFilter, limit: int, cursor: str | None = None) -> SagaPage:
        """A page of sagas, newest first; ``next_cursor`` is None on the last page."""
        query = listing_query(f, limit + 1, cursor)
        async with self.engine.connect() as connection:
            rows = [SagaRow(**r._mapping) for r in await connection.execute(query)]
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if more else None
        return SagaPage(rows, encode_cursor(last.created_at, last.id) if last else None)

    async def timers(self, saga_id: str) -> list[Timer]:
        """The saga's pending deadline and retry, soonest first."""
        query = (
            select(deadlines.c.kind, deadlines.c.state, deadlines.c.due_at, deadlines.c.version)
            .where(deadlines.c.saga_id == saga_id)
            .order_by(deadlines.c.due_at)
        )
        async with self.engine.connect() as connection:
            return [Timer(**r._mapping) for r in await connection.execute(query)]

    async def history(self, saga_id: str, after: int, limit: int) -> list[HistoryRow]:
        """Journal entries after sequence number ``after``, oldest first."""
        query = (
            select(
                journal.c.seq,
                journal.c.kind,
                journal.c.message,
                journal.c.decision,
                journal.c.actor,
                journal.c.recorded_at,
            )
            .where(and_(journal.c.saga_id == saga_id, journal.c.seq > after))
            .order_by(journal.c.seq)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            return [HistoryRow(**r._mapping) for r in await connection.execute(query)]

    async def exists(self, saga_id: str) -> bool:
        async with self.engine.connect() as connection:
            found = await connection.execute(select(sagas.c.id).where(sagas.c.id == saga_id))
            return found.first() is not None

    async def state_counts(self, workflows: Sequence[str] | None = None) -> list[StateCount]:
        """Sagas per workflow, state and status, for the live view of a workflow."""
        query = select(sagas.c.workflow, sagas.c.state, sagas.c.status, func.count().label("sagas")).group_by(
            sagas.c.workflow, sagas.c.state, sagas.c.status
        )
        if workflows is not None:
            query = query.where(sagas.c.workflow.in_(list(workflows)))
        async with self.engine.connect() as connection:
            return [StateCount(**r._mapping) for r in await connection.execute(query)]

    async def in_flight(self, workflow: str) -> dict[tuple[str, str], int]:
        """Sagas running or compensating of one workflow, per (release, state): read through the
        partial index ``sagas_in_flight``, so finished sagas, however many, are never read."""
        query = (
            select(sagas.c.release, sagas.c.state, func.count())
            .where(
                sagas.c.workflow == workflow,
                sagas.c.status.in_([str(Status.RUNNING), str(Status.COMPENSATING)]),
            )
            .group_by(sagas.c.release, sagas.c.state)
        )
        async with self.engine.connect() as connection:
            return {(release, state): n for release, state, n in await connection.execute(query)}

    async def activity(self, workflow: str, since: datetime, stuck_since: datetime) -> Activity:
        """What a workflow did since ``since`` (sagas started, and finished per status) and how
        many of its sagas are stuck now: the workflow page's throughput. Each count is a range
        read on an index (``sagas_created``, ``sagas_status_updated``, ``sagas_in_flight``), so a
        long history does not slow it down."""
        started = select(func.count()).where(sagas.c.created_at >= since, sagas.c.workflow == workflow)
        finished = (
            select(sagas.c.status, func.count())
            .where(
                sagas.c.status.in_([str(s) for s in (Status.COMPLETED, Status.COMPENSATED, Status.FAILED)]),
                sagas.c.updated_at >= since,
                sagas.c.workflow == workflow,
            )
            .group_by(sagas.c.status)
        )
        stuck = select(func.count()).where(
            sagas.c.workflow == workflow, *_conditions(SagaFilter(stuck_since=stuck_since))
        )
        async with self.engine.connect() as connection:
            return Activity(
                started=(await connection.execute(started)).scalar_one(),
                finished={status: n for status, n in await connection.execute(finished)},
                stuck=(await connection.execute(stuck)).scalar_one(),
            )

    async def fingerprints(self, workflow: str) -> dict[str, tuple[str, datetime]]:
        """Each release of ``workflow`` that has run: its fingerprint, and when it first ran."""
        table = workflow_releases.c
        query = select(table.release, table.fingerprint, table.first_run_at).where(table.workflow == workflow)
        async with self.engine.connect() as connection:
            return {r: (f, at) for r, f, at in await connection.execute(query)}

    async def gauges(self, stuck_since: datetime) -> DatabaseGauges:
        """What ``/metrics`` reports about the database, read in one connection at scrape time.

        Only rows still of interest are read, never the history: the sagas in flight through the
        partial index ``sagas_in_flight`` (its predicate is this query's), the failed ones through
        ``sagas_status_updated``. Finished sagas are a counter of the process instead
        (``orchestrator_sagas_finished_total``): counting them here read every row ever finished,
        at every scrape."""
        in_flight, failed, stuck = gauge_queries(stuck_since)
        async with self.engine.connect() as connection:
            states = {(w, r, st, s): n for w, r, st, s, n in await connection.execute(in_flight)}
            states.update({(w, r, st, s): n for w, r, st, s, n in await connection.execute(failed)})
            stuck_counts = {(w, st): n for w, st, n in await connection.execute(stuck)}
            backlog = (await connection.execute(select(func.count()).select_from(outbox))).scalar_one()
        return DatabaseGauges.of_states(states, stuck_counts, backlog)
