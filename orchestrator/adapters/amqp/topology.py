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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage

from orchestrator.adapters.amqp import nodes
from orchestrator.adapters.amqp.decoding import UndecodableProperties

# QUEUE_TYPES is the settings' (the values of ORCHESTRATOR_QUEUE_TYPE), named here as well because
# the queue type is this module's to declare
from orchestrator.settings import DEFAULT_NAMESPACE, DEFAULT_QUEUE_TYPE, QUEUE_TYPES

__all__ = [
    "MIGRATIONS",
    "ORCHESTRATOR_DELIVERY_LIMIT",
    "PARTICIPANT_DELIVERY_LIMIT",
    "QUEUE_TYPES",
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

#: each partition queue's weight in the consistent-hash ring: all alike
PARTITION_WEIGHT = "1"
PARTICIPANT_DELIVERY_LIMIT = 20
"""How often a quorum participant queue hands out one command before dead-lettering it.

Higher than the orchestrator's: a participant's own shutdown requeues the commands it holds
(docs/protocol.md, section 10), and a participant in another language may requeue on purpose to
try later; each such round counts. 20 is what RabbitMQ 4 sets on every quorum queue when none is
given, so a participant queue behaves the same on 3.10 and on 4; it still stops a command that
crashes its participant from doing so forever. A command dead-lettered this way is a
``delivery_limit`` row of the dead-letter table: its saga's timeout resends it, or an operator
replays it."""

#: messages taken from a queue being moved before their confirms are awaited and they are acked
MOVE_BATCH = 200
#: the most partition queues ``orchestrator migrate`` looks for (the setting allows 256)
MAX_PARTITION_PROBE = 1024
#: seconds any one broker operation of a migration may take before it gives up with an error
OPERATION_TIMEOUT = 60.0


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names, all under one namespace so tests and tenants stay apart."""

    namespace: str = DEFAULT_NAMESPACE
    _: KW_ONLY
    #: partition queues for correlated messages (docs/scaling.md); 1: one queue takes everything
    partitions: int = 1
    #: of the participant queues and ``{ns}.dead-letter``, one of QUEUE_TYPES (the orchestrator's
    #: own queue is a quorum queue whatever this says)
    queue_type: str = DEFAULT_QUEUE_TYPE

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:  # another would declare classic queues unasked
            raise ValueError(f"queue type must be one of {', '.join(QUEUE_TYPES)}, not {self.queue_type!r}")

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
    def by_saga(self) -> str:
        """The consistent-hash exchange that spreads correlated messages over the partitions by
        their ``correlation_id`` (plugin ``rabbitmq_consistent_hash_exchange``)."""
        return f"{self.namespace}.orchestrator.by-saga"

    @property
    def route(self) -> str:
        """Where ``{ns}.events`` sends everything once partitioned: start events, by type, to the
        orchestrator queue that any replica takes from; the rest, through its alternate exchange,
        to :attr:`by_saga`. A topic exchange has no "else" binding; an alternate exchange is one."""
        return f"{self.namespace}.orchestrator.route"

    def partition_queue(self, partition: int) -> str:
        return f"{self.namespace}.orchestrator.p{partition}"

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
        """Of a participant queue: every party declares it with exactly these, or RabbitMQ refuses
        the second one. The quorum ones dead-letter as the orchestrator's queue does (at least
        once, hence ``reject-publish``), with a higher delivery limit (PARTICIPANT_DELIVERY_LIMIT)."""
        if self.queue_type == "quorum":
            return {
                "x-queue-type": "quorum",
                "x-delivery-limit": PARTICIPANT_DELIVERY_LIMIT,
                "x-dead-letter-exchange": self.dead,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        return {"x-dead-letter-exchange": self.dead}

    @property
    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        """Of ``{ns}.dead-letter``: it is the end of the line, so no delivery limit and no
        dead-lettering of its own; a limit would drop a dead letter the orchestrator's drain lost
        with its connection a few times (it holds them until PostgreSQL commits their rows)."""
        if self.queue_type == "quorum":
            return {"x-queue-type": "quorum"}
        return {}

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


async def declare(
    channel: AbstractChannel,
    topology: Topology,
    services: Iterable[str],
    start_types: Iterable[str] = (),
) -> None:
    """Declare everything (idempotent). Participant queues too, so commands wait while a
    participant is down, or has never started. ``start_types``: the event types that start a
    saga, which a partitioned topology routes to the queue every replica takes from."""
    events = await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, durable=True)
    commands = await channel.declare_exchange(topology.commands, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(topology.dead, aio_pika.ExchangeType.FANOUT, durable=True)
    dead_queue = await channel.declare_queue(
        topology.dead_letter_queue, durable=True, arguments=topology.dead_letter_queue_arguments
    )
    await dead_queue.bind(dead)
    queue = await channel.declare_queue(
        topology.orchestrator_queue, durable=True, arguments=topology.orchestrator_queue_arguments
    )
    if topology.partitions == 1:
        await queue.bind(events, routing_key="#")
    else:
        await declare_partitions(channel, topology, start_types)
    for service in sorted(set(services)):
        participant = await channel.declare_queue(
            topology.participant_queue(service), durable=True, arguments=topology.queue_arguments
        )
        await participant.bind(commands, routing_key=f"{service}.#")


async def declare_partitions(
    channel: AbstractChannel, topology: Topology, start_types: Iterable[str]
) -> None:
    """The partitioned path: ``{ns}.events`` -> :attr:`Topology.route` -> start types to the
    orchestrator queue, the rest (alternate exchange) -> :attr:`Topology.by_saga` -> one of the
    partition queues by ``correlation_id``. Each partition is bound before ``{ns}.events`` feeds
    the path, so nothing is routed into an empty ring; the queue of the highest partition is
    declared last, as ``orchestrator migrate`` counts the partitions by their queues. A message
    without a correlation id that is no start event hashes to one fixed partition."""
    events = await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, durable=True)
    by_saga = await declare_ring(channel, topology)
    route = await channel.declare_exchange(
        topology.route,
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": topology.by_saga},
    )
    for partition in range(topology.partitions):
        queue = await channel.declare_queue(
            topology.partition_queue(partition), durable=True, arguments=topology.orchestrator_queue_arguments
        )
        await queue.bind(by_saga, routing_key=PARTITION_WEIGHT)
    starts = await channel.get_queue(topology.orchestrator_queue, ensure=False)
    for start_type in sorted(set(start_types)):
        await starts.bind(route, routing_key=start_type)
    await route.bind(events, routing_key="#")
    await starts.unbind(events, routing_key="#")  # the single queue's binding, if it is still there


async def declare_ring(channel: AbstractChannel, topology: Topology) -> aio_pika.abc.AbstractExchange:
    """The consistent-hash exchange, or :class:`TopologyError` if the broker has no such type."""
    try:
        return await channel.declare_exchange(
            topology.by_saga, "x-consistent-hash", durable=True, arguments={"hash-property": "correlation_id"}
        )
    except aio_pika.exceptions.AMQPError as error:  # COMMAND_INVALID closes the connection
        if "exchange type" not in str(error).lower():
            raise
        raise TopologyError(
            f"ORCHESTRATOR_PARTITIONS={topology.partitions} needs RabbitMQ's consistent-hash exchange:"
            " run 'rabbitmq-plugins enable rabbitmq_consistent_hash_exchange' on every node"
        ) from None


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
    ``apply`` does what is left of it and says what it did (nothing, when it was done already).
    Both get the services whose queues the orchestrator declares."""

    name: str
    pending: Callable[[AbstractConnection, Topology, Sequence[str]], Awaitable[str | None]]
    apply: Callable[[AbstractConnection, Topology, Sequence[str]], Awaitable[list[str]]]


async def _legacy_queue_remains(
    connection: AbstractConnection, topology: Topology, services: Sequence[str] = ()
) -> str | None:
    state = await queue_state(connection, topology.legacy_orchestrator_queue)
    if state is None:
        return None
    return f"{topology.legacy_orchestrator_queue} still exists ({state.messages} messages)"


async def _quorum_orchestrator_queue(
    connection: AbstractConnection, topology: Topology, services: Sequence[str] = ()
) -> list[str]:
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
        moved += await move_messages(connection, legacy, topology.orchestrator_queue, inbound=True)
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


async def _delete_if_drained(connection: AbstractConnection, name: str, *, classic: bool = True) -> bool:
    """Delete the queue only if it is empty and unused: RabbitMQ checks both atomically, so a
    message that arrives late, or a consumer that starts late, keeps it (and closes the channel).
    A quorum queue refuses both conditions (NOT_IMPLEMENTED, closing the whole connection), so one
    is deleted outright once found empty and unused a moment before: only a queue already unbound
    from its exchange, which nothing routes to any more (a holding queue, or the old queue of a
    migration back to classic), is deleted so."""
    if not classic:
        state = await queue_state(connection, name)
        if state is not None and (state.messages or state.consumers):
            return False
    channel = await connection.channel()
    try:
        conditions = {"if_unused": True, "if_empty": True} if classic else {}
        await asyncio.wait_for(channel.queue_delete(name, **conditions), OPERATION_TIMEOUT)
    except aio_pika.exceptions.ChannelPreconditionFailed:
        return False
    except aio_pika.exceptions.ChannelNotFoundEntity:
        pass
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return True


async def move_messages(
    connection: AbstractConnection, source: str, target: str, *, inbound: bool = False
) -> int:
    """Move every message of queue ``source`` to queue ``target``, through the default exchange,
    with its properties, headers and body as they were, plus ``x-original-exchange`` and
    ``x-original-routing-key`` (where it was first published to, for a dead letter's replay)
    unless it has them; the number moved. ``inbound``: the orchestrator's own queue, where an
    empty ``x-original-exchange`` means its own publish: one a publisher wrote on a message that
    came through an exchange is overwritten with that exchange.

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
            confirms = [asyncio.ensure_future(_republish(raw, message, target, inbound)) for message in batch]
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


async def _republish(
    raw: aiormq.abc.AbstractChannel, message: DeliveredMessage, target: str, inbound: bool
) -> object:
    properties = message.header.properties
    if not isinstance(properties, UndecodableProperties):  # that one goes as its bytes came
        headers = dict(properties.headers or {})
        if inbound and message.exchange:  # came through an exchange: its first routing, whatever it says
            headers["x-original-exchange"] = message.exchange
            headers["x-original-routing-key"] = message.routing_key or ""
        else:  # moved before, by us, or a dead letter (x-death and these say where it came from)
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


async def _partition_count(connection: AbstractConnection, topology: Topology) -> int:
    """How many partition queues the broker has: they are numbered from 0 without a gap, and the
    highest is declared last."""
    count = 0
    while count < MAX_PARTITION_PROBE and await queue_state(connection, topology.partition_queue(count)):
        count += 1
    return count


def _wanted(topology: Topology) -> int:
    return topology.partitions if topology.partitions > 1 else 0


async def _partitions_differ(
    connection: AbstractConnection, topology: Topology, services: Sequence[str] = ()
) -> str | None:
    found = await _partition_count(connection, topology)
    if found == _wanted(topology):
        return None
    if not found and await queue_state(connection, topology.orchestrator_queue) is None:
        return None  # a new install: ``run`` declares the partitions as it declares the rest
    has = f"{found} partition queues" if found else f"one queue, {topology.orchestrator_queue}"
    return f"ORCHESTRATOR_PARTITIONS is {topology.partitions} and the broker has {has}"


async def _repartition(
    connection: AbstractConnection, topology: Topology, services: Sequence[str] = ()
) -> list[str]:
    """Fewer partitions (or one queue again): the partitions to go are unbound from the ring, so
    nothing new reaches them, their messages moved to the orchestrator queue that every replica
    takes from, and they are deleted once drained. More partitions: nothing to do here, the
    declaration that follows adds them; the ring then sends some sagas' messages to a new queue
    while older ones wait in the old one, which row locks make harmless."""
    found, wanted = await _partition_count(connection, topology), _wanted(topology)
    if found == wanted:
        return []
    for name in [topology.orchestrator_queue, *map(topology.partition_queue, range(found))]:
        state = await queue_state(connection, name)
        if state is not None:
            _refuse_consumers(name, state)
    if found < wanted:
        return []
    done: list[str] = []
    channel = await connection.channel()
    try:
        events = await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, durable=True)
        starts = await channel.declare_queue(
            topology.orchestrator_queue, durable=True, arguments=topology.orchestrator_queue_arguments
        )
        if not wanted:  # the single queue takes everything again before the path is cut
            await starts.bind(events, routing_key="#")
            route = await channel.get_exchange(topology.route, ensure=False)
            await route.unbind(events, routing_key="#")
            done.append(f"bound {topology.orchestrator_queue} to {topology.events} for every message")
        by_saga = await channel.get_exchange(topology.by_saga, ensure=False)
        for partition in range(wanted, found):
            queue = await channel.get_queue(topology.partition_queue(partition), ensure=False)
            await queue.unbind(by_saga, routing_key=PARTITION_WEIGHT)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    for partition in reversed(range(wanted, found)):  # the highest first: the count stays true
        name = topology.partition_queue(partition)
        moved = await _drain_into(connection, name, topology.orchestrator_queue, classic=False, inbound=True)
        done.append(f"moved {moved} messages from {name} to {topology.orchestrator_queue} and deleted it")
    if not wanted:
        channel = await connection.channel()
        try:
            await channel.exchange_delete(topology.route)
            await channel.exchange_delete(topology.by_saga)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        done.append(f"deleted {topology.route} and {topology.by_saga}")
    return done


# -- participant queues and {ns}.dead-letter: ORCHESTRATOR_QUEUE_TYPE --------------------------


@dataclass(frozen=True)
class _Typed:
    """A queue whose arguments follow ``ORCHESTRATOR_QUEUE_TYPE``, and its one binding."""

    name: str
    arguments: dict[str, Any]
    exchange: str
    exchange_type: aio_pika.ExchangeType
    routing_key: str

    @property
    def holding(self) -> str:
        """Where its messages wait while it is rebuilt under its own name."""
        return f"{self.name}.migrating"


def _typed_queues(topology: Topology, services: Sequence[str]) -> list[_Typed]:
    topic, fanout = aio_pika.ExchangeType.TOPIC, aio_pika.ExchangeType.FANOUT
    found = [
        _Typed(topology.participant_queue(s), topology.queue_arguments, topology.commands, topic, f"{s}.#")
        for s in sorted(set(services))
    ]
    found.append(
        _Typed(topology.dead_letter_queue, topology.dead_letter_queue_arguments, topology.dead, fanout, "")
    )
    return found


async def _declares_as(connection: AbstractConnection, name: str, arguments: dict[str, Any]) -> bool:
    """Whether the queue, which exists, has these arguments: RabbitMQ says so only by refusing a
    declaration with others (and closing its channel, hence one of its own)."""
    channel = await connection.channel()
    try:
        await asyncio.wait_for(
            channel.declare_queue(name, durable=True, arguments=arguments), OPERATION_TIMEOUT
        )
    except aio_pika.exceptions.ChannelPreconditionFailed:
        return False
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return True


async def _queue_type_differs(
    connection: AbstractConnection, topology: Topology, services: Sequence[str]
) -> str | None:
    why = []
    for queue in _typed_queues(topology, services):
        if await queue_state(connection, queue.holding) is not None:
            why.append(f"{queue.holding} still exists (an interrupted migration)")
        elif await queue_state(connection, queue.name) is not None and not await _declares_as(
            connection, queue.name, queue.arguments
        ):
            why.append(f"{queue.name} is not a {topology.queue_type} queue with this version's arguments")
    return "; ".join(why) or None


async def _rebind(
    connection: AbstractConnection, queue: _Typed, target: str, arguments: dict[str, Any], source: str
) -> None:
    """Declare ``target``, bind it, then unbind ``source``: a message published meanwhile is
    routed to one of them, or both, never to neither."""
    channel = await connection.channel()
    try:
        exchange = await channel.declare_exchange(queue.exchange, queue.exchange_type, durable=True)
        declared = await channel.declare_queue(target, durable=True, arguments=arguments)
        await declared.bind(exchange, routing_key=queue.routing_key)
        old = await channel.get_queue(source, ensure=False)
        await old.unbind(exchange, routing_key=queue.routing_key)
        if queue.exchange_type == aio_pika.ExchangeType.FANOUT:  # aio-pika's default key: the name
            await old.unbind(exchange, routing_key=source)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _drain_into(
    connection: AbstractConnection, source: str, target: str, *, classic: bool, inbound: bool = False
) -> int:
    """Move ``source`` into ``target`` and delete it once empty and unused; the number moved."""
    moved = 0
    for attempt in range(3):  # a publisher may still send straight to the source while it drains
        if attempt:  # and a quorum queue's count may lag its acks for a moment
            await asyncio.sleep(0.5 * attempt)
        moved += await move_messages(connection, source, target, inbound=inbound)
        state = await queue_state(connection, source)
        if state is None:
            return moved
        if not state.consumers and await _delete_if_drained(connection, source, classic=classic):
            return moved
        state = await queue_state(connection, source)
        if state is None:
            return moved
        if state.consumers:
            raise TopologyError(
                f"{source} got {state.consumers} consumers while it was moved: stop them"
                " (a participant started with the old ORCHESTRATOR_QUEUE_TYPE?) and migrate again"
            )
    raise TopologyError(
        f"{source} kept getting messages while it was moved; run 'orchestrator migrate' again"
    )


async def _retype_queues(
    connection: AbstractConnection, topology: Topology, services: Sequence[str]
) -> list[str]:
    """Rebuild each participant queue, and ``{ns}.dead-letter``, that is not of the set type,
    under its own name, through a holding queue ``NAME.migrating`` of the new type: bound before
    the old queue is unbound, filled with confirms, emptied into the rebuilt queue the same way.

    The same name, not a new one, so that a party still declaring the old way cannot go on
    unnoticed: its declaration is refused (PRECONDITION_FAILED) and it stops at start, rather
    than recreating the old queue beside the new one, bound to the same commands, and carrying
    out copies of them. The queue must have no consumer: stop its participants (or, for
    ``{ns}.dead-letter``, every orchestrator) first."""
    done: list[str] = []
    for queue in _typed_queues(topology, services):
        state = await queue_state(connection, queue.name)
        if state is not None and not await _declares_as(connection, queue.name, queue.arguments):
            if state.consumers:
                raise TopologyError(
                    f"stop what consumes {queue.name} first ({state.consumers} consumers): it is"
                    f" rebuilt as a {topology.queue_type} queue, and its consumers must then declare"
                    f" it with ORCHESTRATOR_QUEUE_TYPE={topology.queue_type}"
                )
            await _rebind(connection, queue, queue.holding, queue.arguments, queue.name)
            old_is_classic = topology.queue_type != "classic"  # it is not of the type set
            moved = await _drain_into(connection, queue.name, queue.holding, classic=old_is_classic)
            done.append(f"moved {moved} messages from {queue.name} to {queue.holding} and deleted it")
        if await queue_state(connection, queue.holding) is None:
            continue
        await _rebind(connection, queue, queue.name, queue.arguments, queue.holding)
        holding_is_classic = topology.queue_type == "classic"
        moved = await _drain_into(connection, queue.holding, queue.name, classic=holding_is_classic)
        done.append(f"declared {queue.name} as a {topology.queue_type} queue and moved {moved} messages back")
    return done


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "classic orchestrator queue -> quorum queue", _legacy_queue_remains, _quorum_orchestrator_queue
    ),
    Migration("partition queues", _partitions_differ, _repartition),
    Migration(
        "participant queues and dead-letter queue -> ORCHESTRATOR_QUEUE_TYPE",
        _queue_type_differs,
        _retype_queues,
    ),
)
"""In the order they apply; a step may count on those before it being done."""


async def pending_migrations(url: str, topology: Topology, services: Iterable[str] = ()) -> list[str]:
    """Each step still to do, with why: what ``orchestrator run`` refuses to start with."""
    services = sorted(set(services))
    connection = await nodes.connect(url)  # not robust: a passive declare must ask the broker
    try:
        found = []
        for migration in MIGRATIONS:
            why = await migration.pending(connection, topology, services)
            if why is not None:
                found.append(f"{migration.name}: {why}")
        return found
    finally:
        await connection.close()


async def require_partitioning(url: str, topology: Topology) -> None:
    """Partitions need the consistent-hash exchange: :class:`TopologyError` saying how to enable
    it when the broker lacks it (declaring the ring's exchange is the only way to ask)."""
    if topology.partitions == 1:
        return
    connection = await nodes.connect(url)
    try:
        channel = await connection.channel()
        await declare_ring(channel, topology)
    finally:
        await connection.close()


async def migrate_topology(
    url: str, topology: Topology, services: Iterable[str], start_types: Iterable[str] = ()
) -> list[str]:
    """Every pending step in order, then the whole current topology declared; what was done, one
    line each (nothing when it was all done already)."""
    services = sorted(set(services))
    connection = await nodes.connect(url)  # not robust: a passive declare must ask the broker
    try:
        done = []
        for migration in MIGRATIONS:
            lines = await migration.apply(connection, topology, services)
            done += [f"{migration.name}: {line}" for line in lines]
        channel = await connection.channel()
        await declare(channel, topology, services, start_types)
        await channel.close()
        return done
    except aio_pika.exceptions.AMQPError as error:  # e.g. a queue declared by hand with other arguments
        raise TopologyError(f"the broker refused: {error or type(error).__name__}") from None
    finally:
        await connection.close()
