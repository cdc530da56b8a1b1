"""The participant's own records in its PostgreSQL: the inbox (with the reply) and attempt counts.

The inbox row is written in the transaction of the business writes, so a command either left both
its effect and its recorded reply, or neither: a command seen again returns the recorded reply
and does nothing else. The same row serves as the outbox, since a reply is published before its
command is acked: after a crash between commit and publish the command comes back and finds its
reply waiting.

Attempts are counted in a table of their own, in a transaction of their own, because the failed
handler's transaction is rolled back and a classic queue keeps no delivery count.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["Claim", "Inbox", "Recorded", "Reused", "command_digest"]

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
MAX_ERROR = 2000
"""Characters of an error kept in the attempts table: enough for a traceback's last lines."""


@dataclass(frozen=True)
class Recorded:
    reply_type: str
    reply_body: bytes
    reply_message_id: str
    #: what the command was (:func:`command_digest`); empty for a record written before it was kept
    command_digest: str = ""


@dataclass(frozen=True)
class Claim:
    """What :meth:`Inbox.claim` found: the reply recorded before (the command is done), or the
    lock taken and the tries that failed before this one."""

    recorded: Recorded | None
    failed: int
    dead: bool


class Reused(Exception):
    """A message id recorded for another command (another type, saga or body): its reply is not
    this command's, and doing this one under that id would make the id mean two things."""


def command_digest(command_type: str, saga_id: str, body: Mapping[str, Any]) -> str:
    """What identifies a command's content: its type, its saga and its body, keys sorted (the
    orchestrator re-sends a command from its outbox, where the body's keys may come back in
    another order)."""
    canonical = orjson.dumps([command_type, saga_id, _numbers(body)], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _numbers(value: Any) -> Any:
    """Whole numbers written as floats as integers: the orchestrator's outbox (jsonb) gives
    ``1e20`` back as ``100000000000000000000``, and a resend must read as the same command."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


class Inbox:
    """The kit's two tables in ``schema``; created at start by :meth:`create`."""

    def __init__(self, engine: AsyncEngine, schema: str) -> None:
        if not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"the schema must be a lower-case SQL identifier, got {schema!r}")
        self.engine = engine
        self.schema = schema
        self._inbox = f'"{schema}".participant_inbox'
        self._attempts = f'"{schema}".participant_attempts'
        # Every command's statements, built once, not parsed anew per command.
        self._claim = text(
            f"""WITH claimed AS (
                INSERT INTO {self._inbox}
                (message_id, command_type, saga_id, reply_type, reply_body, reply_message_id)
                VALUES (:id, '', '', '', '', '') ON CONFLICT (message_id) DO NOTHING
                RETURNING 1)
            SELECT EXISTS (SELECT FROM claimed) AS claimed, a.attempts,
                a.dead_lettered_at IS NOT NULL AS dead, i.message_id AS known,
                i.reply_type, i.reply_body, i.reply_message_id, i.command_digest,
                i.command_type, i.saga_id
            FROM (VALUES (1)) AS one
            LEFT JOIN {self._attempts} a ON a.message_id = :id
            LEFT JOIN {self._inbox} i ON i.message_id = :id"""
        )
        self._found = text(
            "SELECT reply_type, reply_body, reply_message_id, command_digest, command_type, saga_id"
            f" FROM {self._inbox} WHERE message_id = :id"
        )
        self._record = text(
            f"""UPDATE {self._inbox} SET command_type = :command_type, saga_id = :saga_id,
                reply_type = :reply_type, reply_body = :reply_body,
                reply_message_id = :reply_message_id, command_digest = :digest, handled_at = now()
                WHERE message_id = :id"""
        )

    async def create(self, connection: AsyncConnection) -> None:
        """Create the schema and tables if missing; under a lock, since several instances of one
        service start at once and CREATE ... IF NOT EXISTS is not safe against itself."""
        await connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": self._inbox})
        await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
        await connection.execute(
            text(
                f"""CREATE TABLE IF NOT EXISTS {self._inbox} (
                    message_id text PRIMARY KEY,
                    command_type text NOT NULL,
                    saga_id text NOT NULL,
                    reply_type text NOT NULL,
                    reply_body bytea NOT NULL,
                    reply_message_id text NOT NULL,
                    handled_at timestamptz NOT NULL DEFAULT now())"""
            )
        )
        await connection.execute(
            text(
                f"""CREATE TABLE IF NOT EXISTS {self._attempts} (
                    message_id text PRIMARY KEY,
                    command_type text NOT NULL,
                    attempts integer NOT NULL,
                    last_error text NOT NULL,
                    dead_lettered_at timestamptz,
                    updated_at timestamptz NOT NULL DEFAULT now())"""
            )
        )
        # kept since the kit refuses a message id reused for another command; older rows have none.
        # Asked first: an ALTER TABLE takes its lock before it finds the column there, and would
        # queue every inbox query of the service behind the handlers in flight at each start.
        present = await connection.execute(
            text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = :schema"
                " AND table_name = 'participant_inbox' AND column_name = 'command_digest'"
            ),
            {"schema": self.schema},
        )
        if present.first() is None:
            await connection.execute(
                text(
                    f"ALTER TABLE {self._inbox} ADD COLUMN IF NOT EXISTS command_digest text NOT NULL"
                    " DEFAULT ''"
                )
            )

    async def claim(self, connection: AsyncConnection, message_id: str, digest: str = "") -> Claim:
        """Take a lock on ``message_id`` and read its failed tries, in one round trip; or the
        reply recorded for it. :class:`Reused` when it was recorded for a command other than
        ``digest`` says.

        The lock is the row lock of a provisional claim: a second delivery of the same command
        running at the same time waits here until the first commits (and then finds its reply)
        or rolls back (and then does the work itself). So concurrent duplicates never both act."""
        # Twice at most: a record found on conflict but gone before it was read was pruned in
        # between (its commit is long past), so the second insert meets no conflict.
        for _ in range(2):
            row = (
                await connection.execute(
                    self._claim,
                    {"id": message_id},
                )
            ).one()
            if row.claimed:
                return Claim(None, int(row.attempts or 0), bool(row.dead))
            found: Row[Any] | None = row
            if row.known is None:
                # The conflict waited for a transaction that committed the record after this
                # statement's snapshot was taken: read it as of now.
                found = (
                    await connection.execute(
                        self._found,
                        {"id": message_id},
                    )
                ).first()
            if found is not None:
                if digest and found.command_digest and found.command_digest != digest:
                    raise Reused(
                        f"message id {message_id} was taken before for another command"
                        f" ({found.command_type} of saga {found.saga_id}, or another body): its reply is"
                        " not this command's"
                    )
                recorded = Recorded(
                    found.reply_type, bytes(found.reply_body), found.reply_message_id, found.command_digest
                )
                return Claim(recorded, 0, False)
        raise RuntimeError(f"the inbox record of {message_id} keeps vanishing between insert and read")

    async def record(
        self,
        connection: AsyncConnection,
        *,
        message_id: str,
        command_type: str,
        saga_id: str,
        reply_type: str,
        reply_body: bytes,
        reply_message_id: str,
        digest: str = "",
    ) -> None:
        await connection.execute(
            self._record,
            {
                "digest": digest,
                "id": message_id,
                "command_type": command_type,
                "saga_id": saga_id,
                "reply_type": reply_type,
                "reply_body": reply_body,
                "reply_message_id": reply_message_id,
            },
        )

    async def count_failure(self, message_id: str, command_type: str, error: str, *, limit: int) -> int:
        """Count one more failed try, durably; marks it dead-lettered when it reaches ``limit``.
        Returns the count."""
        async with self.engine.begin() as connection:
            row = (
                await connection.execute(
                    text(
                        f"""INSERT INTO {self._attempts} AS a (message_id, command_type, attempts, last_error)
                            VALUES (:id, :type, 1, :error)
                            ON CONFLICT (message_id) DO UPDATE SET attempts = a.attempts + 1,
                                last_error = EXCLUDED.last_error, updated_at = now()
                            RETURNING attempts"""
                    ),
                    {"id": message_id, "type": command_type, "error": error[-MAX_ERROR:]},
                )
            ).one()
            count = int(row.attempts)
            if count >= limit:
                await self._mark_dead(connection, message_id)
            return count

    async def revive(self, message_id: str) -> None:
        """Give a dead-lettered command a fresh count of tries: it was sent again (an operator's
        replay, the saga's resend), not handed back by the broker. Its own transaction, so that
        the count stays fresh whatever the next try does."""
        async with self.engine.begin() as connection:
            await connection.execute(
                text(
                    f"UPDATE {self._attempts} SET attempts = 0, dead_lettered_at = NULL, updated_at = now()"
                    " WHERE message_id = :id AND dead_lettered_at IS NOT NULL"
                ),
                {"id": message_id},
            )

    async def _mark_dead(self, connection: AsyncConnection, message_id: str) -> None:
        await connection.execute(
            text(
                f"UPDATE {self._attempts} SET dead_lettered_at = coalesce(dead_lettered_at, now())"
                " WHERE message_id = :id"
            ),
            {"id": message_id},
        )

    async def prune(self, older_than_days: float, *, batch: int = 10_000) -> int:
        """Delete inbox and attempt rows older than ``older_than_days``, in batches so that no
        transaction holds many locks; the rows deleted. A command delivered again after its row
        is gone is carried out again: keep rows longer than any saga can re-send its commands."""
        deleted = 0
        for table, column in ((self._inbox, "handled_at"), (self._attempts, "updated_at")):
            while True:
                async with self.engine.begin() as connection:
                    result = await connection.execute(
                        text(
                            f"""DELETE FROM {table} WHERE message_id IN (
                                SELECT message_id FROM {table}
                                WHERE {column} < now() - make_interval(secs => :seconds)
                                LIMIT :batch FOR UPDATE SKIP LOCKED)"""
                        ),
                        {"seconds": older_than_days * 86400, "batch": batch},
                    )
                count = result.rowcount or 0
                deleted += count
                if count < batch:
                    break
        return deleted
