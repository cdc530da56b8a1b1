"""The participants of the benchmark: answer every command at once, like the floor's participant.

``python -m bench.responder --namespace NS --services inventory,payment,shipping``

The example participants validate, log a line per command and remember their answers; all of
that is the participants' cost, not the orchestrator's, and the floor's participant pays none of
it. This one does what pipeline.py's does and nothing more: consume, publish the reply
(persistent, confirmed), ack, with every callback its own task so that replies overlap. The reply
keeps the contract of docs/protocol.md (deterministic ``message_id``, ``correlation_id``,
``x-saga-id``/``x-workflow``), so a command delivered twice gives a reply the orchestrator drops.

With ``--record FILE`` it notes when each command arrived and when each reply was handed to the
broker, on the system-wide monotonic clock (for step latency against the driver's clock) and on
the wall clock (to split a step at the moment the orchestrator decided, which the journal
records), and writes them to FILE when it stops (SIGTERM). It prints ``responder ready`` once it consumes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import aio_pika
import aio_pika.abc
import orjson

from orchestrator.adapters.amqp.topology import Topology
from orchestrator.settings import DEFAULT_AMQP_URL

__all__ = ["REPLIES", "declare_services", "main"]

REPLIES: dict[str, tuple[str, str | None]] = {
    "inventory.ReserveStock": ("inventory.StockReserved", "reservation_id"),
    "inventory.ReleaseStock": ("inventory.StockReleased", None),
    "payment.ChargePayment": ("payment.PaymentCharged", "charge_id"),
    "payment.RefundPayment": ("payment.PaymentRefunded", None),
    "shipping.ShipOrder": ("shipping.OrderShipped", "tracking_id"),
}
"""Command type -> (success reply type, the id field the reply carries besides ``order_id``)."""

COPIED_HEADERS = ("x-saga-id", "x-workflow")
Record = tuple[str, str, float, float]  # saga key, message type, monotonic, wall clock


async def declare_services(
    channel: aio_pika.abc.AbstractChannel, namespace: str, services: Sequence[str]
) -> list[aio_pika.abc.AbstractQueue]:
    """The participants' side of the topology (docs/protocol.md, section 2): ``{ns}.commands``, the
    dead-letter exchange and queue, and a queue per service bound to its commands; the services'
    queues, in order. Declared as the orchestrator declares them, or RabbitMQ refuses one of the
    two."""
    topology = Topology(namespace, queue_type=os.environ.get("ORCHESTRATOR_QUEUE_TYPE") or "classic")
    commands = await channel.declare_exchange(f"{namespace}.commands", "topic", durable=True)
    dead = await channel.declare_exchange(f"{namespace}.dead", "fanout", durable=True)
    dead_letters = await channel.declare_queue(
        f"{namespace}.dead-letter", durable=True, arguments=topology.dead_letter_queue_arguments
    )
    await dead_letters.bind(dead, "")
    queues = []
    for service in services:
        queue = await channel.declare_queue(
            f"{namespace}.{service}", durable=True, arguments=topology.queue_arguments
        )
        await queue.bind(commands, f"{service}.#")
        queues.append(queue)
    return queues


class Responder:
    def __init__(self, url: str, namespace: str, services: list[str], prefetch: int, record: bool) -> None:
        self.url = url
        self.namespace = namespace
        self.services = services
        self.prefetch = prefetch
        self.record = record
        self.commands: list[Record] = []
        self.replies: list[Record] = []
        self.answered = 0
        self._events: aio_pika.abc.AbstractExchange | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        # Two connections, as the orchestrator does: a publisher held back by flow control must not
        # hold back deliveries.
        consume = await aio_pika.connect(self.url, client_properties={"connection_name": "bench-responder"})
        publish = await aio_pika.connect(self.url, client_properties={"connection_name": "bench-replies"})
        try:
            channel = await consume.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            queues = await declare_services(channel, self.namespace, self.services)
            publish_channel = await publish.channel(publisher_confirms=True)
            self._events = await publish_channel.declare_exchange(
                f"{self.namespace}.events", "topic", durable=True
            )
            tags = [(queue, await queue.consume(self._on_command)) for queue in queues]
            print("responder ready", flush=True)
            await stop.wait()
            for queue, tag in tags:
                await queue.cancel(tag)
            if self._in_flight:
                await asyncio.wait(self._in_flight, timeout=10)
        finally:
            await consume.close()
            await publish.close()

    async def _on_command(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        arrived, arrived_wall = time.monotonic(), time.time()
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        known = REPLIES.get(message.type or "")
        try:
            body = orjson.loads(message.body)
            order_id = str(body["order_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            known = None
        if known is None or not message.message_id or not message.correlation_id:
            await message.reject(requeue=False)
            return
        reply_type, id_field = known
        reply: dict[str, str] = {"order_id": order_id}
        if id_field is not None:
            reply[id_field] = f"{id_field}-{order_id}"
        headers = message.headers or {}
        outgoing = aio_pika.Message(
            orjson.dumps(reply),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            type=reply_type,
            message_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"{message.message_id}:{reply_type}")),
            correlation_id=message.correlation_id,
            headers={k: headers[k] for k in COPIED_HEADERS if k in headers},
        )
        assert self._events is not None
        if self.record:
            self.commands.append((order_id, message.type or "", arrived, arrived_wall))
            self.replies.append((order_id, reply_type, time.monotonic(), time.time()))
        await self._events.publish(outgoing, routing_key=reply_type)  # returns once confirmed
        await message.ack()
        self.answered += 1


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    responder = Responder(
        args.amqp_url,
        args.namespace,
        [s for s in args.services.split(",") if s],
        args.prefetch,
        args.record is not None,
    )
    await responder.run(stop)
    if args.record is not None:
        Path(args.record).write_bytes(
            orjson.dumps({"commands": responder.commands, "replies": responder.replies})
        )
    print(f"responder stopped: {responder.answered} answered", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--services", default="inventory,payment,shipping")
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--record", help="write arrival and reply times here on stop")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
