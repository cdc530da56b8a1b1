"""The persistence port: what the service layer needs from a journal store, whatever backs it.

Adapters: :mod:`orchestrator.adapters.postgres.store` (the product) and :mod:`orchestrator.adapters.memory`
(the test kit and unit tests). One contract test runs against both.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from orchestrator.core.engine import Deadline, Decision, Incoming, OutgoingCommand, SagaSnapshot
from orchestrator.core.ingress import DeadLetter
from orchestrator.core.journal import DueDeadline, JournalEntry, Records
from orchestrator.service.faults import Fault

__all__ = [
    "Changes",
    "DueDeadline",
    "HandledCommand",
    "JournalEntry",
    "Records",
    "SagasBusy",
    "Store",
    "Tombstone",
    "Transaction",
]


@dataclass(frozen=True)
class HandledCommand:
    """One record of a participant's kit inbox: a command it carried out and answered, as
    ``orchestrator reconcile`` reads it after a restore (orchestrator/service/reconcile.py)."""

    service: str
    message_id: str
    command_type: str
    saga_id: str
    handled_at: datetime


@dataclass(frozen=True)
class Tombstone:
    """What is left of an archived saga (``orchestrator archive``): enough to know its start again,
    so that a late duplicate does not start the business twice, and to answer for it; its data and
    journal are in the archive file."""

    saga_id: str
    workflow: str
    key: str
    release: str
    state: str
    status: str
    version: int
    created_at: datetime
    finished_at: datetime
    archived_at: datetime


@dataclass
class Changes:
    """Everything one batch writes, in one transaction."""

    sagas: dict[str, SagaSnapshot] = field(default_factory=dict)
    journal: list[JournalEntry] = field(default_factory=list)
    commands: list[OutgoingCommand] = field(default_factory=list)
    inbox: dict[str, str | None] = field(default_factory=dict)  # message id -> saga id
    duplicates: list[str] = field(default_factory=list)
    #: (saga, kind) -> (the timer to set, or None to remove it; the saga's version it is of).
    #: One entry per timer, the latest decision's, so a save never both removes and sets one row.
    #: A removal takes only a row of that version or older: never a timer set after it.
    deadlines: dict[tuple[str, str], tuple[Deadline | None, int]] = field(default_factory=dict)
    #: messages refused in this batch, recorded in the same transaction that acks them
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def record(self, message: Incoming, decision: Decision, now: datetime) -> None:
        saga = decision.saga
        self.sagas[saga.id] = saga
        self.journal.append(JournalEntry(saga.id, saga.version, message, decision.summary(), now))
        trace = message.trace
        if trace is None:  # the common case untraced: nothing to carry, nothing copied
            self.commands.extend(decision.commands)
            deadline, retry = decision.deadline, decision.retry
        else:  # what it causes continues its trace, through the outbox and the timer rows
            self.commands.extend(replace(c, trace=trace) for c in decision.commands)
            deadline = decision.deadline and replace(decision.deadline, trace=trace)
            retry = decision.retry and replace(decision.retry, trace=trace)
        if decision.deadline_changed:
            self.deadlines[(saga.id, "deadline")] = (deadline, saga.version)
        if decision.retry_changed:
            self.deadlines[(saga.id, "retry")] = (retry, saga.version)
        for kind, timer in decision.timers:  # a branch's (orchestrator.core.branches)
            if timer is not None and trace is not None:
                timer = replace(timer, trace=trace)
            self.deadlines[(saga.id, kind)] = (timer, saga.version)

    def __bool__(self) -> bool:
        return bool(self.sagas or self.inbox or self.duplicates or self.dead_letters)


class SagasBusy(Exception):
    """A batch's save found sagas it read locked by another transaction (an operator's, a
    deadline sweep's): nothing was written, and the batch is decided again with their messages
    set aside (BUSY), as a read that finds them locked sets them aside."""

    #: lock_not_available: a conflict, tried again, should it reach the fault policy
    sqlstate = "55P03"

    def __init__(self, saga_ids: Iterable[str]) -> None:
        self.saga_ids = frozenset(saga_ids)
        super().__init__(f"sagas locked by another transaction: {', '.join(sorted(self.saga_ids))}")


class Transaction(Protocol):
    #: the sagas among those :meth:`read_batch` was asked for that exist but are locked by another
    #: transaction: skipped, not waited for (their messages wait, the rest of the batch goes on)
    busy: set[str]

    async def lock_sagas(self, saga_ids: Iterable[str]) -> dict[str, SagaSnapshot]:
        """The sagas that exist among ``saga_ids``, locked until the transaction ends."""

    async def read_batch(
        self, saga_ids: Iterable[str], message_ids: Iterable[str]
    ) -> tuple[dict[str, SagaSnapshot], set[str]]:
        """What a batch of messages needs before it is decided, in one read: the sagas that
        exist among ``saga_ids``, locked until the transaction ends (those locked elsewhere are
        left out and added to :attr:`busy`), and which of ``message_ids`` were taken already
        (the inbox). In a :meth:`Store.batch` the read may lock nothing (and find nothing busy):
        the save then locks and checks what it read."""

    async def tombstones(self, saga_ids: Iterable[str]) -> dict[str, Tombstone]:
        """The tombstones of archived sagas among ``saga_ids``: asked only for ids no saga row
        has, so a batch of replies to sagas that exist never pays for it."""

    async def fence(self, fences: Collection[tuple[int, int]]) -> set[tuple[int, int]]:
        """Which of ``fences`` (partition, epoch) are still current, held so (a share lock)
        until the transaction ends: a replica that takes one of those partitions waits for it.
        Asked first, before any saga is read."""

    async def sent_commands(self, saga_ids: Iterable[str]) -> dict[str, set[str]]:
        """The message ids of every command each saga's journal says it sent: asked only for a
        message that names a saga and answers none of what the saga waits on now."""

    async def claim_due(
        self, now: datetime, limit: int, workflows: Collection[tuple[str, str]] | None = None
    ) -> tuple[dict[str, SagaSnapshot], list[DueDeadline]]:
        """The timers due by ``now`` of at most ``limit`` sagas, earliest first, with those sagas;
        only sagas of ``workflows`` when given, as (workflow, release) pairs (a process takes only
        the timers it can decide).

        The sagas are locked first, in id order, as :meth:`read_batch` locks them, and the timer
        rows read after that, so the sweep sees what a batch committed meanwhile and takes locks in
        the same order as every batch (sagas, then their timer rows): the two never deadlock, and
        no other replica fires the same timers (it waits for the sagas, then finds them gone)."""

    async def save(self, changes: Changes) -> None: ...


class Store(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction: what it reads stays locked until it ends."""

    def batch(self) -> AbstractAsyncContextManager[Transaction]:
        """A batch of messages' unit of work, which may take fewer round trips: its reads may lock
        nothing, and then its save is all or nothing and checks them, failing as a conflict where
        a saga it read moved or a fence it read was handed over, and with :class:`SagasBusy`
        where a saga it read is locked by another transaction."""

    async def get_saga(self, saga_id: str) -> SagaSnapshot | None: ...

    async def journal(self, saga_id: str) -> list[JournalEntry]: ...

    async def snapshot(self, saga_id: str) -> tuple[SagaSnapshot | None, list[JournalEntry]]:
        """The saga row and its journal, read at one moment."""

    async def records(self, saga_id: str) -> Records:
        """The saga row, its journal, its timers and its outbox rows, read at one moment."""

    async def saga_ids(self, workflow: str | None = None) -> list[str]: ...

    async def get_sagas(self, saga_ids: Collection[str]) -> dict[str, SagaSnapshot]:
        """The sagas among ``saga_ids`` that exist, read without a lock (a dry run's)."""

    async def movable(
        self, workflow: str, release: str, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """The sagas of a release running, compensating or failed: those a migration may move;
        in id order, after ``after``, at most ``limit`` (a page of them)."""

    async def next_deadline(self, workflows: Collection[tuple[str, str]] | None = None) -> datetime | None:
        """When the earliest pending deadline (of a saga of ``workflows``, (workflow, release)
        pairs, when given) falls due, to set the alarm."""

    async def id_key(self) -> bytes:
        """The service's id key (:mod:`orchestrator.core.ids`), shared by every process on the
        store; ``IdKeyAbsent`` when it has none."""

    async def database_now(self) -> datetime:
        """The database's clock: the one "now" every replica decides and sets deadlines by."""

    async def hold(self) -> int:
        """Claim the outbox rows this replica commits from now on, for as long as it lives: other
        replicas' sweeps (:meth:`unsent`) leave them to it. The claim's key."""

    async def unsent(self, limit: int, older_than: datetime | None = None) -> list[OutgoingCommand]:
        """Outbox rows not yet confirmed by the broker, oldest first: this replica's, nobody's,
        and a dead replica's; never those a live replica holds."""

    async def mark_sent(self, message_ids: Sequence[str]) -> None: ...

    def classify(self, error: BaseException) -> Fault:
        """Whose fault a failed write is, in the service's terms: the adapter knows its driver's
        errors, the fault policy (:mod:`orchestrator.service.faults`) only these kinds."""

    async def close(self) -> None: ...
