"""Dead letters an operator can work with: the broker's drained into the table, and the table's
listed, shown, replayed and purged, by the CLI (``orchestrator dead-letters``) and the REST API
(``/dead-letters``) alike.

Everything the orchestrator refuses is recorded as a row in the transaction that acks it
(:mod:`orchestrator.service.batch`). What the broker dead-letters (a participant's rejected command, an
event past the orchestrator's queue's delivery limit) reaches ``{ns}.dead-letter``; the running
orchestrator drains that queue into the same table (:class:`DeadLetterDrain`), with the reason the
broker's ``x-death`` header gives and the exchange and routing key the message was first sent to,
so that a replay knows where to send it.

A replay publishes with the orchestrator's own credentials, so it sends only what this service
may provably send, never to a target read from the message (its headers are whoever published
it's to write): a command only if its saga's journal holds a command with that id, type and
payload, and then to ``{ns}.commands`` with its type as the routing key; anything else that does
not claim to be a command only to the orchestrator's own inbound path (``{ns}.events``, its type
as the routing key), where it meets every check any message meets, and if it is still bad it
gets a new row. A replay claims its row first (one transaction), then publishes: a double click
or two operators send once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Generic, Protocol

import orjson

from orchestrator.core.children import started_workflow
from orchestrator.core.children import target_of as route_target
from orchestrator.core.ingress import (
    DEFAULT_LIMITS,
    DeadLetter,
    Envelope,
    Limits,
    Reason,
    Refused,
    clip,
    dead_letter_of,
    printable,
)
from orchestrator.service.counts import Counts
from orchestrator.service.ports import (
    D,
    DeadLetterFilter,
    DeadLetterPage,
    DeadLetterRepository,
    DeadLetterRow,
    DrainConsumer,
    SentCommand,
    Unpublishable,
)
from orchestrator.supervision import Spawn, bounded, unsupervised

__all__ = [
    "SOURCES",
    "DeadLetterDrain",
    "DeadLetterFilter",
    "DeadLetterPage",
    "DeadLetterRepository",
    "DeadLetterRow",
    "Death",
    "NotReplayable",
    "Publish",
    "ReplayOutcome",
    "ReplayRoutes",
    "Replayed",
    "Target",
    "broker_dead_letter",
    "death_of",
    "pages",
    "replay",
    "replay_target",
    "republished",
    "target_of",
    "why_not_replayable",
]

log = logging.getLogger("orchestrator.service.dead_letters")

#: who set a dead letter aside: the orchestrator refused it, or the broker dead-lettered it
SOURCES = ("orchestrator", "broker")

# The broker's side --------------------------------------------------------------------------------
#: RabbitMQ's x-death reasons, and the reason codes they are recorded as
_BROKER_REASONS = {
    "rejected": Reason.REJECTED,
    "expired": Reason.EXPIRED,
    "maxlen": Reason.MAXLEN,
    "delivery_limit": Reason.DELIVERY_LIMIT,
}


@dataclass(frozen=True)
class Death:
    """Why and where the broker dead-lettered a message, from its ``x-death`` header."""

    reason: Reason
    detail: str
    #: where the message was first sent (None: the header does not say)
    exchange: str | None = None
    routing_key: str | None = None


def _text(value: object) -> str:
    return clip(printable(value), 300)


def death_of(headers: object) -> Death:
    """The reason, a detail, and the original exchange and routing key, from a delivery's headers.

    RabbitMQ puts the latest death first in ``x-death``: ``reason`` (``rejected``, ``expired``,
    ``maxlen``, ``delivery_limit``), the ``queue`` it died in, ``count`` (how many times it died
    there for that reason), and the ``exchange`` and ``routing-keys`` it was published with.
    Anything else, or no ``x-death`` at all (someone published to ``{ns}.dead`` by hand, or an
    earlier orchestrator republished it there), is :attr:`Reason.UNKNOWN`. Never raises."""
    try:
        return _death_of(headers)
    except Exception as error:  # a header of a shape no one foresaw: still recorded
        return Death(Reason.UNKNOWN, f"the x-death header cannot be read: {type(error).__name__}")


def _death_of(headers: object) -> Death:
    if not isinstance(headers, Mapping):
        headers = {}
    deaths = headers.get("x-death")
    first = deaths[0] if isinstance(deaths, list | tuple) and deaths else None
    if not isinstance(first, Mapping) and headers.get("x-participant-reason") is not None:
        # A participant kit's dead letter (orchestrator.participant): published with its reason,
        # which a plain reject would have lost (docs/protocol.md section 9).
        who = _text(headers.get("x-participant") or "?")
        exchange, routing_key = headers.get("x-original-exchange"), headers.get("x-original-routing-key")
        return Death(
            Reason.REJECTED,
            f"rejected by participant {who}: {_text(headers['x-participant-reason'])}",
            _text(exchange) if exchange is not None else None,
            _text(routing_key) if routing_key is not None else None,
        )
    if not isinstance(first, Mapping):
        detail = "no x-death header: it was published to the dead-letter exchange, not dead-lettered"
        legacy = headers.get("x-death-reason")  # what earlier orchestrators republished with
        if legacy is not None:
            detail += f"; x-death-reason: {_text(legacy)}"
        exchange, routing_key = headers.get("x-original-exchange"), headers.get("x-original-routing-key")
        return Death(
            Reason.UNKNOWN,
            detail,
            _text(exchange) if exchange is not None else None,
            _text(routing_key) if routing_key is not None else None,
        )
    raw = first.get("reason")
    raw_reason = printable(raw) if raw is not None else ""
    reason = _BROKER_REASONS.get(raw_reason, Reason.UNKNOWN)
    queue = _text(first.get("queue") or "?")
    count = first.get("count")
    times = f"{count} time{'' if count == 1 else 's'}" if isinstance(count, int) else "? times"
    said = raw_reason if reason is not Reason.UNKNOWN else f"x-death reason {clip(raw_reason, 100)!r}"
    detail = f"{said} in queue {queue}, {times}"
    exchange = first.get("exchange")
    keys = first.get("routing-keys")
    routing_key = keys[0] if isinstance(keys, list | tuple) and keys else None
    if not exchange and headers.get("x-original-exchange"):  # moved into its queue by migrate
        exchange, routing_key = headers["x-original-exchange"], headers.get("x-original-routing-key")
    return Death(
        reason,
        detail,
        _text(exchange) if exchange is not None else None,
        _text(routing_key) if routing_key is not None else None,
    )


def broker_dead_letter(envelope: Envelope, limits: Limits = DEFAULT_LIMITS) -> DeadLetter:
    """The record of a message taken from ``{ns}.dead-letter``. Never raises."""
    headers = envelope.properties.get("headers") if isinstance(envelope.properties, Mapping) else None
    death = death_of(headers)
    detail = death.detail
    if envelope.refused is not None:  # worth knowing before a replay: it would be refused here
        detail += f"; it also breaks a rule here: {envelope.refused}"
    letter = dead_letter_of(envelope, Refused(death.reason, detail), source="broker", limits=limits)
    return replace(
        letter,
        exchange=death.exchange if death.exchange is not None else letter.exchange,
        routing_key=death.routing_key if death.routing_key is not None else letter.routing_key,
    )


class Record(Protocol):
    """Records dead letters; ``bare``: tried until they are."""

    def __call__(self, letters: list[DeadLetter], *, bare: bool = False) -> Awaitable[bool]: ...


class DeadLetterDrain(Generic[D]):
    """Drains ``{ns}.dead-letter`` into the dead-letter table, over a consumer of its own.

    Deliveries are recorded a batch per transaction (by the bus, :meth:`~orchestrator.service.bus.
    MessageBus.record_dead_letters`) and acked only after it commits; while the database is away
    the batch waits, unacked, and is tried again with backoff: nothing is dropped.
    """

    def __init__(
        self,
        consumer: DrainConsumer[D],
        record: Record,
        counts: Counts,
        limits: Limits = DEFAULT_LIMITS,
        batch_size: int = 32,
    ) -> None:
        self.consumer = consumer
        #: the bus's :meth:`~orchestrator.service.bus.MessageBus.record_dead_letters`
        self._save = record
        self.metrics = counts
        self.limits = limits
        self.batch_size = batch_size
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, spawn: Spawn = unsupervised) -> None:
        self.consumer.start(spawn)
        self._task = spawn("dead-letter-drain", self._work)

    async def stop_taking(self, timeout: float) -> None:
        """Take no more dead letters (the stop's first step, with the broker or without)."""
        self._stopping.set()
        await self.consumer.stop(timeout)

    async def stop(self, timeout: float) -> None:
        """Stop taking messages, finish the batch in hand (up to ``timeout``), close."""
        await self.stop_taking(min(timeout, 5.0))
        if self._task is not None and not await bounded(
            "recording the dead letters in hand", asyncio.shield(self._task), timeout
        ):
            self._task.cancel()  # they stay in the queue, unacked
            await asyncio.wait({self._task}, timeout=1.0)
        await self.consumer.close(min(timeout, 5.0))

    async def _work(self) -> None:
        while batch := await self.consumer.batch(self.batch_size, self._stopping):
            await self.record(batch)

    async def record(self, batch: Sequence[D]) -> None:
        """Record a batch in one transaction, then ack it. Should the database refuse the batch
        (not be away: a value it cannot store), each is recorded alone, and one it still refuses
        is recorded bare (without its body and properties, saying so): nothing is dropped."""
        letters = [broker_dead_letter(d.envelope, self.limits) for d in batch]
        if await self._save(letters):
            self._recorded(letters)
            await self.consumer.ack(batch)
            return
        for delivery, letter in zip(batch, letters, strict=True):
            if not await self._save([letter]):
                letter = _bare(letter)
                await self._save([letter], bare=True)  # tried until the database takes it
            self._recorded([letter])
            await self.consumer.ack([delivery], multiple_ok=False)

    def _recorded(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            self.metrics.dead_lettered[letter.reason] += 1
            log.warning(
                "dead letter from the broker: message %s (type %s) sent to %s with %s: %s: %s",
                letter.message_id,
                letter.message_type,
                letter.exchange or '""',
                letter.routing_key or '""',
                letter.reason,
                letter.detail,
                extra={"saga_id": letter.correlation_id, "message_id": letter.message_id},
            )


def _bare(letter: DeadLetter) -> DeadLetter:
    return replace(
        letter,
        detail=clip(letter.detail + "; its body and properties could not be stored", 600),
        properties={"undecodable": "not stored"},
        body=b"",
    )


# Replay -------------------------------------------------------------------------------------------
class NotReplayable(Exception):
    """This dead letter cannot be replayed as it is stored; the message says why."""


#: publishes a body with properties to an exchange with a routing key: persistent, mandatory,
#: confirmed (the broker adapter's ``Republisher.publish``); raises
#: :class:`~orchestrator.service.ports.Unpublishable`
Publish = Callable[[str, str, bytes, Mapping[str, Any]], Awaitable[None]]

#: headers a replay leaves out: ours (``x-original-*``, and ``x-death-reason`` of earlier
#: versions) and the broker's bookkeeping of earlier deaths and deliveries
_DROPPED_HEADERS = ("x-death", "x-death-reason", "x-delivery-count", "x-participant", "x-participant-reason")
_DROPPED_PREFIXES = ("x-original-", "x-first-death-", "x-last-death-")


def why_not_replayable(row: DeadLetterRow, again: bool = False) -> str | None:
    """Why ``row`` cannot be replayed, or None when it can."""
    if row.body is not None and row.body_size > len(row.body):
        return f"its body was cut: {len(row.body)} of {row.body_size} bytes are stored"
    if row.body is None and row.body_size > row.body_stored:
        return f"its body was cut: {row.body_stored} of {row.body_size} bytes are stored"
    if "undecodable" in row.properties:
        return "its properties could not be decoded when it came; they are not stored"
    headers = row.properties.get("headers")
    if "…" in row.properties or (isinstance(headers, Mapping) and "…" in headers):
        return "its headers were too large and were cut"
    if not row.message_id:
        return "it has no message_id: the broker could not say whether it was routed"
    if row.replayed_at is not None and not again:
        when = row.replayed_at.isoformat(timespec="seconds")
        return f"it was replayed already, at {when} by {row.replayed_by}; replay it again explicitly"
    return None


@dataclass(frozen=True)
class ReplayRoutes:
    """Where this service may send what it replays."""

    #: ``{ns}.commands``: a proven command goes there, with its type as the routing key
    commands: str
    #: ``{ns}.events``: the orchestrator's inbound path
    events: str
    #: the types the loaded workflows send as commands: a dead letter of one of them must be
    #: proven by a journal, whatever exchange it says it was sent to
    command_types: frozenset[str] = frozenset()
    #: the orchestrator's own queue, where a proven message between sagas goes (default exchange)
    orchestrator_queue: str = ""


@dataclass(frozen=True)
class Target:
    exchange: str
    routing_key: str
    #: command (proven by its saga's journal) or inbound
    kind: str


def _json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NOT_JSON


_NOT_JSON = object()


async def target_of(
    row: DeadLetterRow, routes: ReplayRoutes, sent: Callable[[str, str], Awaitable[SentCommand | None]]
) -> Target | str:
    """Where a replay of ``row`` goes, or why it goes nowhere. What the row says of where it was
    sent (its headers, its ``x-death``) only tells whether it claims to be a command: anyone who
    may publish to ``{ns}.dead`` writes those."""
    kind = row.message_type
    headers = row.properties.get("headers")
    headers = headers if isinstance(headers, Mapping) else {}
    if (kind or "").startswith("saga.") or "x-parent-saga" in headers:
        return await _between_sagas(row, routes, headers, sent)
    claims_command = row.exchange == routes.commands or (kind is not None and kind in routes.command_types)
    if not claims_command:
        if not kind:
            return "it has no type: the orchestrator would refuse it again"
        return Target(routes.events, kind, "inbound")
    said = f"command {kind or '(no type)'} {row.message_id}"
    if not row.correlation_id or not row.message_id:
        return "it claims to be a command but names no saga (correlation_id) to prove it by"
    command = await sent(row.correlation_id, row.message_id)
    if command is None:
        return (
            f"it claims to be {said} of saga {row.correlation_id}, which sent no command with that id"
            " (or is archived): only a command a saga sent is replayed"
        )
    if command.type != kind:
        return f"it claims to be {said}, but saga {row.correlation_id} sent that id as {command.type}"
    if row.body is None or _json(row.body) != command.payload:
        return f"its body is not the payload saga {row.correlation_id} sent as {said}"
    return Target(routes.commands, command.type, "command")


async def _between_sagas(
    row: DeadLetterRow,
    routes: ReplayRoutes,
    headers: Mapping[str, Any],
    sent: Callable[[str, str], Awaitable[SentCommand | None]],
) -> Target | str:
    """A message between sagas (a child's start, outcome or cancel) is replayed into the
    orchestrator's own queue only as the saga that sent it journaled it: type, body and where it
    went (the parent a start names, the saga an outcome or cancel is for)."""
    sender = headers.get("x-saga-id")
    said = f"message between sagas {row.message_type or '(no type)'} {row.message_id}"
    if not isinstance(sender, str) or not row.message_id or not routes.orchestrator_queue:
        return f"it claims to be a {said} but names no saga (x-saga-id) that sent it"
    command = await sent(sender, row.message_id)
    if command is None or command.route is None or command.type != row.message_type:
        return f"it claims to be a {said} of saga {sender}, which sent no such message (or is archived)"
    if row.body is None or _json(row.body) != command.payload:
        return f"its body is not the payload saga {sender} sent as {said}"
    kind, target = route_target(command.route)
    if kind == "start" and headers.get("x-parent-saga") != sender:
        return f"its x-parent-saga is not saga {sender}, which sent it"
    if kind == "start" and (
        headers.get("x-workflow"),
        headers.get("x-schema-version", 1),
    ) != started_workflow(target):
        return f"its x-workflow or x-schema-version is not what saga {sender} sent it with ({target})"
    if kind == "saga" and row.correlation_id != target:
        return f"its correlation_id is not saga {target}, which saga {sender} sent it to"
    return Target("", routes.orchestrator_queue, "internal")


async def replay_target(
    row: DeadLetterRow, routes: ReplayRoutes, table: DeadLetterRepository, again: bool = False
) -> Target | str:
    """Where ``row`` would be replayed now, or why it cannot be: what it holds first
    (:func:`why_not_replayable`), then what it may be sent as (:func:`target_of`)."""
    why = why_not_replayable(row, again)
    return why if why is not None else await target_of(row, routes, table.sent_command)


def republished(row: DeadLetterRow) -> dict[str, Any]:
    """The properties a replay sends (as aiormq names them): what identifies and describes the
    message, and its headers without those of its earlier deaths."""
    properties = row.properties
    headers = properties.get("headers")
    kept = (
        {
            key: value
            for key, value in headers.items()
            if key not in _DROPPED_HEADERS and not key.startswith(_DROPPED_PREFIXES)
        }
        if isinstance(headers, Mapping)
        else {}
    )
    out: dict[str, Any] = {"delivery_mode": 2, "headers": kept}
    for stored, sent in (
        ("type", "message_type"),
        ("message_id", "message_id"),
        ("correlation_id", "correlation_id"),
        ("content_type", "content_type"),
    ):
        value = properties.get(stored)
        if isinstance(value, str) and value:
            out[sent] = value
    return out


@dataclass(frozen=True)
class Replayed:
    id: int
    reason: str
    target: Target


@dataclass
class ReplayOutcome:
    replayed: list[Replayed]
    #: (id, why not) for each that was not replayed
    refused: list[tuple[int, str]]
    #: the broker could not be reached: the rest were not tried
    unavailable: bool = False


#: rows a replay holds at once: each may carry a body of up to max_message_bytes
PAGE = 16


async def pages(
    table: DeadLetterRepository, selected: DeadLetterFilter, limit: int, page: int = PAGE
) -> AsyncIterator[DeadLetterRow]:
    """The rows ``selected`` picks, oldest first, ``page`` at a time: a bulk replay of thousands
    holds a page of bodies, not all of them."""
    after: tuple[datetime, int] | None = None
    left = limit
    while left > 0:
        rows = await table.rows(selected, min(page, left), after)
        for row in rows:
            yield row
        if len(rows) < min(page, left):
            return
        left -= len(rows)
        after = (rows[-1].dead_at, rows[-1].id)


async def _each(rows: Iterable[DeadLetterRow] | AsyncIterator[DeadLetterRow]) -> AsyncIterator[DeadLetterRow]:
    if isinstance(rows, AsyncIterator):
        async for row in rows:
            yield row
    else:
        for row in rows:
            yield row


async def replay(
    table: DeadLetterRepository,
    rows: Iterable[DeadLetterRow] | AsyncIterator[DeadLetterRow],
    publish: Publish,
    actor: str,
    routes: ReplayRoutes,
    again: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReplayOutcome:
    """Replay each row (oldest first): find where it may go (:func:`target_of`), claim it for
    ``actor``, publish it, and undo the claim if the broker refused it. A row that cannot be
    replayed, or that someone else claimed meanwhile, is reported and the next one is tried; with
    the broker away the rest are reported as not tried."""
    outcome = ReplayOutcome([], [])
    async for row in _each(rows):
        if outcome.unavailable:
            outcome.refused.append((row.id, "not tried: the broker is unavailable"))
            continue
        target = await replay_target(row, routes, table, again)
        if isinstance(target, str):
            outcome.refused.append((row.id, target))
            continue
        assert row.body is not None
        at = now()
        if not await table.claim(row.id, actor, at, row.replayed_at):
            outcome.refused.append((row.id, "it was replayed meanwhile, by another request"))
            continue
        try:
            await publish(target.exchange, target.routing_key, row.body, republished(row))
        except Unpublishable as error:
            if error.maybe_sent:  # the broker may have it: kept as replayed, never sent twice
                outcome.refused.append((row.id, f"{error}; it may have been sent, and stays marked replayed"))
            else:
                await table.unclaim(row.id, at, row.replayed_at, row.replayed_by)
                outcome.refused.append((row.id, str(error)))
            outcome.unavailable = error.unavailable
            continue
        outcome.replayed.append(Replayed(row.id, row.reason, target))
        log.info(
            "%s replayed dead letter %d (%s) as %s to %s with %s",
            actor,
            row.id,
            row.reason,
            target.kind,
            target.exchange,
            target.routing_key,
            extra={"message_id": row.message_id, "actor": actor},
        )
    return outcome
