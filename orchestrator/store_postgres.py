"""The PostgreSQL store: SQLAlchemy Core over asyncpg, one transaction per batch of messages.

Writes are set-based (one multi-row statement per table per batch), so a batch of 100 messages
costs a handful of round trips, not hundreds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from orchestrator.definitions import Status
from orchestrator.engine import Incoming, OutgoingCommand, Saga
from orchestrator.schema import deadlines, inbox, journal, outbox, sagas
from orchestrator.store import Changes, DueDeadline, JournalEntry

__all__ = ["PostgresStore", "make_engine"]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(url: str, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
    )


def _saga(row: Row[Any]) -> Saga:
    return Saga(
        id=row.id,
        workflow=row.workflow,
        key=row.key,
        state=row.state,
        status=Status(row.status),
        version=row.version,
        data=row.data,
        parked=tuple(row.parked),
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        awaiting=tuple(row.awaiting),
        attempt=row.attempt,
        timed_out=tuple(row.timed_out),
    )


def _saga_row(saga: Saga) -> dict[str, Any]:
    return {
        "id": saga.id,
        "workflow": saga.workflow,
        "key": saga.key,
        "state": saga.state,
        "status": str(saga.status),
        "version": saga.version,
        "data": saga.data,
        "parked": list(saga.parked),
        "last_error": saga.last_error,
        "created_at": saga.created_at,
        "updated_at": saga.updated_at,
        "awaiting": list(saga.awaiting),
        "attempt": saga.attempt,
        "timed_out": list(saga.timed_out),
    }


#: Everything of a saga row that a decision may change (not its identity, not created_at).
_UPDATED = (
    "state",
    "status",
    "version",
    "data",
    "parked",
    "last_error",
    "updated_at",
    "awaiting",
    "attempt",
    "timed_out",
)


class _PostgresTransaction:
    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def lock_sagas(self, saga_ids: Iterable[str]) -> dict[str, Saga]:
        ids = sorted(set(saga_ids))  # a stable lock order: two replicas never deadlock on a batch
        if not ids:
            return {}
        result = await self.connection.execute(
            select(sagas).where(sagas.c.id.in_(ids)).order_by(sagas.c.id).with_for_update()
        )
        return {row.id: _saga(row) for row in result}

    async def seen(self, message_ids: Iterable[str]) -> set[str]:
        ids = list(set(message_ids))
        if not ids:
            return set()
        result = await self.connection.execute(select(inbox.c.message_id).where(inbox.c.message_id.in_(ids)))
        return set(result.scalars())

    async def claim_due(self, now: datetime, limit: int) -> list[DueDeadline]:
        result = await self.connection.execute(
            select(
                deadlines.c.saga_id,
                deadlines.c.state,
                deadlines.c.version,
                deadlines.c.due_at,
                deadlines.c.kind,
            )
            .where(deadlines.c.due_at <= now)
            .order_by(deadlines.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [DueDeadline(r.saga_id, r.state, r.version, r.due_at, r.kind) for r in result]

    async def save(self, changes: Changes) -> None:
        execute = self.connection.execute
        now = changes.journal[-1].recorded_at if changes.journal else datetime.now().astimezone()
        if changes.sagas:
            statement = insert(sagas)
            excluded = statement.excluded
            await execute(
                statement.on_conflict_do_update(
                    index_elements=[sagas.c.id],
                    set_={name: getattr(excluded, name) for name in _UPDATED},
                ),
                [_saga_row(s) for s in changes.sagas.values()],
            )
        if changes.journal:
            await execute(
                insert(journal),
                [
                    {
                        "saga_id": e.saga_id,
                        "seq": e.seq,
                        "kind": e.message.kind,
                        "message_type": e.message.type,
                        "message_id": e.message.message_id,
                        "message": e.message.as_json(),
                        "decision": e.decision,
                        "actor": e.message.actor,
                        "recorded_at": e.recorded_at,
                    }
                    for e in changes.journal
                ],
            )
        if changes.commands:
            await execute(
                insert(outbox).on_conflict_do_nothing(),
                [
                    {
                        "message_id": c.message_id,
                        "saga_id": c.saga_id,
                        "workflow": c.workflow,
                        "message_type": c.type,
                        "payload": c.payload,
                        "created_at": now,
                    }
                    for c in changes.commands
                ],
            )
        if changes.inbox:
            await execute(
                insert(inbox).on_conflict_do_nothing(),
                [{"message_id": m, "saga_id": s, "received_at": now} for m, s in changes.inbox.items()],
            )
        if changes.duplicates:
            await execute(
                update(inbox)
                .where(inbox.c.message_id.in_(changes.duplicates))
                .values(duplicates=inbox.c.duplicates + 1)
            )
        if changes.deadlines:
            await execute(
                delete(deadlines).where(
                    tuple_(deadlines.c.saga_id, deadlines.c.kind).in_(list(changes.deadlines))
                )
            )
            rows = [
                {"saga_id": saga_id, "kind": kind, "state": d.state, "version": version, "due_at": d.due_at}
                for (saga_id, kind), (d, version) in changes.deadlines.items()
                if d is not None
            ]
            if rows:
                await execute(insert(deadlines), rows)


async def _journal(connection: AsyncConnection, saga_id: str) -> list[JournalEntry]:
    result = await connection.execute(
        select(journal).where(journal.c.saga_id == saga_id).order_by(journal.c.seq)
    )
    return [
        JournalEntry(r.saga_id, r.seq, Incoming.from_json(r.message), r.decision, r.recorded_at)
        for r in result
    ]


class PostgresStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str, pool_size: int = 5) -> PostgresStore:
        return cls(make_engine(url, pool_size))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTransaction]:
        async with self.engine.begin() as connection:
            yield _PostgresTransaction(connection)

    async def get_saga(self, saga_id: str) -> Saga | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(sagas).where(sagas.c.id == saga_id))).first()
        return _saga(row) if row is not None else None

    async def journal(self, saga_id: str) -> list[JournalEntry]:
        async with self.engine.connect() as connection:
            return await _journal(connection, saga_id)

    async def snapshot(self, saga_id: str) -> tuple[Saga | None, list[JournalEntry]]:
        """The row and its journal as of one moment, so that a commit in between cannot differ them."""
        async with self.engine.connect() as connection:
            await connection.execution_options(isolation_level="REPEATABLE READ")
            async with connection.begin():
                row = (await connection.execute(select(sagas).where(sagas.c.id == saga_id))).first()
                entries = await _journal(connection, saga_id)
        return (_saga(row) if row is not None else None), entries

    async def saga_ids(self, workflow: str | None = None) -> list[str]:
        query = select(sagas.c.id).order_by(sagas.c.created_at, sagas.c.id)
        if workflow is not None:
            query = query.where(sagas.c.workflow == workflow)
        async with self.engine.connect() as connection:
            return list((await connection.execute(query)).scalars())

    async def next_deadline(self) -> datetime | None:
        async with self.engine.connect() as connection:
            return (await connection.execute(select(func.min(deadlines.c.due_at)))).scalar()  # type: ignore[no-any-return]

    async def unsent(self, limit: int, older_than: datetime | None = None) -> list[OutgoingCommand]:
        query = select(outbox).order_by(outbox.c.created_at).limit(limit)
        if older_than is not None:
            query = query.where(outbox.c.created_at <= older_than)
        async with self.engine.connect() as connection:
            result = await connection.execute(query)
            return [
                OutgoingCommand(r.message_id, r.message_type, r.payload, r.saga_id, r.workflow)
                for r in result
            ]

    async def mark_sent(self, message_ids: Sequence[str]) -> None:
        if not message_ids:
            return
        async with self.engine.begin() as connection:
            await connection.execute(delete(outbox).where(outbox.c.message_id.in_(list(message_ids))))

    async def close(self) -> None:
        await self.engine.dispose()
