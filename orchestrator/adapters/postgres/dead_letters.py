"""The dead-letter repository (:class:`orchestrator.service.ports.DeadLetterRepository`) on the
``dead_letters`` table: listed newest first along ``(dead_at, id)``, replayed oldest first."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, literal, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.adapters.postgres.cursors import decode_cursor, encode_cursor
from orchestrator.adapters.postgres.schema import dead_letters
from orchestrator.core.ingress import clip, printable
from orchestrator.service.ports import DeadLetterFilter, DeadLetterPage, DeadLetterRow, SentCommand

__all__ = ["PostgresDeadLetters"]

_c = dead_letters.c
_LISTED = (
    _c.id,
    _c.dead_at,
    _c.source,
    _c.reason,
    _c.detail,
    _c.message_id,
    _c.message_type,
    _c.correlation_id,
    _c.exchange,
    _c.routing_key,
    _c.properties,
    _c.body_size,
    func.octet_length(_c.body).label("body_stored"),
    _c.replayed_at,
    _c.replayed_by,
)


def _conditions(f: DeadLetterFilter) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if f.ids is not None:
        found.append(_c.id.in_(list(f.ids)))
    if f.reason is not None:
        found.append(_c.reason == f.reason)
    if f.source is not None:
        found.append(_c.source == f.source)
    if f.since is not None:
        found.append(_c.dead_at >= f.since)
    if f.until is not None:
        found.append(_c.dead_at < f.until)
    if f.replayed is not None:
        found.append(_c.replayed_at.is_not(None) if f.replayed else _c.replayed_at.is_(None))
    return found


class PostgresDeadLetters:
    """The dead-letter repository port on SQLAlchemy Core (the REST read model's engine)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def page(self, f: DeadLetterFilter, limit: int, cursor: str | None = None) -> DeadLetterPage:
        """A page of dead letters (without their bodies), newest first."""
        query = select(*_LISTED).where(*_conditions(f))
        if cursor is not None:
            dead_at, letter_id = decode_cursor(cursor, int)
            query = query.where(tuple_(_c.dead_at, _c.id) < tuple_(literal(dead_at), literal(letter_id)))
        query = query.order_by(_c.dead_at.desc(), _c.id.desc()).limit(limit + 1)
        async with self.engine.connect() as connection:
            rows = [DeadLetterRow(**r._mapping) for r in await connection.execute(query)]
        last = rows[limit - 1] if len(rows) > limit else None
        return DeadLetterPage(rows[:limit], encode_cursor(last.dead_at, last.id) if last else None)

    async def get(self, letter_id: int) -> DeadLetterRow | None:
        rows = await self.rows(DeadLetterFilter(ids=(letter_id,)), 1)
        return rows[0] if rows else None

    async def rows(
        self, f: DeadLetterFilter, limit: int, after: tuple[datetime, int] | None = None
    ) -> list[DeadLetterRow]:
        """Whole rows, bodies included, oldest first (the order a replay sends them in)."""
        query = select(*_LISTED, _c.body).where(*_conditions(f))
        if after is not None:
            query = query.where(tuple_(_c.dead_at, _c.id) > tuple_(literal(after[0]), literal(after[1])))
        query = query.order_by(_c.dead_at, _c.id).limit(limit)
        async with self.engine.connect() as connection:
            return [DeadLetterRow(**r._mapping) for r in await connection.execute(query)]

    async def count(self, f: DeadLetterFilter) -> int:
        query = select(func.count()).select_from(dead_letters).where(*_conditions(f))
        async with self.engine.connect() as connection:
            return int((await connection.execute(query)).scalar_one())

    async def purge(self, f: DeadLetterFilter) -> int:
        """Delete the rows ``f`` selects (an empty filter: all of them); how many there were."""
        async with self.engine.begin() as connection:
            result = await connection.execute(delete(dead_letters).where(*_conditions(f)))
        return int(result.rowcount)

    async def claim(self, letter_id: int, actor: str, at: datetime, replayed_at: datetime | None) -> bool:
        async with self.engine.begin() as connection:
            claimed = await connection.execute(
                update(dead_letters)
                .where(_c.id == letter_id, _c.replayed_at.is_not_distinct_from(replayed_at))
                .values(replayed_at=at, replayed_by=clip(printable(actor), 200))
                .returning(_c.id)
            )
            return claimed.first() is not None

    async def unclaim(
        self, letter_id: int, at: datetime, replayed_at: datetime | None, replayed_by: str | None
    ) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                update(dead_letters)
                .where(_c.id == letter_id, _c.replayed_at == at)
                .values(replayed_at=replayed_at, replayed_by=replayed_by)
            )

    async def sent_command(self, saga_id: str, message_id: str) -> SentCommand | None:
        async with self.engine.connect() as connection:
            found = (await connection.execute(_SENT, {"saga_id": saga_id, "message_id": message_id})).first()
        return SentCommand(found.type, found.payload, found.route) if found is not None else None


#: a command of a saga's journal by its id, among the saga's own entries (its primary key's prefix)
_SENT = text(
    """
    SELECT c->>'type' AS type, c->'payload' AS payload, c->>'route' AS route
    FROM journal j CROSS JOIN LATERAL jsonb_array_elements(j.decision->'commands') c
    WHERE j.saga_id = :saga_id
      AND j.decision->'commands'
          @> jsonb_build_array(jsonb_build_object('message_id', CAST(:message_id AS text)))
      AND c->>'message_id' = :message_id
    ORDER BY j.seq
    LIMIT 1
    """
)
