"""The driver's view of PostgreSQL and RabbitMQ: reset between scenarios, poll, publish start events.

The driver watches the orchestrator only from outside, through the ``sagas`` and ``journal``
tables and the broker, as an operator would; it never imports the running service.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.abc
import asyncpg
import orjson

from bench.workflows import HOLD, ORDER, SILENT_SERVICE, HoldRequested
from orchestrator.adapters.amqp.broker import wait_for_consumers
from orchestrator.adapters.amqp.topology import Topology
from orchestrator.examples.contracts import OrderPlaced

__all__ = ["Broker", "Database", "Started"]

TABLES = "sagas, journal, outbox, inbox, deadlines"
# peer-dbos.replies: the peer's (bench/peer_dbos.py), which deletes it itself unless it crashed
QUEUES = (
    "orchestrator.events",
    "dead-letter",
    "inventory",
    "payment",
    "shipping",
    SILENT_SERVICE,
    "peer-dbos.replies",
)
EXCHANGES = ("events", "commands", "dead")
IN_FLIGHT = 2000


class Database:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str) -> Database:
        # The driver polls while the orchestrator runs (completed sagas every 50 ms): by index, so
        # that it takes the database's CPU from the run as little as it can, whatever the
        # statistics say of tables emptied before each scenario.
        settings = {"enable_seqscan": "off"}
        return cls(await asyncpg.create_pool(dsn, min_size=1, max_size=3, server_settings=settings))

    async def close(self) -> None:
        await self.pool.close()

    async def reset(self) -> None:
        """Empty every table, so each scenario starts from the same place; the checkpoint keeps
        the previous scenario's writes from being flushed during this one's measurement."""
        async with self.pool.acquire() as db:
            await db.execute(f"TRUNCATE {TABLES}")
            await db.execute("CHECKPOINT")

    async def drop_database(self, dsn: str) -> None:
        """Drop another database on the same server (a kit's, a peer's), whoever is connected."""
        name = dsn.rsplit("/", 1)[1].split("?", 1)[0]
        await self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def execute(self, sql: str, *args: Any) -> None:
        async with self.pool.acquire() as db:
            await db.execute(sql, *args)

    async def analyze(self) -> None:
        """The tables' statistics brought up to date, as autovacuum's analyze does: without it the
        orchestrator's cached generic plans, made when a table was nearly empty, scan it whole."""
        await self.execute(f"ANALYZE {TABLES}")

    async def autovacuum(self) -> bool:
        return bool(await self.value("SELECT current_setting('autovacuum') = 'on'"))

    async def analyze_every(self, seconds: float) -> None:
        """:meth:`analyze` for ever, every ``seconds``: stands in for autovacuum where the server
        runs without it (this machine's CI configuration); a failed one is tried again."""
        while True:
            await asyncio.sleep(seconds)
            with contextlib.suppress(Exception):
                await self.analyze()

    async def value(self, sql: str, *args: Any) -> Any:
        async with self.pool.acquire() as db:
            return await db.fetchval(sql, *args)

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as db:
            return list(await db.fetch(sql, *args))

    async def count(self, sql: str, *args: Any) -> int:
        return int(await self.value(sql, *args) or 0)

    async def wait_count(
        self, sql: str, target: int, timeout: float, *args: Any, every: float = 0.05
    ) -> tuple[float | None, int]:
        """Poll a count until it reaches ``target``: (seconds it took or None on timeout, last count)."""
        began = time.monotonic()
        found = 0
        while True:
            found = await self.count(sql, *args)
            if found >= target:
                return time.monotonic() - began, found
            if time.monotonic() - began > timeout:
                return None, found
            await asyncio.sleep(every)

    async def server_version(self) -> str:
        return str(await self.value("SHOW server_version"))


@dataclass
class Started:
    """When the driver handed each start event to the broker: monotonic for step latency against
    the responder's clock, wall time for saga latency against the database's timestamps."""

    monotonic: dict[str, float]
    wall: dict[str, float]


def order_body(order_id: str) -> bytes:
    return orjson.dumps(
        {
            "order_id": order_id,
            "customer_id": "c-1",
            # a hundred SKUs, as a shop has: one for all would serialize a kit inventory's commands
            "lines": [{"sku": f"sku-{zlib.crc32(order_id.encode()) % 100}", "quantity": 1}],
            "amount_cents": 1000,
        }
    )


def hold_body(hold_id: str) -> bytes:
    return orjson.dumps({"hold_id": hold_id})


KINDS = {ORDER: (OrderPlaced.TYPE, order_body), HOLD: (HoldRequested.TYPE, hold_body)}


class Broker:
    """Publishes start events as a business system would: persistent, confirmed, many in flight."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self._window = asyncio.Semaphore(IN_FLIGHT)
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}

    async def connect(self) -> None:
        self.connection = await aio_pika.connect(self.url, client_properties={"connection_name": "bench"})
        self.channel = await self.connection.channel(publisher_confirms=True)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    def server_version(self) -> str | None:
        if self.connection is None:
            return None
        transport: Any = getattr(self.connection, "transport", None)
        properties = getattr(getattr(transport, "connection", None), "server_properties", {}) or {}
        version = properties.get("version")
        return version.decode() if isinstance(version, bytes) else (str(version) if version else None)

    async def start(self, namespace: str, workflow: str, key: str, started: Started | None = None) -> None:
        """Publish one start event; returns once the broker confirmed it."""
        assert self.channel is not None
        type_, body = KINDS[workflow]
        message = aio_pika.Message(
            body(key),
            type=type_,
            message_id=str(uuid.uuid4()),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        exchange = self._exchanges.get(namespace)
        if exchange is None:
            exchange = self._exchanges[namespace] = await self.channel.get_exchange(
                f"{namespace}.events", ensure=False
            )
        async with self._window:
            if started is not None:
                started.monotonic[key] = time.monotonic()
                started.wall[key] = time.time()
            await exchange.publish(message, routing_key=type_)

    async def burst(self, namespace: str, workflow: str, keys: Iterable[str]) -> Started:
        """Every start event at once (up to the in-flight window)."""
        started = Started({}, {})
        await asyncio.gather(*(self.start(namespace, workflow, k, started) for k in keys))
        return started

    async def at_rate(self, namespace: str, workflow: str, keys: list[str], rate: float) -> Started:
        """Open loop: start events on a clock, whatever the orchestrator's backlog, as pipeline.py
        --rate does. The clock is the wall, not the sum of sleeps, so the rate is the rate asked for."""
        started = Started({}, {})
        tasks: list[asyncio.Task[None]] = []
        began = time.monotonic()
        sent = 0
        while sent < len(keys):
            due = min(len(keys), int((time.monotonic() - began) * rate) + 1)
            for key in keys[sent:due]:
                tasks.append(asyncio.create_task(self.start(namespace, workflow, key, started)))
            sent = max(sent, due)
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        return started

    async def declare(self, namespace: str) -> None:
        """The exchange start events go to, in case the driver publishes before the orchestrator
        ever ran in this namespace (declarations are idempotent)."""
        assert self.channel is not None
        await self.channel.declare_exchange(f"{namespace}.events", "topic", durable=True)

    async def cleanup(self, namespace: str, partitions: int = 0) -> None:
        """Delete the namespace's queues and exchanges, so runs leave nothing behind; with
        ``partitions`` (bench/replicas.py) the partition queues and the exchanges in front of them
        too, which a partitioned ``orchestrator run`` declares on its own."""
        assert self.connection is not None
        topology = Topology(namespace, partitions=max(1, partitions))
        queues = [f"{namespace}.{queue}" for queue in QUEUES]
        queues += [topology.partition_queue(p) for p in range(partitions)]
        exchanges = [f"{namespace}.{exchange}" for exchange in EXCHANGES]
        exchanges += [topology.route, topology.by_saga] if partitions else []
        channel = await self.connection.channel()
        try:
            for queue in queues:
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue)
            for exchange in exchanges:
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(exchange)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def wait_for_consumers(self, namespace: str, services: Iterable[str], timeout: float = 30) -> None:
        """The responder says it is ready once it consumes; this double-checks from the broker's side."""
        assert self.connection is not None
        await wait_for_consumers(self.connection, [f"{namespace}.{s}" for s in services], timeout)
