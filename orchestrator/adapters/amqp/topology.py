"""The broker's topology (docs/protocol.md, section 2), and the steps that bring an older one up to it.

Everyone declares what they use at start, so a declaration must match what exists: RabbitMQ
refuses another type or other arguments under the same name. A change of shape therefore cannot
be a new declaration alone. It is a named migration step here, run by ``orchestrator migrate``
with nothing consuming, and ``orchestrator run`` refuses to start while one is pending. Each step
is idempotent: it looks at what the broker has and does only what is left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage

from orchestrator.adapters.amqp.decoding import UndecodableProperties

__all__ = [
    "MIGRATIONS",
    "ORCHESTRATOR_DELIVERY_LIMIT",
    "Migration",
    "Topology",
    "TopologyError",
    "declare",
    "migrate_topology",
    "pending_migrations",
]

ORCHESTRATOR_DELIVERY_LIMIT = 5
"""How often the orchestrator's queue hands out one message before dead-lettering it.

Its deliveries return to the queue only when the orchestrator lost them unacked: it crashed, was
killed or lost its connection with the message in hand (it never requeues on purpose; a message it
cannot take is dead-lettered at once). A message that crashes the process every time would
otherwise crash every restart forever. 5 leaves room for a few unrelated crashes or restarts of a
healthy message in a backlog (each one counts) while still stopping a crash loop after 5 rounds;
the message then waits in ``{ns}.dead-letter`` with RabbitMQ's ``x-death`` reason
``delivery_limit``."""

#: messages taken from a queue being moved before their confirms are awaited and they are acked
MOVE_BATCH = 200
#: seconds any one broker operation of a migration may take before it gives up with an error
OPERATION_TIMEOUT = 60.0


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names, all under one namespace so tests and tenants stay apart."""

    namespace: str = "saga"

    @property
    def commands(self) -> str:
        return f"{self.namespace}.commands"

    @property
    def events(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def orchestrator_queue(self) -> str:
        """A new name: the classic queue it replaces cannot become a quorum queue under its own."""
        return f"{self.namespace}.orchestrator.events"

    @property
    def legacy_orchestrator_queue(self) -> str:
        """The classic queue of earlier versions; ``orchestrator migrate`` moves it and deletes it."""
        return f"{self.namespace}.orchestrator"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.dead-letter"

    def participant_queue(self, service: str) -> str:
        return f"{self.namespace}.{service}"

    @property
    def queue_arguments(self) -> dict[str, Any]:
        return {"x-dead-letter-exchange": self.dead}

    @property
    def orchestrator_queue_arguments(self) -> dict[str, Any]:
        """A quorum queue survives the loss of a broker node, and dead-letters a message that keeps
        coming back. RabbitMQ dead-letters at most once unless told otherwise, and on 3.10 it does
        at-least-once only with ``reject-publish`` overflow: without it, it falls back silently."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": ORCHESTRATOR_DELIVERY_LIMIT,
            "x-dead-letter-exchange": self.dead,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


async def declare(channel: AbstractChannel, topology: Topology, services: Iterable[str]) -> None:
    """Declare everything (idempotent). Participant queues too, so commands wait while a
    participant is down, or has never started."""
    events = await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, durable=True)
    commands = await channel.declare_exchange(topology.commands, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(topology.dead, aio_pika.ExchangeType.FANOUT, durable=True)
    dead_queue = await channel.declare_queue(topology.dead_letter_queue, durable=True)
    await dead_queue.bind(dead)
    queue = await channel.declare_queue(
        topology.orchestrator_queue, durable=True, arguments=topology.orchestrator_queue_arguments
    )
    await queue.bind(events, routing_key="#")
    for service in sorted(set(services)):
        participant = await channel.declare_queue(
            topology.participant_queue(service), durable=True, arguments=topology.queue_arguments
        )
        await participant.bind(commands, routing_key=f"{service}.#")


class TopologyError(Exception):
    """A migration step cannot go on; the message says why and what to do. Nothing is lost: a
    message is acked where it was only after its copy was confirmed where it goes."""


@dataclass(frozen=True)
class QueueState:
    messages: int
    consumers: int


async def queue_state(connection: AbstractConnection, name: str) -> QueueState | None:
    """What the broker says of a queue, None if there is none. A passive declare of a missing
    queue closes its channel, so it gets a channel of its own."""
    channel = await connection.channel()
    try:
        queue = await asyncio.wait_for(channel.declare_queue(name, passive=True), OPERATION_TIMEOUT)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    result = queue.declaration_result
    return QueueState(result.message_count or 0, result.consumer_count or 0)


@dataclass(frozen=True)
class Migration:
    """One change of the topology: ``pending`` says why it is still to do (None once done);
    ``apply`` does what is left of it and says what it did (nothing, when it was done already)."""

    name: str
    pending: Callable[[AbstractConnection, Topology], Awaitable[str | None]]
    apply: Callable[[AbstractConnection, Topology], Awaitable[list[str]]]


async def _legacy_queue_remains(connection: AbstractConnection, topology: Topology) -> str | None:
    state = await queue_state(connection, topology.legacy_orchestrator_queue)
    if state is None:
        return None
    return f"{topology.legacy_orchestrator_queue} still exists ({state.messages} messages)"


async def _quorum_orchestrator_queue(connection: AbstractConnection, topology: Topology) -> list[str]:
    """New events go to the quorum queue before the classic one stops getting them, so none is
    routed nowhere in between; one may reach both, and the orchestrator takes it once (it dedupes
    by ``message_id``). Then what the classic queue holds is moved over, and it is deleted."""
    legacy = topology.legacy_orchestrator_queue
    state = await queue_state(connection, legacy)
    if state is None:
        return []
    _refuse_consumers(legacy, state)
    channel = await connection.channel()
    try:
        events = await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(
            topology.orchestrator_queue, durable=True, arguments=topology.orchestrator_queue_arguments
        )
        await queue.bind(events, routing_key="#")
        old = await channel.get_queue(legacy, ensure=False)
        await old.unbind(events, routing_key="#")
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    done = [f"bound {topology.orchestrator_queue} to {topology.events} and unbound {legacy}"]
    moved = 0
    for _ in range(3):  # a publisher may still send straight to the old queue while it drains
        moved += await move_messages(connection, legacy, topology.orchestrator_queue)
        deleted = await _delete_if_drained(connection, legacy)
        state = None if deleted else await queue_state(connection, legacy)
        if state is None:
            done.append(f"moved {moved} messages from {legacy} to {topology.orchestrator_queue}")
            done.append(f"deleted {legacy}")
            return done
        _refuse_consumers(legacy, state)
    raise TopologyError(
        f"{legacy} kept getting messages while it was moved; run 'orchestrator migrate' again"
    )


def _refuse_consumers(name: str, state: QueueState) -> None:
    if state.consumers:
        raise TopologyError(f"stop the running orchestrator first: {name} has {state.consumers} consumers")


async def _delete_if_drained(connection: AbstractConnection, name: str) -> bool:
    """Delete the queue only if it is empty and unused: RabbitMQ checks both atomically, so a
    message that arrives late, or a consumer that starts late, keeps it (and closes the channel)."""
    channel = await connection.channel()
    try:
        await asyncio.wait_for(channel.queue_delete(name, if_unused=True, if_empty=True), OPERATION_TIMEOUT)
    except aio_pika.exceptions.ChannelPreconditionFailed:
        return False
    except aio_pika.exceptions.ChannelNotFoundEntity:
        pass
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return True


async def move_messages(connection: AbstractConnection, source: str, target: str) -> int:
    """Move every message of queue ``source`` to queue ``target``, through the default exchange,
    with its properties, headers and body as they were, plus ``x-original-exchange`` and
    ``x-original-routing-key`` (where it was first published to, for a dead letter's replay)
    unless it has them; the number moved.

    Straight on aiormq: aio-pika's message objects would rebuild the properties and lose any it
    does not model. A batch is taken with ``basic.get``, republished mandatory with confirms, and
    acked only once all its copies are confirmed; a failure midway leaves the batch in ``source``
    (some of it may then be in both queues, which the orchestrator's inbox takes once)."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    moved = 0
    try:
        raw = await channel.get_underlay_channel()
        while True:
            batch = await _take(raw, source, MOVE_BATCH)
            if not batch:
                return moved
            confirms = [asyncio.ensure_future(_republish(raw, message, target)) for message in batch]
            try:
                results = await asyncio.gather(*confirms)
            except BaseException:
                for confirm in confirms:
                    confirm.cancel()
                raise
            refused = [r for r in results if not isinstance(r, aiormq.spec.Basic.Ack)]
            if refused:
                raise TopologyError(f"{target} refused {len(refused)} of the messages moved from {source}")
            last = batch[-1].delivery_tag
            assert last is not None
            await raw.basic_ack(last, multiple=True)
            moved += len(batch)
    except aiormq.exceptions.InvalidFrameError as error:
        raise TopologyError(
            f"a message in {source} cannot be read by this client ({error}); it stays there:"
            f" move or delete it with another tool (e.g. the management UI), then migrate again"
            f" ({moved} messages were moved before it)"
        ) from None
    except aio_pika.exceptions.AMQPError as error:
        raise TopologyError(
            f"moving {source} to {target} stopped after {moved} messages: {error or type(error).__name__};"
            " the rest is still in place, run 'orchestrator migrate' again"
        ) from None
    except TimeoutError:
        raise TopologyError(
            f"moving {source} to {target} stopped after {moved} messages: the broker did not answer"
            f" in {OPERATION_TIMEOUT:.0f}s; the rest is still in place, run 'orchestrator migrate' again"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _take(raw: aiormq.abc.AbstractChannel, source: str, limit: int) -> list[DeliveredMessage]:
    batch: list[DeliveredMessage] = []
    while len(batch) < limit:
        message = await raw.basic_get(source, no_ack=False, timeout=OPERATION_TIMEOUT)
        if message.delivery_tag is None:  # basic.get-empty
            break
        batch.append(message)
    return batch


async def _republish(raw: aiormq.abc.AbstractChannel, message: DeliveredMessage, target: str) -> object:
    properties = message.header.properties
    if not isinstance(properties, UndecodableProperties):  # that one goes as its bytes came
        headers = dict(properties.headers or {})
        headers.setdefault("x-original-exchange", message.exchange or "")
        headers.setdefault("x-original-routing-key", message.routing_key or "")
        properties.headers = headers
    return await raw.basic_publish(
        message.body,
        exchange="",
        routing_key=target,
        properties=properties,
        mandatory=True,
        timeout=OPERATION_TIMEOUT,
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "classic orchestrator queue -> quorum queue", _legacy_queue_remains, _quorum_orchestrator_queue
    ),
)
"""In the order they apply; a step may count on those before it being done."""


async def pending_migrations(url: str, topology: Topology) -> list[str]:
    """Each step still to do, with why: what ``orchestrator run`` refuses to start with."""
    connection = await aio_pika.connect(url)  # not robust: a passive declare must ask the broker
    try:
        found = []
        for migration in MIGRATIONS:
            why = await migration.pending(connection, topology)
            if why is not None:
                found.append(f"{migration.name}: {why}")
        return found
    finally:
        await connection.close()


async def migrate_topology(url: str, topology: Topology, services: Iterable[str]) -> list[str]:
    """Every pending step in order, then the whole current topology declared; what was done, one
    line each (nothing when it was all done already)."""
    connection = await aio_pika.connect(url)  # not robust: a passive declare must ask the broker
    try:
        done = []
        for migration in MIGRATIONS:
            done += [f"{migration.name}: {line}" for line in await migration.apply(connection, topology)]
        channel = await connection.channel()
        await declare(channel, topology, services)
        await channel.close()
        return done
    except aio_pika.exceptions.AMQPError as error:  # e.g. a queue declared by hand with other arguments
        raise TopologyError(f"the broker refused: {error or type(error).__name__}") from None
    finally:
        await connection.close()
