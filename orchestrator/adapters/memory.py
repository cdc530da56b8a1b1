"""An in-memory store for unit tests and the user's test kit: the same contract, no database."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from orchestrator.adapters.sqlstate import by_sqlstate
from orchestrator.core.engine import Deadline, OutgoingCommand, SagaSnapshot
from orchestrator.core.ingress import DeadLetter
from orchestrator.service.faults import Fault
from orchestrator.service.ports import Survey
from orchestrator.service.store import Changes, DueDeadline, JournalEntry, Records, Tombstone

__all__ = ["InboxConflict", "MemoryPartitionLocks", "MemoryStore"]


class InboxConflict(Exception):
    """A batch took a message the inbox holds already: PostgreSQL's unique violation on ``inbox``
    (SQLSTATE 23505), which ``faults.classify`` calls a conflict, so the batch is tried again and
    its retry reads the message as a duplicate instead of deciding it twice. Overwriting the id
    would hide that race from every test that runs on this store."""

    sqlstate = "23505"


class JournalConflict(Exception):
    """A batch journals a seq its saga has already: PostgreSQL's unique violation on ``journal``'s
    key (23505), a conflict the batch is tried again for, never a half-written save."""

    sqlstate = "23505"


_ABSENT = object()


class _MemoryTransaction:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        #: one transaction at a time: no row is ever locked by another
        self.busy: set[str] = set()
        #: how to take back what this transaction's saves wrote, run newest first when it ends in
        #: an exception: PostgreSQL rolls a transaction back whole, whatever failed after its save
        self._undo: list[Callable[[], None]] = []

    def _keep(self, table: str, key: Any) -> None:
        """Remember one row of a table (``MemoryStore`` attribute) as it is, to put back on rollback.
        The table is looked up again then: a test double may have swapped it meanwhile."""
        before = getattr(self.store, table).get(key, _ABSENT)

        def undo() -> None:
            rows = getattr(self.store, table)
            if before is _ABSENT:
                rows.pop(key, None)
            else:
                rows[key] = before

        self._undo.append(undo)

    def roll_back(self) -> None:
        while self._undo:
            self._undo.pop()()

    async def lock_sagas(self, saga_ids: Iterable[str]) -> dict[str, SagaSnapshot]:
        return {i: self.store.sagas[i] for i in saga_ids if i in self.store.sagas}

    async def read_batch(
        self, saga_ids: Iterable[str], message_ids: Iterable[str]
    ) -> tuple[dict[str, SagaSnapshot], set[str]]:
        return await self.lock_sagas(saga_ids), {m for m in message_ids if m in self.store.inbox}

    async def tombstones(self, saga_ids: Iterable[str]) -> dict[str, Tombstone]:
        return {i: self.store.tombstones[i] for i in saga_ids if i in self.store.tombstones}

    async def fence(self, fences: Collection[tuple[int, int]]) -> set[tuple[int, int]]:
        return set(fences)  # one process, no partitions handed over

    async def sent_commands(self, saga_ids: Iterable[str]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for saga_id in set(saga_ids):
            for entry in self.store.journals.get(saga_id, []):
                for command in entry.decision.get("commands") or []:
                    found.setdefault(saga_id, set()).add(command["message_id"])
        return found

    async def claim_due(
        self, now: datetime, limit: int, workflows: Collection[tuple[str, str]] | None = None
    ) -> tuple[dict[str, SagaSnapshot], list[DueDeadline]]:
        due = sorted(
            (d.due_at, saga_id, kind, d.state, version)
            for (saga_id, kind), (d, version) in self.store.deadlines.items()
            if d.due_at <= now and self.store.decides(saga_id, workflows)
        )
        sagas = list(dict.fromkeys(saga_id for _, saga_id, *_ in due))[:limit]
        taken = set(sagas)
        rows = [
            DueDeadline(s, state, version, at, kind, self.store.deadlines[(s, kind)][0].trace)
            for at, s, kind, state, version in due
            if s in taken
        ]
        return await self.lock_sagas(sorted(sagas)), rows

    async def save(self, changes: Changes) -> None:
        store = self.store
        taken = [message_id for message_id in changes.inbox if message_id in store.inbox]
        if taken:  # before anything is written: a failed save leaves nothing, as a rollback does
            raise InboxConflict(f"the inbox already holds message {', '.join(taken)}")
        batch: dict[str, list[JournalEntry]] = {}
        seqs: dict[str, set[int]] = {}
        for entry in changes.journal:  # the journal's key is (saga, seq), in any order
            have = seqs.setdefault(entry.saga_id, {e.seq for e in store.journals.get(entry.saga_id, [])})
            if entry.seq in have:
                raise JournalConflict(f"journal {entry.saga_id} already has seq {entry.seq}")
            have.add(entry.seq)
            batch.setdefault(entry.saga_id, []).append(entry)
        # One time for the whole batch, its last entry's, as PostgreSQL stamps the rows of a save.
        now = changes.journal[-1].recorded_at if changes.journal else datetime.now(UTC)
        for saga_id, entries in batch.items():
            self._keep("journals", saga_id)  # replaced below, never changed in place: kept whole
            # a trace is carried on by what a message causes, never journaled (core/engine.Incoming)
            written = [replace(e, message=replace(e.message, trace=None), recorded_at=now) for e in entries]
            journal = [*store.journals.get(saga_id, []), *written]
            journal.sort(key=lambda e: e.seq)
            store.journals[saga_id] = journal
        for saga in changes.sagas.values():
            self._keep("sagas", saga.id)
            # what names a saga and when it started stay its first save's (PostgreSQL's upsert)
            was = store.sagas.get(saga.id)
            first = (was.workflow, was.key, was.created_at) if was is not None else None
            if first is not None and first != (saga.workflow, saga.key, saga.created_at):
                saga = replace(saga, workflow=first[0], key=first[1], created_at=first[2])
            store.sagas[saga.id] = saga
        for command in changes.commands:
            if command.message_id not in store.outbox:  # sent again: the row queued first stays
                self._keep("outbox", command.message_id)
                store.outbox[command.message_id] = (command, now)
        for message_id, taken_by in changes.inbox.items():
            self._keep("inbox", message_id)
            store.inbox[message_id] = taken_by
        for message_id in changes.duplicates:
            self._keep("duplicate_counts", message_id)
            store.duplicate_counts[message_id] = store.duplicate_counts.get(message_id, 0) + 1
        if changes.dead_letters:
            recorded = len(store.dead_letters)

            def forget_letters() -> None:
                del self.store.dead_letters[recorded:]

            self._undo.append(forget_letters)
            store.dead_letters.extend(changes.dead_letters)
        for timer, (deadline, version) in changes.deadlines.items():
            self._keep("deadlines", timer)
            if deadline is None:
                if timer in store.deadlines and store.deadlines[timer][1] <= version:
                    del store.deadlines[timer]
            else:
                store.deadlines[timer] = (deadline, version)


class MemoryStore:
    def __init__(self) -> None:
        #: the id key, as migrate stores one in PostgreSQL: the store's own
        self.key = secrets.token_bytes(32)
        self.sagas: dict[str, SagaSnapshot] = {}
        self.journals: dict[str, list[JournalEntry]] = {}
        self.outbox: dict[str, tuple[OutgoingCommand, datetime]] = {}
        self.inbox: dict[str, str | None] = {}
        self.duplicate_counts: dict[str, int] = {}
        self.deadlines: dict[tuple[str, str], tuple[Deadline, int]] = {}
        self.dead_letters: list[DeadLetter] = []
        #: archived sagas (by id), as ``orchestrator archive`` leaves them in PostgreSQL
        self.tombstones: dict[str, Tombstone] = {}
        self._lock = asyncio.Lock()

    def batch(self) -> AbstractAsyncContextManager[_MemoryTransaction]:
        """A transaction: one at a time, so nothing a batch read can have moved."""
        return self.transaction()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_MemoryTransaction]:
        async with self._lock:
            tx = _MemoryTransaction(self)
            try:
                yield tx
            except BaseException:
                tx.roll_back()
                raise

    async def get_saga(self, saga_id: str) -> SagaSnapshot | None:
        return self.sagas.get(saga_id)

    async def journal(self, saga_id: str) -> list[JournalEntry]:
        return list(self.journals.get(saga_id, []))

    async def snapshot(self, saga_id: str) -> tuple[SagaSnapshot | None, list[JournalEntry]]:
        return self.sagas.get(saga_id), list(self.journals.get(saga_id, []))

    async def records(self, saga_id: str) -> Records:
        timers = [
            DueDeadline(s, d.state, version, d.due_at, kind)
            for (s, kind), (d, version) in sorted(self.deadlines.items())
            if s == saga_id
        ]
        queued = sorted((at, c.message_id, c) for c, at in self.outbox.values() if c.saga_id == saga_id)
        outbox = [c for _, _, c in queued]
        return Records(self.sagas.get(saga_id), list(self.journals.get(saga_id, [])), timers, outbox)

    async def saga_ids(self, workflow: str | None = None) -> list[str]:
        found = [s for s in self.sagas.values() if workflow is None or s.workflow == workflow]
        return [s.id for s in sorted(found, key=_created)]

    async def database_now(self) -> datetime:
        return datetime.now(UTC)

    async def id_key(self) -> bytes:
        return self.key

    async def hold(self) -> int:
        return 1  # one process: every row is its own

    async def get_sagas(self, saga_ids: Collection[str]) -> dict[str, SagaSnapshot]:
        return {i: self.sagas[i] for i in saga_ids if i in self.sagas}

    async def movable(
        self, workflow: str, release: str, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        moving = {"running", "compensating", "failed"}
        found = [s for s in self.sagas.values() if s.workflow == workflow and s.release == release]
        ids = sorted(s.id for s in found if s.status in moving and (after is None or s.id > after))
        return ids if limit is None else ids[:limit]

    async def next_deadline(self, workflows: Collection[tuple[str, str]] | None = None) -> datetime | None:
        return min(
            (d.due_at for (saga_id, _), (d, _) in self.deadlines.items() if self.decides(saga_id, workflows)),
            default=None,
        )

    def decides(self, saga_id: str, workflows: Collection[tuple[str, str]] | None) -> bool:
        """Whether a process that loads ``workflows`` (None: any) takes this saga's timers; a
        timer of a saga that does not exist is taken by any, to be removed."""
        saga = self.sagas.get(saga_id)
        return workflows is None or saga is None or (saga.workflow, saga.release) in workflows

    async def unsent(self, limit: int, older_than: datetime | None = None) -> list[OutgoingCommand]:
        rows = [(at, c) for c, at in self.outbox.values() if older_than is None or at <= older_than]
        rows.sort(key=lambda row: row[0])  # oldest first; stable, so a batch's commands keep their order
        return [c for _, c in rows[:limit]]

    async def mark_sent(self, message_ids: Sequence[str]) -> None:
        for message_id in message_ids:
            self.outbox.pop(message_id, None)

    def classify(self, error: BaseException) -> Fault:
        """As PostgreSQL's store classifies: this store raises what it would (an inbox conflict
        as SQLSTATE 23505), and a test that wraps it raises the driver's errors."""
        return by_sqlstate(error)

    async def close(self) -> None:
        return None


def _created(saga: SagaSnapshot) -> tuple[datetime, str]:
    """Order of creation, as PostgreSQL lists sagas (a row there always has its time)."""
    return (saga.created_at or datetime.min.replace(tzinfo=UTC), saga.id)


class MemoryPartitionLocks:
    """Partition ownership for one process alone (a store that is not shared): it is the only
    replica, and holds every partition it asks for."""

    def __init__(self) -> None:
        self.held: set[int] = set()

    async def open(self) -> None:
        pass

    async def survey(self) -> Survey:
        return Survey(replicas=1, taken=frozenset(self.held), mine=frozenset(self.held))

    async def take(self, partition: int) -> bool:
        self.held.add(partition)
        return True

    async def give_up(self, partition: int) -> None:
        self.held.discard(partition)

    async def close(self) -> None:
        self.held.clear()
