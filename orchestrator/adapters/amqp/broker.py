"""RabbitMQ adapter: the topology of docs/protocol.md, a consumer that survives any message, a
confirming publisher.

Consuming and publishing use separate connections (a publisher blocked by flow control must not
stall deliveries). Messages are taken with manual acks; the service acks only after commit.
The consumer works on aiormq's raw deliveries, not aio-pika's messages: building an aio-pika
message parses properties (an ``expiration`` that is not a number raises) outside any
per-message handling, and a message nobody holds is never acked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from orchestrator.adapters.amqp import nodes
from orchestrator.adapters.amqp.decoding import UndecodableProperties
from orchestrator.adapters.amqp.nodes import NodeRing
from orchestrator.adapters.amqp.topology import Topology, declare
from orchestrator.core.children import started_workflow, target_of
from orchestrator.core.engine import OutgoingCommand
from orchestrator.core.ingress import (
    DEFAULT_LIMITS,
    Envelope,
    Limits,
    Reason,
    Refused,
    envelope,
    printable,
    trace_headers,
)
from orchestrator.core.messages import service_of
from orchestrator.service.ports import Unpublishable
from orchestrator.supervision import Spawn, bounded, lost_connection, unsupervised

__all__ = [
    "Broker",
    "Delivery",
    "QueueConsumer",
    "Republisher",
    "Topology",
    "Unpublishable",
    "envelope_of",
    "handed_over",
]

log = logging.getLogger("orchestrator.adapters.amqp.broker")


#: the basic properties a delivery may carry, as pamqp names them
_PROPERTIES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "message_type",
    "user_id",
    "app_id",
)


def envelope_of(message: DeliveredMessage, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """The envelope of a raw delivery; never raises: what cannot be read is a refused envelope."""
    body = bytes(message.body or b"")
    try:
        delivery = message.delivery
        exchange = printable(getattr(delivery, "exchange", "") or "")
        routing_key = printable(getattr(delivery, "routing_key", "") or "")
        raw = message.header.properties
        if isinstance(raw, UndecodableProperties):
            refused = Refused(Reason.BAD_PROPERTY, f"the properties cannot be decoded: {raw.error}")
            kept = {"undecodable": raw.raw[:4096].hex()}  # the header as it came, for the record
            return Envelope(
                body, refused=refused, exchange=exchange, routing_key=routing_key, properties=kept
            )
        properties = {name: getattr(raw, name, None) for name in _PROPERTIES}
        properties["type"] = properties.pop("message_type")
    except Exception as error:  # a frame aiormq let through but that is not what it should be
        refused = Refused(Reason.BAD_PROPERTY, f"cannot read the properties: {type(error).__name__}")
        return Envelope(body, refused=refused)
    return envelope(body, properties, exchange, routing_key, limits)


@dataclass(eq=False)
class Delivery:
    """One message taken from a queue, held until the service settles it."""

    envelope: Envelope
    channel: aiormq.abc.AbstractChannel
    delivery_tag: int
    redelivered: bool
    #: when it arrived (``time.monotonic()``), where step latency begins
    arrived: float
    size: int
    #: the queue it came from: a partition given up waits until its deliveries are settled
    queue: str = ""


class QueueConsumer:
    """Takes queues' messages into ``inbound`` over a connection of its own, forever: ``queue``
    from the start, and those :meth:`add` gives it (partitions this replica owns) until
    :meth:`remove` takes them away.

    It reconnects by itself with backoff, and after every (re)connect it takes messages one at a
    time with ``basic.get`` until it sees one never delivered before (or the queue is empty),
    and only then consumes with the full prefetch. A dying connection returns every message it
    held and a quorum queue counts a delivery for each: taken one at a time, the returned
    messages are settled alone, so a message that kills the connection (one the client cannot
    decode) is the only one that climbs to the queue's delivery limit and is dead-lettered by the
    broker, and the innocent ones handed out beside it are not. A queue added to a running
    session is opened the same way, each message it returns settled before the next is taken.
    """

    def __init__(
        self, url: str, queue: str, prefetch: int, name: str, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.url = url
        #: the broker's nodes, gone round after each lost connection (a URL may name several)
        self._ring = NodeRing(url)
        self.queue = queue
        #: the queues it consumes, the first one always
        self.queues: list[str] = [queue]
        #: how many queues share ``prefetch``: each consumer gets its part of it
        self.share = 1
        self.prefetch = prefetch
        self.name = name
        self.limits = limits
        self.inbound: asyncio.Queue[Delivery] = asyncio.Queue()
        self.connected = asyncio.Event()
        #: why the last connection ended, for readiness and the log
        self.problem: str | None = "not connected yet"
        self.unsettled = 0
        self.bytes_in_hand = 0
        self.busy_since = time.monotonic()
        self._all_settled = asyncio.Event()
        self._all_settled.set()
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        #: in this session: queue -> its consumer tag, and back
        self._consumers: dict[str, str] = {}
        self._queue_of: dict[str, str] = {}
        #: deliveries in hand, by the queue they came from
        self._in_hand: collections.Counter[str] = collections.Counter()
        #: deliveries taken one at a time, whose settling the opening of their queue waits for
        self._awaited: dict[int, asyncio.Future[None]] = {}
        #: the deliveries in hand that are set aside (:meth:`set_aside`), by id
        self._aside: set[int] = set()
        self._live: tuple[aiormq.abc.AbstractChannel, asyncio.Future[None]] | None = None
        self._opening = asyncio.Lock()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self, spawn: Spawn = unsupervised) -> asyncio.Task[None]:
        self._task = spawn(self.name, self._run)
        return self._task

    async def _run(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                await self._session()
                delay = 0.1
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                # aiormq fails what was waiting on a connection closed without an error with
                # CancelledError: that is a lost connection, not this task being cancelled
                self.problem = "the connection was closed"
                log.warning("%s: the connection was closed; reconnecting in %.1fs", self.name, delay)
            except Exception as error:
                self.problem = f"{type(error).__name__}: {error}"[:300]
                log.warning("%s: connection lost (%s); reconnecting in %.1fs", self.name, self.problem, delay)
            finally:
                if not self._stopping:
                    self._ring.lost()
                self.connected.clear()
                self._live = None
                self._consumers.clear()
                self._queue_of.clear()
                await self._close_connection()
            if self._stopping:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _session(self) -> None:
        connection = await self._ring.connect_aiormq(client_properties={"connection_name": self.name})
        self._connection = connection
        channel = await connection.channel()
        self._channel = channel
        ended = self._ended(connection, channel)
        self.connected.set()
        self.problem = None
        self._live = (channel, ended)
        async with self._opening:
            # what an earlier connection handed out is settled first (its acks fail; it came back)
            if await self._settled_or(ended):
                for queue in list(self.queues):
                    if not await self._open(channel, queue, ended):
                        break
        await ended  # raises what ended it; returns when we closed it ourselves

    def _ended(
        self, connection: aiormq.abc.AbstractConnection, channel: aiormq.abc.AbstractChannel
    ) -> asyncio.Future[None]:
        """Done when the session can take no more: the connection or the channel closed (the
        broker closes a channel alone, for one), or the broker cancelled the consumer (its queue
        was deleted). Any of these means: reconnect."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def finish(source: asyncio.Future[Any]) -> None:
            if ended.done():
                return
            if source.cancelled() or source.exception() is None:
                ended.set_result(None)
            else:
                ended.set_exception(source.exception())  # type: ignore[arg-type]

        async def cancelled(frame: Any) -> None:
            if not ended.done():
                ended.set_exception(ConnectionError(f"the broker cancelled the consumer of {self.queue}"))

        connection.closing.add_done_callback(finish)
        channel.closing.add_done_callback(finish)
        channel.on_consumer_cancel_callbacks.add(cancelled)
        ended.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        return ended

    async def _open(
        self, channel: aiormq.abc.AbstractChannel, queue: str, ended: asyncio.Future[None]
    ) -> bool:
        """``basic.get`` until a message never delivered before, or none, each settled before the
        next is taken: then consume with this queue's part of the prefetch. False if the session
        ended first."""
        while not self._stopping and queue in self.queues:
            message = await channel.basic_get(queue, no_ack=False)
            if not isinstance(message.delivery, aiormq.spec.Basic.GetOk):
                break  # the queue is empty
            delivery = self._hold(message, queue)
            settled = asyncio.get_running_loop().create_future()
            self._awaited[id(delivery)] = settled
            await asyncio.wait({settled, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not settled.done():
                self._awaited.pop(id(delivery), None)
                return False
            if not delivery.redelivered:
                break
        if self._stopping or queue not in self.queues or ended.done():
            return not ended.done()
        await channel.basic_qos(prefetch_count=max(1, self.prefetch // max(1, self.share)))
        consume = await channel.basic_consume(queue, self._on_delivery, no_ack=False)
        tag = consume.consumer_tag
        assert tag is not None
        self._consumers[queue], self._queue_of[tag] = tag, queue
        return True

    def split_prefetch(self, queues: int) -> None:
        """Share ``prefetch`` among this many queues (partitions and the start queue): each
        queue's channel opened from now on gets its part."""
        self.share = max(1, queues)

    async def add(self, queue: str) -> None:
        """Consume ``queue`` too: now, if connected, else from the next connection on."""
        if queue in self.queues:
            return
        self.queues.append(queue)
        live = self._live
        if live is None:
            return
        async with self._opening:
            if self._live is not live or queue in self._consumers or queue not in self.queues:
                return
            channel, ended = live
            try:
                await self._open(channel, queue, ended)
            except (Exception, asyncio.CancelledError) as error:
                if not isinstance(error, Exception) and not lost_connection(error):
                    raise
                # the channel broke: the session ends, and the next one opens every queue
                log.warning("%s: could not consume %s yet: %s", self.name, queue, _said(error))

    async def remove(self, queue: str, timeout: float) -> bool:
        """Stop consuming ``queue`` and wait, at most ``timeout``, until the deliveries in hand
        from it are settled; whether they were. Unsettled ones stay in hand: they are acked after
        their commit as usual, or return to the queue with the connection."""
        if queue not in self.queues or queue == self.queue:
            return True
        self.queues.remove(queue)
        async with self._opening:
            tag = self._consumers.pop(queue, None)
        live = self._live
        if tag is not None and live is not None and self.is_connected:
            try:
                await asyncio.wait_for(live[0].basic_cancel(tag), timeout)
            except (Exception, asyncio.CancelledError) as error:
                if not isinstance(error, Exception) and not lost_connection(error):
                    raise
                log.warning("%s: could not cancel the consumer of %s: %s", self.name, queue, _said(error))
        until = time.monotonic() + timeout
        while self._in_hand[queue] > 0 and time.monotonic() < until:
            await asyncio.sleep(0.02)
        return self._in_hand[queue] <= 0

    async def _settled_or(self, ended: asyncio.Future[None]) -> bool:
        """Wait until nothing is in hand; False if the session ended first."""
        if self._all_settled.is_set():
            return True
        waiting: asyncio.Future[Any] = asyncio.ensure_future(self._all_settled.wait())
        await asyncio.wait({waiting, ended}, return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            return True
        waiting.cancel()
        return False

    async def batches(self, limit: int, stopping: asyncio.Event) -> AsyncIterator[list[Delivery]]:
        """Batches of at most ``limit`` deliveries, each as soon as one is in hand, until
        ``stopping`` is set; then, without waiting, the ones handed out already. Those are taken
        to be acked, not left to return with the connection: a quorum queue counts a return as a
        delivery toward its delivery limit, and would hand them out again anyway."""
        while batch := await self.batch(limit, stopping):
            yield batch
        while batch := self.taken_waiting(limit):
            yield batch

    async def batch(self, limit: int, stopping: asyncio.Event) -> list[Delivery]:
        """The deliveries in hand and not yet taken, at least one and at most ``limit``; an empty
        list once ``stopping`` is set."""
        getter = asyncio.ensure_future(self.inbound.get())
        stopper = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not getter.done():
            getter.cancel()
            return []
        return [getter.result(), *self.taken_waiting(limit - 1)]

    def taken_waiting(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` of the deliveries in hand and not yet taken, without waiting."""
        batch: list[Delivery] = []
        while not self.inbound.empty() and len(batch) < limit:
            batch.append(self.inbound.get_nowait())
        return batch

    def _hold(self, message: DeliveredMessage, queue: str) -> Delivery:
        delivery = message.delivery
        body = message.body or b""
        held = Delivery(
            envelope=envelope_of(message, self.limits),
            channel=message.channel,
            delivery_tag=getattr(delivery, "delivery_tag", 0) or 0,
            redelivered=bool(getattr(delivery, "redelivered", False)),
            arrived=time.monotonic(),
            size=len(body),
            queue=queue,
        )
        self._in_hand[queue] += 1
        if not self.unsettled:
            self.busy_since = held.arrived  # where "no commit for how long" starts counting
        self.unsettled += 1
        self.bytes_in_hand += held.size
        self._all_settled.clear()
        self.inbound.put_nowait(held)
        return held

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        tag = getattr(message.delivery, "consumer_tag", None)
        self._hold(message, self._queue_of.get(tag or "", self.queue))

    async def ack(self, deliveries: Sequence[Delivery], multiple_ok: bool = True) -> None:
        """Ack settled deliveries: one ``multiple`` ack per channel where that is safe (every
        earlier delivery on it is settled by now), else one by one."""
        try:
            last: dict[int, Delivery] = {}
            single: list[Delivery] = []
            for delivery in deliveries:
                key = id(delivery.channel)
                if not multiple_ok:
                    single.append(delivery)
                elif key not in last or delivery.delivery_tag > last[key].delivery_tag:
                    last[key] = delivery
            targets = [(d, True) for d in last.values()] + [(d, False) for d in single]
            for delivery, multiple in targets:
                try:
                    # queued for the connection's writer, not waited for: acks are not confirmed,
                    # a lost one is a redelivery the inbox dedupes, and the next batch starts now
                    await delivery.channel.basic_ack(delivery.delivery_tag, multiple=multiple, wait=False)
                except (Exception, asyncio.CancelledError) as error:
                    # The channel broke: the broker redelivers, the inbox dedupes. aiormq says so
                    # with CancelledError when the connection closed without an error; that one
                    # must not end the worker (it left a process half-dead: issue 17).
                    if not isinstance(error, Exception) and not lost_connection(error):
                        raise
                    log.warning(
                        "%s: could not ack message %s: %s",
                        self.name,
                        delivery.envelope.message_id,
                        error,
                        extra={"message_id": delivery.envelope.message_id},
                    )
        finally:
            self.settled(deliveries)

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries back to the queue, for another consumer (one that can decide them).
        Each is settled one by one, before any later ``multiple`` ack could take it along."""
        try:
            for delivery in deliveries:
                try:
                    await delivery.channel.basic_nack(delivery.delivery_tag, multiple=False, requeue=True)
                except (Exception, asyncio.CancelledError) as error:
                    if not isinstance(error, Exception) and not lost_connection(error):
                        raise
                    log.warning(  # the broker requeues it with the channel anyway
                        "%s: could not requeue message %s: %s",
                        self.name,
                        delivery.envelope.message_id,
                        error,
                        extra={"message_id": delivery.envelope.message_id},
                    )
        finally:
            self.settled(deliveries)

    def settled(self, deliveries: Sequence[Delivery]) -> None:
        """Deliveries the service is done with (acked, or given up to a dead connection)."""
        for delivery in deliveries:
            self.unsettled -= 1
            self.bytes_in_hand -= delivery.size
            self._in_hand[delivery.queue] -= 1
            self._aside.discard(id(delivery))
            if self._awaited and (waiting := self._awaited.pop(id(delivery), None)) and not waiting.done():
                waiting.set_result(None)
        if self.unsettled <= 0:
            self.unsettled = 0
            self.bytes_in_hand = 0
            self._all_settled.set()
        elif self.unsettled <= len(self._aside):
            self._all_settled.set()

    def set_aside(self, deliveries: Sequence[Delivery]) -> None:
        """Deliveries kept unacked a while (their saga's row is held by another transaction):
        still in hand, but nothing waits for them, so that opening a queue or a new session goes
        on without them. Settled later, as any other."""
        for delivery in deliveries:
            self._aside.add(id(delivery))
            if self._awaited and (waiting := self._awaited.pop(id(delivery), None)) and not waiting.done():
                waiting.set_result(None)
        if self.unsettled <= len(self._aside):
            self._all_settled.set()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop taking messages; those in hand stay unacked until settled or the connection closes.
        With the connection down there is no consumer to cancel: no wait for the broker."""
        self._stopping = True
        tags, self._consumers = list(self._consumers.values()), {}
        for tag in tags:
            if not self.is_connected or self._channel is None:
                break
            try:
                await asyncio.wait_for(self._channel.basic_cancel(tag), timeout)
            except (Exception, asyncio.CancelledError) as error:
                if not isinstance(error, Exception) and not lost_connection(error):
                    raise
                # the channel may be gone already; unacked messages return anyway
                log.warning("%s: could not cancel the consumer: %s", self.name, _said(error))
                break

    async def close(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout)
        await self._close_connection(timeout)

    async def _close_connection(self, timeout: float = 5.0) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            await bounded(f"closing {self.name}", connection.close(), timeout, quiet=True)

    @property
    def is_connected(self) -> bool:
        connection, channel = self._connection, self._channel
        return (
            self.connected.is_set()
            and connection is not None
            and not connection.is_closed
            and channel is not None
            and not channel.is_closed
        )


#: how long one republish may wait for its confirm
REPUBLISH_TIMEOUT = 30.0


class Republisher:
    """Publishes messages as given (dead letters being replayed): persistent, mandatory, confirmed,
    on a channel of its own. A refusal such as a missing exchange closes the channel it happens on;
    on this one it never touches the relay's, and the next publish opens a new one."""

    def __init__(self, connection: Callable[[], Awaitable[aiormq.abc.AbstractConnection]]) -> None:
        self._connection = connection
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Mapping[str, Any]
    ) -> None:
        """``properties`` as aiormq names them (``message_type``, ``headers``, ...)."""
        async with self._lock:
            try:
                if self._channel is None or self._channel.is_closed:
                    connection = await asyncio.wait_for(self._connection(), REPUBLISH_TIMEOUT)
                    self._channel = await asyncio.wait_for(
                        connection.channel(publisher_confirms=True, on_return_raises=True), REPUBLISH_TIMEOUT
                    )
            except Unpublishable:
                raise
            except Exception as error:
                raise Unpublishable(f"cannot reach the broker: {_said(error)}", unavailable=True) from None
            channel = self._channel
            try:
                await asyncio.wait_for(
                    channel.basic_publish(
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=aiormq.spec.Basic.Properties(**properties),
                        mandatory=True,
                    ),
                    REPUBLISH_TIMEOUT,
                )
            except aiormq.exceptions.PublishError:
                raise Unpublishable(
                    f"no queue is bound to exchange {exchange!r} for routing key {routing_key!r}"
                ) from None
            except aiormq.exceptions.ChannelNotFoundEntity:
                self._channel = None
                raise Unpublishable(f"the broker has no exchange {exchange!r}") from None
            except aiormq.exceptions.DeliveryError as error:
                raise Unpublishable(f"the broker refused the message: {_said(error)}") from None
            except aiormq.exceptions.ChannelClosed as error:
                self._channel = None
                raise Unpublishable(f"the broker refused the message: {_said(error)}") from None
            except Exception as error:  # the connection broke, or no confirm came in time
                self._channel = None
                raise Unpublishable(
                    f"the broker did not confirm the message: {_said(error)}",
                    unavailable=True,
                    maybe_sent=True,
                ) from None

    async def close(self, timeout: float = 5.0) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await bounded("closing the republish channel", channel.close(), timeout, quiet=True)


def _said(error: BaseException) -> str:
    return printable(str(error) or type(error).__name__)[:300]


class Broker:
    """Consumes the orchestrator's queue (a :class:`QueueConsumer`) and publishes commands with
    confirms over a robust connection of its own."""

    def __init__(self, url: str, topology: Topology, prefetch: int, limits: Limits = DEFAULT_LIMITS) -> None:
        self.url = url
        self.topology = topology
        self.prefetch = prefetch
        self.consumer = QueueConsumer(
            url, topology.orchestrator_queue, prefetch, "orchestrator-consume", limits=limits
        )
        self._publish_connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._republisher = Republisher(self._publish_underlay)

    async def _publish_underlay(self) -> aiormq.abc.AbstractConnection:
        connection = self._publish_connection
        transport = connection.transport if connection is not None else None
        if transport is None or transport.connection.is_closed:
            raise Unpublishable("the publishing connection is down", unavailable=True)
        return transport.connection

    async def hand_over(self, delivery: Delivery) -> bool:
        """Publish a message this process cannot decide (its saga's release is not loaded here)
        to the queue every replica takes from, as it came, for a replica that can; False once it
        was handed over :data:`MAX_HAND_OVERS` times (then it goes back to its own queue, whose
        delivery limit ends it in the dead letters). :class:`Unpublishable` if the broker did
        not take it."""
        properties = handed_over(delivery.envelope)
        if properties["headers"][HAND_OVER_HEADER] > MAX_HAND_OVERS:
            return False
        await self.republish("", self.topology.orchestrator_queue, delivery.envelope.body, properties)
        return True

    async def republish(
        self, exchange: str, routing_key: str, body: bytes, properties: Mapping[str, Any]
    ) -> None:
        """Publish a message as given (a dead letter's replay) over the publishing connection, on a
        channel of its own: persistent, mandatory, confirmed; :class:`Unpublishable` otherwise."""
        await self._republisher.publish(exchange, routing_key, body, properties)

    @property
    def inbound(self) -> asyncio.Queue[Delivery]:
        return self.consumer.inbound

    async def connect(self, services: Iterable[str], start_types: Iterable[str] = ()) -> None:
        channel = await self._open_publishing("orchestrator-publish")
        await declare(channel, self.topology, services, start_types)
        self._publish_channel = channel

    async def connect_publisher(self, name: str = "orchestrator-publish") -> None:
        """Only the publishing side, on the topology as it is: for a short-lived process (the
        command line acting on a saga) that sends what it committed, and must not redeclare a
        topology the running service owns (an older one may wait for ``orchestrator migrate``)."""
        self._publish_channel = await self._open_publishing(name)

    async def _open_publishing(self, name: str) -> AbstractChannel:
        self._publish_connection = await nodes.connect_robust(
            self.url, client_properties={"connection_name": name}
        )
        return await self._publish_connection.channel(publisher_confirms=True, on_return_raises=True)

    async def start_consuming(self, spawn: Spawn = unsupervised) -> None:
        self.consumer.start(spawn)
        await self.consumer.connected.wait()

    async def waiting(self) -> int | None:
        """How many messages wait in the queues this process consumes (the orchestrator's queue,
        and the partitions it owns), as the broker counts them (ready, not handed out); None when
        the broker cannot be asked."""
        if self._publish_connection is None or self._publish_connection.is_closed:
            return None
        try:
            channel = await self._publish_connection.channel()
            try:
                count = 0
                for name in list(self.consumer.queues):
                    queue = await channel.declare_queue(name, passive=True)
                    count += int(queue.declaration_result.message_count or 0)
                return count
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        except Exception:  # between reconnects, or the queue is gone: readiness says so elsewhere
            return None

    async def stop_consuming(self, timeout: float = 5.0) -> None:
        await self.consumer.stop(timeout)

    async def publish_command(self, command: OutgoingCommand) -> None:
        """Persistent, mandatory, confirmed; an unroutable command raises (the outbox keeps it).

        Straight onto the robust channel's current aiormq channel: building an ``aio_pika.Message``
        per command cost a tenth of the service's CPU, and this is every command it sends."""
        assert self._publish_channel is not None
        # aiormq's channel: its abstract base does not name basic_publish's ``wait``
        channel = cast(aiormq.Channel, await self._publish_channel.get_underlay_channel())
        exchange, routing_key = self.topology.commands, command.type
        correlation_id: str | None = command.saga_id
        headers = _command_headers(command)
        if command.route is not None:
            # to a saga, through the orchestrator's own queue (orchestrator.core.children): the
            # default exchange, which only the orchestrator writes to, vouches for the sender
            exchange, routing_key = "", self.topology.orchestrator_queue
            kind, target = target_of(command.route)
            del headers["x-workflow"]  # names the workflow of the saga it is for, where it is said
            if kind == "start":
                correlation_id = None  # a start is found by its key
                workflow, schema = started_workflow(target)
                headers["x-workflow"] = workflow
                headers["x-parent-saga"] = command.saga_id
                if schema != 1:
                    headers["x-schema-version"] = schema
            else:
                correlation_id = target
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,  # persistent
            message_type=command.type,
            message_id=command.message_id,
            correlation_id=correlation_id,
            headers=headers,
        )
        try:
            # wait=False: the channel's lock is held only to queue the frames, not until the
            # connection's writer wrote them, so a batch's commands go out in one turn of the
            # loop instead of one each; the confirm is still awaited, and the relay's slots bound
            # how many are unconfirmed (the write queue, how many are unwritten)
            await channel.basic_publish(
                orjson.dumps(command.payload),
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                wait=False,
            )
        except aiormq.exceptions.PublishError:  # returned: the relay sets it aside after a few
            raise Unpublishable(
                f"no queue is bound to {exchange or 'the default exchange'} for routing key {routing_key}"
            ) from None

    def connections(self) -> dict[str, bool]:
        """Whether each connection is up now: either may be between reconnects."""
        publish = self._publish_connection
        return {
            "broker": self.consumer.is_connected,
            "broker_publish": publish is not None and not publish.is_closed and publish.connected.is_set(),
        }

    async def close(self, timeout: float = 5.0) -> None:
        """Close both connections, each within ``timeout``: with the broker away, aio-pika's
        robust connection would otherwise wait for it to come back."""
        await self.consumer.close(timeout)
        await self._republisher.close(timeout)
        if self._publish_connection is not None:
            await bounded("closing orchestrator-publish", self._publish_connection.close(), timeout)


#: counts how often a message was handed over between replicas
HAND_OVER_HEADER = "x-orchestrator-handed-over"
#: how often at most: with one replica in three loading the release, the chance that 30 hand-overs
#: all land on the others is (2/3)^30, about 5 in a million
MAX_HAND_OVERS = 30
#: properties a hand-over does not keep: the broker refuses a user id other than the connection's,
#: and an expiration would start again
_NOT_HANDED_OVER = frozenset({"user_id", "expiration"})


def _command_headers(command: OutgoingCommand) -> dict[str, Any]:
    """A command's headers: its saga and workflow, and the trace context of what caused it (the
    W3C ``traceparent``/``tracestate``, which the participant passes on to its reply)."""
    headers: dict[str, Any] = {"x-saga-id": command.saga_id, "x-workflow": command.workflow}
    if command.trace is not None:
        headers.update(trace_headers(command.trace))
    return headers


def hand_overs(count: object) -> int:
    """How often a message was handed over, as its header says, within 0 and one past the limit:
    anyone who can publish can write the header, and a negative count would otherwise send a
    message round the replicas (almost) forever."""
    if not isinstance(count, int) or isinstance(count, bool):
        return 0
    return min(max(count, 0), MAX_HAND_OVERS + 1)


def handed_over(envelope: Envelope) -> dict[str, Any]:
    """The properties a hand-over publishes (as aiormq names them): those it came with, its
    first routing in ``x-original-*`` headers (for a dead letter's replay), one hand-over more."""
    out: dict[str, Any] = {}
    for name in _PROPERTIES:
        value = envelope.properties.get("type" if name == "message_type" else name)
        if value is not None and name not in _NOT_HANDED_OVER:
            out[name] = value
    headers = dict(out.get("headers") or {})
    # always the routing it was read with (the first, for a message moved before): a publisher's
    # own x-original-exchange must not survive, or "" would pass for the orchestrator's own publish
    headers["x-original-exchange"] = envelope.exchange
    headers["x-original-routing-key"] = envelope.routing_key
    headers[HAND_OVER_HEADER] = hand_overs(headers.get(HAND_OVER_HEADER)) + 1
    out["headers"] = headers
    out["delivery_mode"] = 2
    return out


def services_of(command_types: Iterable[str]) -> set[str]:
    return {service_of(t) for t in command_types}


async def wait_for_consumers(connection: AbstractConnection, queues: Iterable[str], timeout: float) -> None:
    """Until someone consumes each of ``queues``, as the broker sees it; a passive declare of a
    missing queue closes its channel, so each try takes a channel of its own."""
    deadline = time.monotonic() + timeout
    for name in queues:
        while True:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
                if queue.declaration_result.consumer_count:
                    break
            except aio_pika.exceptions.ChannelClosed:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"nobody consumes {name} after {timeout}s")
            await asyncio.sleep(0.1)
