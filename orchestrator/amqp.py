"""RabbitMQ adapter: the topology of docs/protocol.md, a batching consumer, a confirming publisher.

Consuming and publishing use separate connections (a publisher blocked by flow control must not
stall deliveries). Messages are taken with manual acks; the service acks only after commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from orchestrator.engine import OutgoingCommand
from orchestrator.messages import service_of
from orchestrator.service import Envelope
from orchestrator.topology import Topology, declare

__all__ = ["Broker", "Topology", "envelope_of"]

log = logging.getLogger("orchestrator.amqp")


def envelope_of(message: AbstractIncomingMessage) -> Envelope:
    headers = message.headers or {}
    workflow = headers.get("x-workflow")
    return Envelope(
        body=message.body,
        type=message.type,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        workflow=workflow.decode() if isinstance(workflow, bytes) else (str(workflow) if workflow else None),
    )


class Broker:
    """Two robust connections: one consumes into an in-process queue, one publishes with confirms."""

    def __init__(self, url: str, topology: Topology, prefetch: int) -> None:
        self.url = url
        self.topology = topology
        self.prefetch = prefetch
        #: deliveries with the moment they arrived (``time.monotonic()``), where step latency begins
        self.inbound: asyncio.Queue[tuple[float, AbstractIncomingMessage]] = asyncio.Queue()
        self._consume_connection: AbstractRobustConnection | None = None
        self._publish_connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._dead: AbstractExchange | None = None
        self._consumer_tag: str | None = None
        self._queue: Any = None

    async def connect(self, services: Iterable[str]) -> None:
        self._publish_connection = await aio_pika.connect_robust(
            self.url, client_properties={"connection_name": "orchestrator-publish"}
        )
        channel = await self._publish_connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare(channel, self.topology, services)
        self._publish_channel = channel
        self._dead = await channel.get_exchange(self.topology.dead)
        self._consume_connection = await aio_pika.connect_robust(
            self.url, client_properties={"connection_name": "orchestrator-consume"}
        )

    async def start_consuming(self) -> None:
        assert self._consume_connection is not None
        channel = await self._consume_connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await channel.get_queue(self.topology.orchestrator_queue)
        self._consumer_tag = await self._queue.consume(self._take)

    async def _take(self, message: AbstractIncomingMessage) -> None:
        self.inbound.put_nowait((time.monotonic(), message))

    async def stop_consuming(self) -> None:
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except Exception as error:  # the channel may be gone already; unacked messages return anyway
                log.warning("could not cancel the consumer: %s", error)
            self._consumer_tag = None

    async def publish_command(self, command: OutgoingCommand) -> None:
        """Persistent, mandatory, confirmed; an unroutable command raises (the outbox keeps it).

        Straight onto the robust channel's current aiormq channel: building an ``aio_pika.Message``
        per command cost a tenth of the service's CPU, and this is every command it sends."""
        assert self._publish_channel is not None
        channel = await self._publish_channel.get_underlay_channel()
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,  # persistent
            message_type=command.type,
            message_id=command.message_id,
            correlation_id=command.saga_id,
            headers={"x-saga-id": command.saga_id, "x-workflow": command.workflow},
        )
        await channel.basic_publish(
            orjson.dumps(command.payload),
            exchange=self.topology.commands,
            routing_key=command.type,
            properties=properties,
            mandatory=True,
        )

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Republish a message we cannot take, with the reason, then the caller acks the original."""
        assert self._dead is not None
        headers = dict(message.headers or {})
        headers.update(
            {
                "x-death-reason": reason,
                "x-original-exchange": message.exchange or "",
                "x-original-routing-key": message.routing_key or "",
            }
        )
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            type=message.type,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            app_id=message.app_id,
        )
        await self._dead.publish(copy, routing_key=message.routing_key or "")

    def connections(self) -> dict[str, bool]:
        """Whether each connection is up now: a robust one may be between reconnects."""
        named = {"broker": self._consume_connection, "broker_publish": self._publish_connection}
        return {name: c is not None and not c.is_closed and c.connected.is_set() for name, c in named.items()}

    async def close(self) -> None:
        for connection in (self._consume_connection, self._publish_connection):
            if connection is not None:
                await connection.close()


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
