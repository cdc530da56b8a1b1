"""The PostgreSQL store: SQLAlchemy Core over asyncpg, one transaction per batch of messages.

Writes are set-based (one multi-row statement per table per batch), so a batch of 100 messages
costs a handful of round trips, not hundreds.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import orjson
from sqlalchemy import and_, func, or_, select, text, tuple_
from sqlalchemy.engine import Row, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from orchestrator.adapters.postgres.faults import classify
from orchestrator.adapters.postgres.schema import deadlines, journal, outbox, sagas
from orchestrator.adapters.read_only import drop_read_only_sessions, read_only
from orchestrator.core.definitions import Status
from orchestrator.core.engine import Incoming, OutgoingCommand, SagaSnapshot
from orchestrator.core.ids import IdKeyAbsent
from orchestrator.core.ingress import DeadLetter
from orchestrator.service.faults import Fault
from orchestrator.service.store import Changes, DueDeadline, JournalEntry, Records, SagasBusy, Tombstone
from orchestrator.settings import database_url

__all__ = ["PostgresStore", "Timeouts", "make_engine"]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class Timeouts:
    """How long any one thing may wait on the database (None: as long as it takes), so that a
    row locked elsewhere or a stuck session holds up one statement, never the service.

    ``statement`` and ``lock`` are PostgreSQL's ``statement_timeout`` and ``lock_timeout`` on every
    session of the pools; the driver gives up 5 s after the statement's (asyncpg's
    ``command_timeout``: a connection that stopped answering); ``acquire`` bounds the wait for a
    free connection of a pool."""

    statement: float | None = None
    lock: float | None = None
    acquire: float | None = None

    @property
    def server_settings(self) -> dict[str, str]:
        found = {}
        if self.statement is not None:
            found["statement_timeout"] = str(max(1, round(self.statement * 1000)))
        if self.lock is not None:
            found["lock_timeout"] = str(max(1, round(self.lock * 1000)))
        return found

    @property
    def command(self) -> float | None:
        return None if self.statement is None else self.statement + 5.0


def make_engine(url: str, pool_size: int = 5, timeouts: Timeouts = Timeouts()) -> AsyncEngine:
    connect_args: dict[str, Any] = {}
    if timeouts.server_settings:
        connect_args["server_settings"] = timeouts.server_settings
    if timeouts.command is not None:
        connect_args["command_timeout"] = timeouts.command
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=timeouts.acquire if timeouts.acquire is not None else 30.0,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        connect_args=connect_args,
    )
    drop_read_only_sessions(engine)
    return engine


#: the first key of every replica's advisory lock (``pg_try_advisory_lock(HOLDER_LOCKS, holder)``):
#: "SAGA" in ASCII, so that the locks are told apart from any other use of advisory locks
HOLDER_LOCKS = 0x53414741


def saga_of(row: Mapping[Any, Any]) -> SagaSnapshot:
    """A saga from its row, whichever driver read it (an asyncpg record, a SQLAlchemy mapping)."""
    return SagaSnapshot(
        id=row["id"],
        workflow=row["workflow"],
        key=row["key"],
        state=row["state"],
        status=Status(row["status"]),
        version=row["version"],
        data=row["data"],
        parked=tuple(row["parked"]),
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        awaiting=tuple(row["awaiting"]),
        attempt=row["attempt"],
        timed_out=tuple(row["timed_out"]),
        release=row["release"],
        branches=tuple(row["branches"]),
    )


def _saga(row: Row[Any]) -> SagaSnapshot:
    return saga_of(row._mapping)


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
    "release",
    "branches",
)


_SAGA_COLUMNS = (
    "id, workflow, key, state, status, version, data, parked, last_error,"
    " created_at, updated_at, awaiting, attempt, timed_out, release, branches"
)

#: The SQL types of ``_SAGA_COLUMNS``, in order, for the NULLs beside an inbox row in ``_READ_BATCH``.
_SAGA_TYPES = (
    "text", "text", "text", "text", "text", "int", "jsonb", "jsonb", "text",
    "timestamptz", "timestamptz", "jsonb", "int", "jsonb", "text", "jsonb",
)  # fmt: skip

#: The saga columns that travel as text and are stored as jsonb.
_JSONB = {"data", "parked", "awaiting", "timed_out", "branches"}

#: A saga row's columns as the save takes them: parallel arrays (jsonb travels as text).
_SAGA_ROWS = """unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[],
                $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::text[], $13::int[],
                $14::text[], $53::text[], $57::text[])
         AS t(id, workflow, key, state, status, version, data, parked, last_error,
              created_at, updated_at, awaiting, attempt, timed_out, release, branches)"""

#: The saga columns of ``_SAGA_ROWS`` as stored, jsonb cast.
_SAGA_VALUES = (
    "id, workflow, key, state, status, version, data::jsonb, parked::jsonb, last_error,"
    " created_at, updated_at, awaiting::jsonb, attempt, timed_out::jsonb, release, branches::jsonb"
)

#: A locked transaction's saga writes (:meth:`PostgresStore.transaction`): the rows are its own.
_UPSERT_SAGAS = f"""
saved_sagas AS (
    INSERT INTO sagas ({_SAGA_COLUMNS})
    SELECT {_SAGA_VALUES} FROM {_SAGA_ROWS}
    ON CONFLICT (id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in _UPDATED)}
    RETURNING 1
)"""

#: A batch's saga writes (:meth:`PostgresStore.batch`), which read its sagas without a lock: the
#: sagas it read ($59, at the versions $60) are locked here, skipping any another transaction
#: holds; the fences it read ($62, $63 in namespace $61) are share-locked, as ``_FENCE`` does; a
#: saga it read is updated, any other inserted (no ON CONFLICT: a saga started meanwhile fails
#: the statement). ``_CHECKED_RESULT`` then fails the whole statement if a lock was skipped, a
#: saga moved or a fence was handed over since the read.
_CHECKED_SAGAS = f"""
fenced AS MATERIALIZED (
    SELECT partition FROM partition_epochs
    WHERE namespace = $61 AND (partition, epoch) IN (SELECT * FROM unnest($62::int[], $63::bigint[]))
    ORDER BY partition
    FOR SHARE
), locked AS MATERIALIZED (
    SELECT s.id, s.version = r.version AS unmoved
    FROM unnest($59::text[], $60::int[]) AS r(id, version) JOIN sagas s ON s.id = r.id
    ORDER BY s.id
    FOR NO KEY UPDATE OF s SKIP LOCKED
), updated AS (
    UPDATE sagas s SET {", ".join(f"{c} = t.{c}{'::jsonb' if c in _JSONB else ''}" for c in _UPDATED)}
    FROM {_SAGA_ROWS}
    WHERE s.id = t.id AND t.id = ANY($59::text[])
    RETURNING 1
), inserted AS (
    INSERT INTO sagas ({_SAGA_COLUMNS})
    SELECT {_SAGA_VALUES} FROM {_SAGA_ROWS}
    WHERE NOT t.id = ANY($59::text[])
    RETURNING 1
)"""

#: The messages ``orchestrator_abort`` (migration 0013) fails a checked save with.
SAGAS_BUSY = "orchestrator: sagas locked by another transaction"
SAGA_MOVED = "orchestrator: a saga moved since the batch read it"
FENCE_MOVED = "orchestrator: a partition was handed over since the batch read its fence"

#: Whether a checked save holds, asked in this order: the fences (nothing written yet), the locks
#: (55P03, with the ids of the sagas held elsewhere as a JSON array: the batch sets their messages
#: aside), the versions; the writes of the other CTEs are run only after these pass.
_CHECKED_RESULT = f"""
SELECT CASE
    WHEN (SELECT count(*) FROM fenced) < cardinality($62::int[])
        THEN orchestrator_abort('40001', '{FENCE_MOVED}', NULL)
    WHEN (SELECT count(*) FROM locked) < cardinality($59::text[])
        THEN orchestrator_abort('55P03', '{SAGAS_BUSY}', (
            SELECT json_agg(r.id)::text FROM unnest($59::text[]) AS r(id)
            WHERE r.id NOT IN (SELECT id FROM locked)))
    WHEN NOT (SELECT bool_and(unmoved) FROM locked)
        THEN orchestrator_abort('40001', '{SAGA_MOVED}', (
            SELECT json_agg(id)::text FROM locked WHERE NOT unmoved))
    WHEN (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted) < cardinality($1::text[])
        THEN orchestrator_abort('40001', '{SAGA_MOVED}', NULL)
    ELSE (SELECT count(*) FROM journaled)
END
"""

#: The rest of a batch's writes, each CTE taking its rows as parallel arrays; an empty array
#: writes nothing.
_WRITES = """journaled AS (
    INSERT INTO journal (saga_id, seq, kind, message_type, message_id, message, decision, actor, recorded_at)
    SELECT saga_id, seq, kind, message_type, message_id, message::jsonb, decision::jsonb, actor, $24
    FROM unnest($15::text[], $16::int[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[],
                $22::text[])
         AS t(saga_id, seq, kind, message_type, message_id, message, decision, actor)
    RETURNING 1
), queued AS (
    INSERT INTO outbox
        (message_id, saga_id, workflow, message_type, payload, created_at, holder, trace, route)
    SELECT message_id, saga_id, workflow, message_type, payload::jsonb, $24, $54::int, trace, route
    FROM unnest($25::text[], $26::text[], $27::text[], $28::text[], $29::text[], $55::text[], $58::text[])
         AS t(message_id, saga_id, workflow, message_type, payload, trace, route)
    ON CONFLICT DO NOTHING
    RETURNING 1
), taken AS (
    -- No ON CONFLICT: a message another transaction took while this one waited for the saga's
    -- lock (its inbox read is from before that commit) must fail this batch, whose retry then
    -- sees the duplicate, instead of being decided twice.
    INSERT INTO inbox (message_id, saga_id, received_at, duplicates)
    SELECT message_id, saga_id, $24, duplicates
    FROM unnest($30::text[], $31::text[], $39::int[]) AS t(message_id, saga_id, duplicates)
    RETURNING 1
), counted AS (
    UPDATE inbox i SET duplicates = i.duplicates + t.n
    FROM unnest($23::text[], $40::int[]) AS t(message_id, n) WHERE i.message_id = t.message_id
    RETURNING 1
), cancelled AS (
    DELETE FROM deadlines d USING unnest($32::text[], $33::text[], $52::int[]) AS t(saga_id, kind, version)
    WHERE d.saga_id = t.saga_id AND d.kind = t.kind AND d.version <= t.version
    RETURNING 1
), timed AS (
    INSERT INTO deadlines (saga_id, kind, state, version, due_at, trace)
    SELECT * FROM unnest($34::text[], $35::text[], $36::text[], $37::int[], $38::timestamptz[], $56::text[])
    ON CONFLICT (saga_id, kind) DO UPDATE
        SET state = excluded.state, version = excluded.version, due_at = excluded.due_at,
            trace = excluded.trace
    RETURNING 1
), dead AS (
    INSERT INTO dead_letters (dead_at, source, reason, detail, message_id, message_type, correlation_id,
                              exchange, routing_key, properties, body, body_size)
    SELECT $24, source, reason, detail, message_id, message_type, correlation_id, exchange, routing_key,
           properties::jsonb, body, body_size
    FROM unnest($41::text[], $42::text[], $43::text[], $44::text[], $45::text[], $46::text[], $47::text[],
                $48::text[], $49::text[], $50::bytea[], $51::int[])
         AS t(source, reason, detail, message_id, message_type, correlation_id, exchange, routing_key,
              properties, body, body_size)
    RETURNING 1
)"""

#: The whole of a locked transaction's writes in one statement, one round trip.
_SAVE = f"WITH {_UPSERT_SAGAS}, {_WRITES}\nSELECT (SELECT count(*) FROM journaled)\n"

#: The whole of a batch's writes, checked against its read, in one statement (its own transaction),
#: which also deletes the outbox rows of commands confirmed since the last batch ($64).
_SAVE_CHECKED = f"""WITH {_CHECKED_SAGAS}, {_WRITES}, sent AS (
    DELETE FROM outbox WHERE message_id = ANY($64::text[])
    RETURNING 1
){_CHECKED_RESULT}"""


#: A batch's one read: its sagas, locked; which of its message ids the inbox already holds, told
#: apart by ``seen``; which of its sagas exist but are locked by another transaction, told apart
#: by ``busy`` (a plain read waits for no lock); and the tombstones of those archived, told apart
#: by ``archived_at`` (the rest of a tombstone in the saga's own columns), which a start needs
#: and used to cost a round trip of its own. A saga row held elsewhere (an operator's open
#: transaction, a stuck session) is skipped, not waited for: its messages are set aside and the
#: rest of the batch goes on, where one locked row used to stop every saga.
_SEEN_AND_TOMBSTONES = f"""
SELECT {", ".join(f"NULL::{t}" for t in _SAGA_TYPES)}, message_id, NULL, NULL, NULL
FROM inbox WHERE message_id = ANY($2::text[])
UNION ALL
SELECT saga_id, workflow, key, state, status, version, NULL, NULL, NULL, created_at, NULL, NULL, NULL,
       NULL, release, NULL, NULL, NULL, finished_at, archived_at
FROM tombstones WHERE saga_id = ANY($1::text[])
"""

_READ_BATCH = f"""
WITH locked AS MATERIALIZED (
    SELECT {_SAGA_COLUMNS} FROM sagas WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE SKIP LOCKED
)
SELECT *, NULL::text AS seen, NULL::text AS busy, NULL::timestamptz AS finished_at,
       NULL::timestamptz AS archived_at
FROM locked
UNION ALL
SELECT {", ".join(f"NULL::{t}" for t in _SAGA_TYPES)}, NULL, id, NULL, NULL
FROM sagas WHERE id = ANY($1::text[]) AND id NOT IN (SELECT id FROM locked)
UNION ALL{_SEEN_AND_TOMBSTONES}"""

#: A batch's read without a transaction (:meth:`PostgresStore.batch`): the same, but nothing is
#: locked, and so nothing is found busy here; its save (``_SAVE_CHECKED``) locks and checks.
_READ_UNLOCKED = f"""
SELECT {_SAGA_COLUMNS}, NULL::text AS seen, NULL::text AS busy, NULL::timestamptz AS finished_at,
       NULL::timestamptz AS archived_at
FROM sagas WHERE id = ANY($1::text[])
UNION ALL{_SEEN_AND_TOMBSTONES}"""


#: The sagas with timers due, soonest first: read without locking anything (``claim_due``).
_DUE_SAGAS = (
    "SELECT d.saga_id FROM deadlines d LEFT JOIN sagas s ON s.id = d.saga_id"
    " WHERE d.due_at <= $1 AND (s.id IS NULL OR $3::text[] IS NULL"
    " OR (s.workflow, s.release) IN (SELECT * FROM unnest($3::text[], $4::text[])))"
    " GROUP BY d.saga_id ORDER BY min(d.due_at), d.saga_id LIMIT $2"
)

#: Commands the broker confirmed, gone from the outbox.
_MARK_SENT = "DELETE FROM outbox WHERE message_id = ANY($1::text[])"


#: The fences of a batch that still hold, share-locked until it commits (migration 0010).
_FENCE = """
SELECT partition, epoch FROM partition_epochs
WHERE namespace = $1 AND (partition, epoch) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))
ORDER BY partition
FOR SHARE
"""

#: The same, read without a lock: a batch's save locks and checks them again (``_SAVE_CHECKED``).
_FENCE_UNLOCKED = _FENCE.replace("FOR SHARE", "")


#: Every command some sagas' journals say they sent (the journal's primary key: a range scan each).
_SENT_COMMANDS = """
SELECT j.saga_id, c->>'message_id' AS message_id
FROM journal j CROSS JOIN LATERAL jsonb_array_elements(j.decision->'commands') c
WHERE j.saga_id = ANY($1::text[]) AND jsonb_typeof(j.decision->'commands') = 'array'
"""


#: The tombstones of archived sagas among some ids (the primary key: one index probe each).
_TOMBSTONES = (
    "SELECT saga_id, workflow, key, release, state, status, version, created_at, finished_at, archived_at"
    " FROM tombstones WHERE saga_id = ANY($1::text[])"
)


def _tombstone(row: Mapping[str, Any]) -> Tombstone:
    """A tombstone from the batch read's row, which carries it in the saga's own columns."""
    kept = ("workflow", "key", "release", "state", "status", "version", "created_at")
    return Tombstone(
        saga_id=row["id"],
        finished_at=row["finished_at"],
        archived_at=row["archived_at"],
        **{name: row[name] for name in kept},
    )


def _save_arguments(changes: Changes, now: datetime, holder: int | None = None) -> list[Any]:
    saga_rows = list(changes.sagas.values())
    # One entry per (saga, kind): the statement never removes and sets the same timer row, and a
    # removal takes only the version it names or an older one, never a timer set after it.
    cancels = [(timer, version) for timer, (d, version) in changes.deadlines.items() if d is None]
    timers = [(timer, d, version) for timer, (d, version) in changes.deadlines.items() if d is not None]
    # A duplicate of a message taken in this same batch counts on the row being inserted: the
    # UPDATE cannot see a row that a sibling CTE of the same statement inserts.
    duplicates = Counter(changes.duplicates)
    earlier = {m: n for m, n in duplicates.items() if m not in changes.inbox}
    return [
        [s.id for s in saga_rows],
        [s.workflow for s in saga_rows],
        [s.key for s in saga_rows],
        [s.state for s in saga_rows],
        [str(s.status) for s in saga_rows],
        [s.version for s in saga_rows],
        [_dumps(s.data) for s in saga_rows],
        [_dumps(list(s.parked)) for s in saga_rows],
        [s.last_error for s in saga_rows],
        [s.created_at for s in saga_rows],
        [s.updated_at for s in saga_rows],
        [_dumps(list(s.awaiting)) for s in saga_rows],
        [s.attempt for s in saga_rows],
        [_dumps(list(s.timed_out)) for s in saga_rows],
        [e.saga_id for e in changes.journal],
        [e.seq for e in changes.journal],
        [e.message.kind for e in changes.journal],
        [e.message.type for e in changes.journal],
        [e.message.message_id for e in changes.journal],
        [_dumps(e.message.as_json()) for e in changes.journal],
        [_dumps(e.decision) for e in changes.journal],
        [e.message.actor for e in changes.journal],
        list(earlier),
        now,
        [c.message_id for c in changes.commands],
        [c.saga_id for c in changes.commands],
        [c.workflow for c in changes.commands],
        [c.type for c in changes.commands],
        [_dumps(c.payload) for c in changes.commands],
        list(changes.inbox),
        list(changes.inbox.values()),
        [saga_id for (saga_id, _), _ in cancels],
        [kind for (_, kind), _ in cancels],
        [saga_id for (saga_id, _), _, _ in timers],
        [kind for (_, kind), _, _ in timers],
        [d.state for _, d, _ in timers],
        [version for _, _, version in timers],
        [d.due_at for _, d, _ in timers],
        [duplicates.get(m, 0) for m in changes.inbox],
        list(earlier.values()),
        *_dead_letter_arguments(changes.dead_letters),
        [version for _, version in cancels],
        [s.release for s in saga_rows],
        holder,
        [c.trace for c in changes.commands],
        [d.trace for _, d, _ in timers],
        [_dumps(list(s.branches)) for s in saga_rows],
        [c.route for c in changes.commands],
    ]


def _dead_letter_arguments(letters: Sequence[DeadLetter]) -> list[list[Any]]:
    return [
        [d.source for d in letters],
        [d.reason for d in letters],
        [d.detail for d in letters],
        [d.message_id for d in letters],
        [d.message_type for d in letters],
        [d.correlation_id for d in letters],
        [d.exchange for d in letters],
        [d.routing_key for d in letters],
        [_dumps(d.properties) for d in letters],
        [d.body for d in letters],
        [d.body_size for d in letters],
    ]


#: How long the outbox rows of confirmed commands wait for a batch's save to delete them with its
#: own writes (one commit, one WAL flush, no round trip of their own) before they are deleted alone.
SENT_LINGER = 0.05


class _Confirmed:
    """Commands the broker confirmed, whose outbox rows wait for the next batch's save."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        #: resolved once the save that took ``ids`` ended: True where it committed them
        self.deleted: asyncio.Future[bool] | None = None

    def add(self, ids: Sequence[str]) -> asyncio.Future[bool]:
        if self.deleted is None:
            self.deleted = asyncio.get_running_loop().create_future()
        self.ids.extend(ids)
        return self.deleted

    def take(self) -> tuple[list[str], asyncio.Future[bool] | None]:
        taken = self.ids, self.deleted
        self.ids, self.deleted = [], None
        return taken

    def withdraw(self, ids: Sequence[str], deleted: asyncio.Future[bool]) -> None:
        """Ids no save took in time, deleted by their own statement instead."""
        if deleted is self.deleted:
            gone = set(ids)
            self.ids = [i for i in self.ids if i not in gone]


class _PostgresTransaction:
    """The hot path, on asyncpg directly: prepared statements, arrays in, one round trip a step.

    ``checked``: a batch's unit of work (:meth:`PostgresStore.batch`), outside a transaction. Its
    reads lock nothing and remember what they found (the sagas' versions, the fences that held);
    its save locks and checks them in the statement that writes (``_SAVE_CHECKED``)."""

    def __init__(
        self,
        connection: asyncpg.Connection,
        holder: int | None = None,
        namespace: str = "",
        *,
        checked: bool = False,
        confirmed: _Confirmed | None = None,
    ) -> None:
        self.connection = connection
        self.confirmed = confirmed
        self.holder = holder
        self.namespace = namespace
        self.checked = checked
        #: (checked) the sagas read, at the versions read; the fences read that held
        self._versions: dict[str, int] = {}
        self._fences: list[tuple[int, int]] = []
        self.busy: set[str] = set()
        #: the tombstones among the ids :meth:`read_batch` read (its read takes them along), and
        #: those ids: :meth:`tombstones` answers for them without a round trip
        self._tombstones: dict[str, Tombstone] = {}
        self._read: set[str] = set()

    async def lock_sagas(self, saga_ids: Iterable[str]) -> dict[str, SagaSnapshot]:
        ids = sorted(set(saga_ids))  # a stable lock order: two replicas never deadlock on a batch
        if not ids:
            return {}
        rows = await self.connection.fetch(
            f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", ids
        )
        return {row["id"]: saga_of(row) for row in rows}

    async def read_batch(
        self, saga_ids: Iterable[str], message_ids: Iterable[str]
    ) -> tuple[dict[str, SagaSnapshot], set[str]]:
        ids, messages = sorted(set(saga_ids)), list(set(message_ids))
        if not ids and not messages:  # every message of the batch was refused before this
            return {}, set()
        rows = await self.connection.fetch(_READ_UNLOCKED if self.checked else _READ_BATCH, ids, messages)
        current: dict[str, SagaSnapshot] = {}
        seen: set[str] = set()
        self._read.update(ids)
        for row in rows:
            if row["seen"] is not None:
                seen.add(row["seen"])
            elif row["busy"] is not None:
                self.busy.add(row["busy"])
            elif row["archived_at"] is not None:
                self._tombstones[row["id"]] = _tombstone(row)
            else:
                current[row["id"]] = saga_of(row)
        if self.checked:
            self._versions.update((saga_id, saga.version) for saga_id, saga in current.items())
        return current, seen

    async def tombstones(self, saga_ids: Iterable[str]) -> dict[str, Tombstone]:
        ids = sorted(set(saga_ids))
        if not ids:
            return {}
        if self._read.issuperset(ids):  # read along with the batch's sagas: no round trip
            return {i: self._tombstones[i] for i in ids if i in self._tombstones}
        rows = await self.connection.fetch(_TOMBSTONES, ids)
        return {row["saga_id"]: Tombstone(**dict(row)) for row in rows}

    async def fence(self, fences: Collection[tuple[int, int]]) -> set[tuple[int, int]]:
        if not fences:
            return set()
        pairs = sorted(fences)
        rows = await self.connection.fetch(
            _FENCE_UNLOCKED if self.checked else _FENCE,
            self.namespace,
            [p for p, _ in pairs],
            [e for _, e in pairs],
        )
        holding = {(row["partition"], row["epoch"]) for row in rows}
        if self.checked:
            self._fences = sorted(holding)
        return holding

    async def sent_commands(self, saga_ids: Iterable[str]) -> dict[str, set[str]]:
        ids = sorted(set(saga_ids))
        if not ids:
            return {}
        rows = await self.connection.fetch(_SENT_COMMANDS, ids)
        found: dict[str, set[str]] = {}
        for row in rows:
            found.setdefault(row["saga_id"], set()).add(row["message_id"])
        return found

    async def claim_due(
        self, now: datetime, limit: int, workflows: Collection[tuple[str, str]] | None = None
    ) -> tuple[dict[str, SagaSnapshot], list[DueDeadline]]:
        # Which sagas have timers due: read without locking anything. Then the sagas, locked in
        # id order as a batch locks them; then their timer rows, read anew after the locks (a
        # batch that held a saga may have moved or removed its timers meanwhile). Every writer of
        # a saga's timer rows holds the saga's lock, so this order (sagas, then timers) is the
        # only one, and a second replica's sweep waits for the sagas and then finds their rows gone.
        # Only sagas of ``workflows`` (those this process can decide; a timer of a saga that does
        # not exist is taken too, to be removed): another process's timers are left to it.
        ids = await self.connection.fetch(
            _DUE_SAGAS,
            now,
            limit,
            None if workflows is None else [name for name, _ in workflows],
            None if workflows is None else [release for _, release in workflows],
        )
        if not ids:
            return {}, []
        # A saga locked elsewhere is skipped, as a batch skips it: its timers wait for a later
        # sweep, and the other sagas' fire now. A timer of a saga that does not exist (no lock
        # protects it) is locked here, to be removed.
        current, _ = await self.read_batch([r["saga_id"] for r in ids], [])
        saga_ids = [r["saga_id"] for r in ids if r["saga_id"] not in self.busy]
        rows = await self.connection.fetch(
            "SELECT saga_id, state, version, due_at, kind, trace FROM deadlines"
            " WHERE saga_id = ANY($1::text[]) AND due_at <= $2 ORDER BY due_at, saga_id, kind"
            " FOR UPDATE SKIP LOCKED",
            saga_ids,
            now,
        )
        due = [
            DueDeadline(r["saga_id"], r["state"], r["version"], r["due_at"], r["kind"], trace=r["trace"])
            for r in rows
        ]
        return current, due

    async def save(self, changes: Changes) -> None:
        now = changes.journal[-1].recorded_at if changes.journal else datetime.now(UTC)
        arguments = _save_arguments(changes, now, self.holder)
        if not self.checked:
            await self.connection.fetchval(_SAVE, *arguments)
            return
        read = sorted(self._versions)
        sent, deleted = self.confirmed.take() if self.confirmed is not None else ([], None)
        committed = False
        try:
            await self.connection.fetchval(
                _SAVE_CHECKED,
                *arguments,
                read,
                [self._versions[saga_id] for saga_id in read],
                self.namespace,
                [p for p, _ in self._fences],
                [e for _, e in self._fences],
                sent,
            )
            committed = True
        except asyncpg.LockNotAvailableError as error:
            if error.message != SAGAS_BUSY:  # lock_timeout: another statement's lock waited on
                raise
            raise SagasBusy(orjson.loads(error.detail)) from None
        finally:
            if deleted is not None:  # not committed: their waiters delete them on their own
                deleted.set_result(committed)


async def _journal(connection: AsyncConnection, saga_id: str) -> list[JournalEntry]:
    result = await connection.execute(
        select(journal).where(journal.c.saga_id == saga_id).order_by(journal.c.seq)
    )
    return [
        JournalEntry(r.saga_id, r.seq, Incoming.from_json(r.message), r.decision, r.recorded_at)
        for r in result
    ]


def driver_dsn(url: str) -> str:
    """The SQLAlchemy URL as asyncpg takes it as a DSN: the dialect's ``ssl`` is ``sslmode``
    there (a DSN's ``ssl`` would go to the server as a setting, which it refuses), and the hosts
    of a multi-host URL (``?host=a:5432&host=b:5432``, as SQLAlchemy writes it) go in the DSN's
    netloc, ``a:5432,b:5432``: asyncpg's DSN parser keeps only the last ``host`` parameter, and a
    failover would find the one host left (``target_session_attrs`` picks among them). A URL
    written as libpq writes several hosts (``user@a:5432,b:5432/name``) is read alike."""
    parsed = make_url(database_url(url)).set(drivername="postgresql")
    query = dict(parsed.query)
    if "ssl" in query and "sslmode" not in query:
        query = {("sslmode" if k == "ssl" else k): v for k, v in query.items()}
    hosts = query.get("host")
    if not isinstance(hosts, tuple) or len(hosts) < 2:
        return parsed.set(query=query).render_as_string(hide_password=False)
    del query["host"]
    user = quote(parsed.username or "", safe="")
    password = f":{quote(parsed.password or '', safe='')}" if parsed.password is not None else ""
    userinfo = f"{user}{password}@" if user or password else ""
    database = quote(parsed.database or "", safe="")
    tail = f"?{urlencode(query, doseq=True)}" if query else ""
    return f"postgresql://{userinfo}{','.join(hosts)}/{database}{tail}"


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_dumps, decoder=orjson.loads, format="text"
    )


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset, which asyncpg runs on every release after rolling back an open
    transaction: nothing more, because the store never changes a session (no SET, LISTEN,
    advisory lock or cursor outlives a transaction), and the default reset is one more round
    trip for every batch and every outbox delete."""


class PostgresStore:
    """Writes go through an asyncpg pool (the hot path); reads and the relay's bookkeeping through
    SQLAlchemy, which the REST read model shares."""

    def __init__(
        self, engine: AsyncEngine, pool_size: int = 5, timeouts: Timeouts = Timeouts(), namespace: str = ""
    ) -> None:
        self.engine = engine
        self.pool_size = pool_size
        self.timeouts = timeouts
        #: whose partitions' fences a batch checks (namespaces may share a database)
        self.namespace = namespace
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        #: the key of the advisory lock this replica holds while it lives (:meth:`hold`): the
        #: outbox rows it commits carry it, and other replicas' sweeps leave them to it
        self.holder: int | None = None
        self._holding: asyncpg.Connection | None = None
        self._confirmed = _Confirmed()

    @classmethod
    def from_url(
        cls, url: str, pool_size: int = 5, timeouts: Timeouts = Timeouts(), namespace: str = ""
    ) -> PostgresStore:
        return cls(make_engine(url, pool_size, timeouts), pool_size, timeouts, namespace)

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.dsn,
                        min_size=min(2, self.pool_size),
                        max_size=self.pool_size,
                        init=_init_connection,
                        reset=_keep_session,
                        # The hot path's statements take arrays, so a custom plan is no better than
                        # the generic one, and planning it anew on each call was a third of the
                        # save's time in the database.
                        # And every one of them finds its rows by key: a generic plan made while a
                        # table was small (a fresh database, statistics behind a burst) scanned it
                        # whole on every batch, a quarter of the database's CPU in a burst of 4,000
                        # sagas. Where no index serves a statement, it still scans.
                        server_settings={
                            "plan_cache_mode": "force_generic_plan",
                            "enable_seqscan": "off",
                            **self.timeouts.server_settings,
                        },
                        command_timeout=self.timeouts.command,
                    )
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; one that answers read-only (a demoted primary) is closed, and the
        pool's others are replaced at their next use, so that the retry reaches the new primary
        (:func:`~orchestrator.adapters.read_only.drop_read_only_sessions` does the same for
        SQLAlchemy's pool)."""
        pool = await self.pool()
        async with pool.acquire(timeout=self.timeouts.acquire) as connection:
            try:
                yield connection
            except Exception as error:
                if read_only(error):
                    connection.terminate()
                    await pool.expire_connections()
                raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTransaction]:
        async with self._connection() as connection, connection.transaction():
            yield _PostgresTransaction(connection, self.holder, self.namespace)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[_PostgresTransaction]:
        """Two round trips a batch, not four: no BEGIN and COMMIT around a read that locks. The
        save is a transaction of its own that fails whole where the read no longer holds."""
        async with self._connection() as connection:
            yield _PostgresTransaction(
                connection, self.holder, self.namespace, checked=True, confirmed=self._confirmed
            )

    async def get_saga(self, saga_id: str) -> SagaSnapshot | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(sagas).where(sagas.c.id == saga_id))).first()
        return _saga(row) if row is not None else None

    async def journal(self, saga_id: str) -> list[JournalEntry]:
        async with self.engine.connect() as connection:
            return await _journal(connection, saga_id)

    async def snapshot(self, saga_id: str) -> tuple[SagaSnapshot | None, list[JournalEntry]]:
        """The row and its journal as of one moment, so that a commit in between cannot differ them."""
        async with self.engine.connect() as connection:
            await connection.execution_options(isolation_level="REPEATABLE READ")
            async with connection.begin():
                row = (await connection.execute(select(sagas).where(sagas.c.id == saga_id))).first()
                entries = await _journal(connection, saga_id)
        return (_saga(row) if row is not None else None), entries

    async def records(self, saga_id: str) -> Records:
        """Row, journal, timers and outbox in one REPEATABLE READ snapshot, as :meth:`snapshot`."""
        async with self.engine.connect() as connection:
            await connection.execution_options(isolation_level="REPEATABLE READ")
            async with connection.begin():
                row = (await connection.execute(select(sagas).where(sagas.c.id == saga_id))).first()
                entries = await _journal(connection, saga_id)
                timers = await connection.execute(
                    select(deadlines).where(deadlines.c.saga_id == saga_id).order_by(deadlines.c.kind)
                )
                queued = await connection.execute(
                    select(outbox)
                    .where(outbox.c.saga_id == saga_id)
                    .order_by(outbox.c.created_at, outbox.c.message_id)
                )
                return Records(
                    _saga(row) if row is not None else None,
                    entries,
                    [DueDeadline(t.saga_id, t.state, t.version, t.due_at, t.kind) for t in timers],
                    [
                        OutgoingCommand(q.message_id, q.message_type, q.payload, q.saga_id, q.workflow)
                        for q in queued
                    ],
                )

    async def saga_ids(self, workflow: str | None = None) -> list[str]:
        query = select(sagas.c.id).order_by(sagas.c.created_at, sagas.c.id)
        if workflow is not None:
            query = query.where(sagas.c.workflow == workflow)
        async with self.engine.connect() as connection:
            return list((await connection.execute(query)).scalars())

    async def get_sagas(self, saga_ids: Collection[str]) -> dict[str, SagaSnapshot]:
        if not saga_ids:
            return {}
        async with self.engine.connect() as connection:
            rows = (await connection.execute(select(sagas).where(sagas.c.id.in_(list(saga_ids))))).all()
        return {row.id: _saga(row) for row in rows}

    async def movable(
        self, workflow: str, release: str, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        query = (
            select(sagas.c.id)
            .where(
                sagas.c.workflow == workflow,
                sagas.c.release == release,
                sagas.c.status.in_(["running", "compensating", "failed"]),
            )
            .order_by(sagas.c.id)
        )
        if after is not None:
            query = query.where(sagas.c.id > after)
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as connection:
            return list((await connection.execute(query)).scalars())

    async def next_deadline(self, workflows: Collection[tuple[str, str]] | None = None) -> datetime | None:
        query = select(func.min(deadlines.c.due_at))
        if workflows is not None:
            query = query.select_from(deadlines.outerjoin(sagas, sagas.c.id == deadlines.c.saga_id)).where(
                or_(sagas.c.id.is_(None), tuple_(sagas.c.workflow, sagas.c.release).in_(list(workflows)))
            )
        async with self.engine.connect() as connection:
            return (await connection.execute(query)).scalar()  # type: ignore[no-any-return]

    async def id_key(self) -> bytes:
        """The service's id key (migration 0009): what its commands' and timers' ids are keyed
        with. :class:`IdKeyAbsent` where the row is missing (``orchestrator migrate`` makes one)."""
        async with self._connection() as connection:
            try:
                secret = await connection.fetchval("SELECT secret FROM id_keys WHERE name = 'ids'")
            except asyncpg.UndefinedTableError:
                secret = None
        if secret is None:
            raise IdKeyAbsent("the database has no id key: run `orchestrator migrate` to generate one")
        return bytes(secret)

    async def database_now(self) -> datetime:
        async with self._connection() as connection:
            return await connection.fetchval("SELECT clock_timestamp()")  # type: ignore[no-any-return]

    @property
    def dsn(self) -> str:
        """The database's address as asyncpg takes it, for connections of their own outside the
        pool (the holder's lock, the partition locks)."""
        return driver_dsn(self.engine.url.render_as_string(hide_password=False))

    async def hold(self) -> int:
        """Take this replica's advisory lock on a connection of its own, kept while it lives: the
        outbox rows it commits then name it, and other replicas' sweeps leave them to it. Taken
        again (under another key) after that connection was lost; meanwhile its rows are fair
        game for any sweep, which at worst sends a command twice (participants dedupe)."""
        if self._holding is not None and not self._holding.is_closed():
            assert self.holder is not None
            return self.holder
        connection = await asyncpg.connect(self.dsn)
        try:
            while True:
                key = secrets.randbelow(2**31 - 1) + 1
                if await connection.fetchval("SELECT pg_try_advisory_lock($1, $2)", HOLDER_LOCKS, key):
                    break
        except BaseException:
            await connection.close()
            raise
        self._holding, self.holder = connection, key
        return key

    async def unsent(self, limit: int, older_than: datetime | None = None) -> list[OutgoingCommand]:
        """Unsent rows, oldest first: this replica's own and nobody's (created by ``older_than``),
        and those of replicas whose advisory lock is gone (dead), of any age; never a live
        replica's, which it is sending itself."""
        if self.holder is not None:
            with contextlib.suppress(Exception):  # not held now: our rows are anybody's meanwhile
                await self.hold()
        live = (
            select(text("objid::int"))
            .select_from(text("pg_locks"))
            .where(text(f"locktype = 'advisory' AND classid = {HOLDER_LOCKS} AND objsubid = 2 AND granted"))
        )
        mine = or_(outbox.c.holder.is_(None), outbox.c.holder == (self.holder or 0))
        if older_than is not None:  # younger ones this replica's relay is about to send
            mine = and_(mine, outbox.c.created_at <= older_than)
        dead = outbox.c.holder.not_in(live.scalar_subquery())  # whatever their age: nobody sends them
        query = select(outbox).where(or_(mine, dead)).order_by(outbox.c.created_at).limit(limit)
        async with self.engine.connect() as connection:
            result = await connection.execute(query)
            return [
                OutgoingCommand(
                    r.message_id, r.message_type, r.payload, r.saga_id, r.workflow, r.trace, r.route
                )
                for r in result
            ]

    async def mark_sent(self, message_ids: Sequence[str]) -> None:
        """Deleted by the next batch's save where one comes within ``SENT_LINGER``; else (or where
        that save failed) by a statement of their own. Returns once they are gone."""
        if not message_ids:
            return
        deleted = self._confirmed.add(message_ids)
        with contextlib.suppress(TimeoutError):
            if await asyncio.wait_for(asyncio.shield(deleted), SENT_LINGER):
                return
        self._confirmed.withdraw(message_ids, deleted)
        async with self._connection() as connection:
            await connection.execute(_MARK_SENT, list(message_ids))

    def classify(self, error: BaseException) -> Fault:
        return classify(error)

    async def close(self) -> None:
        if self._holding is not None:
            with contextlib.suppress(Exception):
                await self._holding.close()
        if self._pool is not None:
            await self._pool.close()
        await self.engine.dispose()
