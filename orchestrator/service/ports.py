"""The ports: what the service layer needs from the world, as interfaces it owns.

Adapters implement them (:mod:`orchestrator.adapters`); the bootstrap
(:mod:`orchestrator.entrypoints.bootstrap`) plugs one adapter into each. The service layer imports
these and no adapter, driver or SQL (``tests/unit/test_layers.py``).

- the store (:mod:`orchestrator.service.store`): the journal, sagas, outbox, inbox, timers;
- the dead-letter repository: the dead-letter table as an operator works with it;
- the consumer: batches of deliveries from a queue, acked after their commit;
- the publisher: one command to the broker, confirmed;
- the alarm: rings a coroutine at a time, and every so often besides;
- the metrics sink: :class:`orchestrator.service.counts.Counts`, plain numbers;
- the partition locks: locks that die with their holder, for partition ownership;
- the clock: "now", as the database has it (:class:`orchestrator.service.clock.DatabaseClock`).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from orchestrator.core.engine import Decision, OutgoingCommand
from orchestrator.core.ingress import Envelope
from orchestrator.service.counts import Counts
from orchestrator.service.store import Store, Transaction
from orchestrator.supervision import Spawn

__all__ = [
    "Alarm",
    "Clock",
    "CommandOutlet",
    "Consumer",
    "D",
    "DeadLetterFilter",
    "DeadLetterPage",
    "DeadLetterRepository",
    "DeadLetterRow",
    "Delivery",
    "DrainConsumer",
    "MetricsSink",
    "PartitionLocks",
    "Publish",
    "SentCommand",
    "Sleep",
    "Store",
    "Survey",
    "TimerOutlet",
    "Transaction",
    "Unpublishable",
]

#: the metrics sink: the service's own numbers, which an exporter renders
MetricsSink = Counts
#: "now"
Clock = Callable[[], datetime]
#: waits; a test's time-skipping kit passes one that does not
Sleep = Callable[[float], Awaitable[None]]
#: publishes one command, returning once the broker confirmed it; raises when it did not
Publish = Callable[[OutgoingCommand], Awaitable[None]]


class CommandOutlet(Protocol):
    """Where committed commands go to be published (the relay)."""

    def submit(self, commands: Iterable[OutgoingCommand], received_at: float | None = None) -> object:
        """Take them to publish; what it returns is the outlet's (the relay says whether it had room:
        what it has none for stays in the outbox)."""


class TimerOutlet(Protocol):
    """Where committed decisions go for their timers (the deadline alarm)."""

    def committed(self, decisions: Iterable[Decision]) -> None: ...


class Alarm(Protocol):
    """An alarm clock: ``ring`` at a time, and every ``interval`` seconds besides."""

    def start(self, ring: Callable[[], Awaitable[None]], interval: float) -> None: ...

    def set(self, when: datetime) -> None:
        """Ring at ``when`` (this host's clock), instead of any time set before."""

    def stop(self) -> None: ...


class Delivery(Protocol):
    """A message taken from a queue and not yet settled."""

    @property
    def envelope(self) -> Envelope: ...

    @property
    def arrived(self) -> float: ...


class Unpublishable(Exception):
    """The broker did not take a message: ``unavailable`` when it could not be reached at all,
    otherwise it refused this one (no such exchange, no queue bound for the routing key, a nack).
    ``maybe_sent``: the message went out but no confirm came, so the broker may have it."""

    def __init__(self, message: str, unavailable: bool = False, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable
        self.maybe_sent = maybe_sent


D = TypeVar("D", bound=Delivery)


class Consumer(Protocol[D]):
    """A queue's deliveries, in batches, each acked once its batch committed."""

    @property
    def unsettled(self) -> int: ...

    @property
    def busy_since(self) -> float: ...

    def batches(self, limit: int, stopping: asyncio.Event) -> AsyncIterator[Sequence[D]]: ...

    def set_aside(self, deliveries: Sequence[D]) -> None:
        """Deliveries kept unacked a while: in hand, but nothing (a queue being opened, a new
        session) waits for them to be settled."""

    async def ack(self, deliveries: Sequence[D], multiple_ok: bool = True) -> None: ...

    async def requeue(self, deliveries: Sequence[D]) -> None: ...


class DrainConsumer(Protocol[D]):
    """The dead-letter queue's deliveries, for the drain: a consumer it starts and stops itself."""

    def start(self, spawn: Spawn) -> object: ...

    async def batch(self, limit: int, stopping: asyncio.Event) -> Sequence[D]: ...

    async def ack(self, deliveries: Sequence[D], multiple_ok: bool = True) -> None: ...

    async def stop(self, timeout: float = 5.0) -> None: ...

    async def close(self, timeout: float = 5.0) -> None: ...


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: every condition given must hold."""

    ids: tuple[int, ...] | None = None
    reason: str | None = None
    source: str | None = None
    #: dead at or after
    since: datetime | None = None
    #: dead before
    until: datetime | None = None
    replayed: bool | None = None

    @property
    def empty(self) -> bool:
        return self == DeadLetterFilter()


@dataclass(frozen=True)
class DeadLetterRow:
    id: int
    dead_at: datetime
    source: str
    reason: str
    detail: str
    message_id: str | None
    message_type: str | None
    correlation_id: str | None
    exchange: str
    routing_key: str
    properties: dict[str, Any]
    body_size: int
    #: how many bytes of the body are stored (fewer than ``body_size`` when it was cut)
    body_stored: int
    replayed_at: datetime | None
    replayed_by: str | None
    #: the stored body; None in a list
    body: bytes | None = None

    @property
    def body_text(self) -> str | None:
        """The body as text when it is UTF-8, else None."""
        if self.body is None:
            return None
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @property
    def body_base64(self) -> str | None:
        return base64.b64encode(self.body).decode("ascii") if self.body is not None else None


@dataclass(frozen=True)
class SentCommand:
    """A command as a saga's journal says it was sent."""

    type: str
    payload: Any
    #: where it went when it was a message between sagas (orchestrator.core.children)
    route: str | None = None


@dataclass(frozen=True)
class DeadLetterPage:
    items: list[DeadLetterRow]
    next_cursor: str | None


class DeadLetterRepository(Protocol):
    """The dead-letter table as an operator works with it (``orchestrator dead-letters``,
    ``/dead-letters``)."""

    async def page(self, f: DeadLetterFilter, limit: int, cursor: str | None = None) -> DeadLetterPage:
        """A page of dead letters (without their bodies), newest first."""

    async def get(self, letter_id: int) -> DeadLetterRow | None: ...

    async def rows(
        self, f: DeadLetterFilter, limit: int, after: tuple[datetime, int] | None = None
    ) -> list[DeadLetterRow]:
        """Whole rows, bodies included, oldest first (the order a replay sends them in), from
        past ``after`` (a row's ``dead_at`` and ``id``): a page at a time."""

    async def count(self, f: DeadLetterFilter) -> int: ...

    async def purge(self, f: DeadLetterFilter) -> int:
        """Delete the rows ``f`` selects (an empty filter: all of them); how many there were."""

    async def claim(self, letter_id: int, actor: str, at: datetime, replayed_at: datetime | None) -> bool:
        """Mark the row replayed by ``actor`` at ``at`` if it is still as read (replayed at
        ``replayed_at``, None: never); whether it was, so that two replays send once."""

    async def unclaim(
        self, letter_id: int, at: datetime, replayed_at: datetime | None, replayed_by: str | None
    ) -> None:
        """Undo a claim made at ``at`` whose message the broker did not take."""

    async def sent_command(self, saga_id: str, message_id: str) -> SentCommand | None:
        """The command with that id in the saga's journal, or None (no such saga or command)."""


@dataclass(frozen=True)
class Survey:
    """Who holds what, as the database sees it now."""

    #: live replicas of this namespace, this one included
    replicas: int
    #: partitions some replica holds
    taken: frozenset[int]
    #: partitions this replica holds
    mine: frozenset[int]


class PartitionLocks(Protocol):
    """The port: locks that die with their holder."""

    async def open(self) -> None:
        """Connect, and count this replica among the live ones while the connection lives."""

    async def survey(self) -> Survey: ...

    async def take(self, partition: int) -> int | None:
        """Take the partition's lock if nobody holds it, and raise its epoch (once the batches
        its last owner is committing are done): the epoch taken, the fence this replica's
        batches of it commit under; None when someone holds it."""

    async def give_up(self, partition: int) -> None: ...

    async def close(self) -> None:
        """Release everything (closing the connection does)."""
