"""The suite's two ends on the wire: the start events it publishes and the tap it reads.

Both stay on the ``{ns}.events`` and ``{ns}.commands`` exchanges of docs/protocol.md, never on
the orchestrator's own queues, so the suite does not depend on how replicas consume.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import zlib
from typing import Any

import aio_pika
import aio_pika.abc
import orjson

from bench.chaos.checker import Wire
from bench.chaos.workflow import WORKFLOW
from orchestrator.adapters.amqp import nodes
from orchestrator.examples.contracts import OrderPlaced

__all__ = ["Tap", "order", "publish"]

IN_FLIGHT = 500


class Tap:
    """A queue of the suite's own on both exchanges: every command and event, as the broker saw it.

    Durable and acked after it is noted, so a broker restart loses nothing of it; a redelivery
    is noted twice, which the checks (sets of message ids) do not mind. It reconnects by its own
    loop, not aio-pika's robust connection: in one 10,000-saga run the tap on a robust
    connection stopped receiving after a broker restart (it read 4,853 of about 70,000
    messages), and the checks blamed the orchestrator for commands the tap had not read.
    ``depth`` lets the runner wait until the tap has read everything the broker holds for it."""

    def __init__(self, url: str, namespace: str, quorum: bool = False) -> None:
        self.url = url
        self.namespace = namespace
        #: in a cluster: a quorum queue, which outlives the stop of the node that leads it
        self.arguments: Any = {"x-queue-type": "quorum"} if quorum else None
        self.queue = f"{namespace}.chaos-tap"
        self.seen: list[Wire] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 60)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self._serve()
            await asyncio.sleep(0.5)

    async def _serve(self) -> None:
        """One connection's life: consume until the connection or its channel is gone."""
        lost = asyncio.Event()
        connection = await nodes.connect(self.url, client_properties={"connection_name": "chaos-tap"})
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel()
            channel.close_callbacks.add(lambda *_: lost.set())
            await channel.set_qos(prefetch_count=1000)
            queue = await channel.declare_queue(self.queue, durable=True, arguments=self.arguments)
            for exchange in ("commands", "events"):
                await queue.bind(f"{self.namespace}.{exchange}", "#")
            await queue.consume(self._on_message)
            self._ready.set()
            await lost.wait()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def depth(self) -> int | None:
        """Messages waiting in the tap's queue; None when the broker cannot say now."""
        try:
            connection = await nodes.connect(self.url)
        except Exception:
            return None
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.queue, passive=True)
            count = queue.declaration_result.message_count
            return int(count) if count is not None else None
        except Exception:
            return None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        exchange = (message.exchange or "").removeprefix(f"{self.namespace}.")
        key = None
        if message.type == OrderPlaced.TYPE:
            with contextlib.suppress(Exception):
                key = str(orjson.loads(message.body)["order_id"])
        self.seen.append(
            Wire(exchange, message.type or "", message.message_id or "", message.correlation_id, key)
        )
        with contextlib.suppress(Exception):  # a lost channel: the message comes back
            await message.ack()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


#: the SKUs the orders of a run are spread over: one SKU for every order made every reservation wait
#: for the one row of the kit's inventory (``SELECT ... FOR UPDATE``), and at 40 orders a second
#: that queue, not the orchestrator, made the reserve step time out
SKUS = 50


def order(key: str) -> dict[str, Any]:
    """What the order ``key`` asks for, from its key alone, so that the checker can count the kit's
    effects against it: one to three units of one SKU, 1,000 cents a unit."""
    digest = zlib.crc32(key.encode())
    units = 1 + digest % 3
    return {
        "customer_id": f"c-{digest % 7}",
        "lines": [{"sku": f"sku-{digest // 3 % SKUS}", "quantity": units}],
        "amount_cents": 1000 * units,
    }


def start_body(key: str) -> bytes:
    return orjson.dumps({"order_id": key, **order(key)})


class _Starts:
    """The publishing end of the start events: a connection made again whenever a publish
    fails (not aio-pika's robust one, for the reason ``Tap`` gives)."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.exchange: aio_pika.abc.AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> aio_pika.abc.AbstractExchange:
        async with self._lock:
            if self.exchange is None:
                self.connection = await nodes.connect(
                    self.url, client_properties={"connection_name": "chaos-starts"}
                )
                channel = await self.connection.channel(publisher_confirms=True)
                self.exchange = await channel.get_exchange(f"{self.namespace}.events", ensure=False)
            return self.exchange

    async def drop(self, broken: aio_pika.abc.AbstractExchange | None) -> None:
        """Forget the connection a publish failed on (once, however many publishes saw it fail)."""
        async with self._lock:
            if broken is not None and self.exchange is not broken:
                return
            connection, self.connection, self.exchange = self.connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)


async def publish(url: str, namespace: str, keys: list[str], rate: float, confirmed: set[str]) -> None:
    """Start events on a clock, as a business system sends them, each retried until the broker
    confirms it: a restart in the middle loses none. A retry keeps the message id (it is the
    same start), so the orchestrator takes it once."""
    starts = _Starts(url, namespace)
    window = asyncio.Semaphore(IN_FLIGHT)

    async def one(key: str) -> None:
        message = aio_pika.Message(
            start_body(key),
            type=OrderPlaced.TYPE,
            message_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"chaos:{namespace}:{key}")),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"x-workflow": WORKFLOW},
        )
        async with window:
            while True:
                exchange = None
                try:
                    exchange = await starts.get()
                    await exchange.publish(message, routing_key=OrderPlaced.TYPE, timeout=10)
                except Exception:
                    await starts.drop(exchange)
                    await asyncio.sleep(0.5)
                    continue
                confirmed.add(key)
                return

    try:
        tasks: list[asyncio.Task[None]] = []
        began = time.monotonic()
        for i, key in enumerate(keys):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(key)))
        await asyncio.gather(*tasks)
    finally:
        await starts.drop(None)
