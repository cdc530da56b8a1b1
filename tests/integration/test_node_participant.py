"""The Node.js shipping participant (participants/node) against the real orchestrator.

It runs as a user runs it (``node participants/node/shipping.js``, settings from the environment)
beside the Python inventory and payment, with a database of its own for its durable record. What
it must show is the contract kept from another language: orders complete through it, its failure
replies compensate, what it cannot parse is dead-lettered while it goes on serving, and a command
it sees again (redelivered after a SIGKILL, or re-sent under the same message id) gets the stored
reply, never a second shipment.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
import asyncpg
import orjson
import pytest

from orchestrator.core.definitions import Status
from orchestrator.core.engine import saga_id_for
from participants.common import injected_failure

from .conftest import ROOT, Bench, Process, unique
from .private_broker import PrivateBroker

pytestmark = pytest.mark.integration

NODE_DIR = ROOT / "participants" / "node"
FAIL_RATE = 0.3
keys = unique("node")


def require_node_modules() -> None:
    """Not a skip: without its dependencies the participant is not tested, and that is a failure."""
    for package in ("amqplib", "pg"):
        if not (NODE_DIR / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"participants/node/node_modules/{package} is missing: run `make node-deps`")


def reply_id(command_message_id: str, reply_type: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{command_message_id}:{reply_type}"))


@contextlib.asynccontextmanager
async def participant_database(bench: Bench) -> AsyncIterator[str]:
    """PARTICIPANT_DATABASE_URL: the bench's own database, the Python participants' too (each
    in a schema of its own). Spelled ``postgresql+asyncpg://``, as the Python side spells it,
    which the participant must accept."""
    url = bench.env["PARTICIPANT_DATABASE_URL"]
    assert url.startswith("postgresql+asyncpg://")
    yield url


class NodeShipping:
    """The Node participant's processes and its database, for one test."""

    def __init__(self, bench: Bench, database_url: str, env: dict[str, str]) -> None:
        self.bench = bench
        self.database_url = database_url
        self.env = {
            **{k: v for k, v in bench.env.items() if not k.startswith("PARTICIPANT_")},
            "PARTICIPANT_DATABASE_URL": database_url,
            **env,
        }
        self.process: Process | None = None

    async def start(self) -> Process:
        log = self.bench.tmp_path / f"shipping-node-{len(self.bench.processes)}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                ["node", str(NODE_DIR / "shipping.js")],
                cwd=ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        self.process = Process("shipping-node", popen, log)
        self.bench.processes.append(self.process)  # the bench stops it at the end
        await self.bench.wait_for_log(self.process, "consuming ")
        await self.bench.wait_for_consumer(f"{self.bench.namespace}.shipping")
        return self.process

    def output(self) -> str:
        return "\n".join(p.output() for p in self.bench.processes if p.name == "shipping-node")

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(self.database_url.replace("+asyncpg", ""))
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    async def shipments(self, order_ids: list[str]) -> list[asyncpg.Record]:
        return await self.query(
            "SELECT * FROM shipping_node.shipments WHERE order_id = ANY($1::text[]) ORDER BY order_id",
            order_ids,
        )


@contextlib.asynccontextmanager
async def node_shipping(
    bench: Bench, workflows: str = "orchestrator.examples", **env: str
) -> AsyncIterator[NodeShipping]:
    """The orchestrator (with ``workflows``), the Python inventory and payment, and the Node
    shipping, running."""
    require_node_modules()
    async with participant_database(bench) as database_url:
        await bench.serve(workflows)
        await bench.start_participants("inventory", "payment")
        shipping = NodeShipping(bench, database_url, env)
        await shipping.start()
        try:
            yield shipping
        finally:
            for process in bench.processes:  # before its database is dropped
                process.stop()


class Tap:
    """Copies of every shipping command and reply in the namespace, as they were sent."""

    def __init__(self) -> None:
        self.commands: list[aio_pika.abc.AbstractIncomingMessage] = []
        self.replies: list[aio_pika.abc.AbstractIncomingMessage] = []

    @classmethod
    async def on(cls, bench: Bench) -> Tap:
        assert bench.connection is not None
        tap = cls()
        channel = await bench.connection.channel()
        ns, topic = bench.namespace, aio_pika.ExchangeType.TOPIC
        for exchange, into in ((f"{ns}.commands", tap.commands), (f"{ns}.events", tap.replies)):
            await channel.declare_exchange(exchange, topic, durable=True)
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(exchange, "shipping.#")
            await queue.consume(tap._collect(into), no_ack=True)
        return tap

    @staticmethod
    def _collect(
        into: list[aio_pika.abc.AbstractIncomingMessage],
    ) -> Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]:
        async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            into.append(message)

        return collect

    def replies_to(
        self, command: aio_pika.abc.AbstractIncomingMessage
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        assert command.message_id is not None
        ids = {reply_id(command.message_id, t) for t in ("shipping.OrderShipped", "shipping.ShipmentFailed")}
        return [r for r in self.replies if r.message_id in ids]

    def command_for(self, order_id: str) -> aio_pika.abc.AbstractIncomingMessage:
        [command] = [c for c in self.commands if orjson.loads(c.body)["order_id"] == order_id]
        return command


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


async def send_command(bench: Bench, message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """A command re-sent as the orchestrator re-sends it: same message id, properties and body."""
    assert bench.channel is not None and message.type is not None
    commands = await bench.channel.get_exchange(f"{bench.namespace}.commands")
    await commands.publish(
        aio_pika.Message(
            message.body,
            type=message.type,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            headers=dict(message.headers),
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=message.type,
    )


#: a command's W3C trace context, which its reply must carry on
TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "a=1"}


def order_ids(failing: int, passing: int) -> tuple[list[str], list[str]]:
    """Fresh order ids of which ``failing`` fail at shipping under FAIL_RATE and ``passing`` do not."""
    fails: list[str] = []
    passes: list[str] = []
    while len(fails) < failing or len(passes) < passing:
        key = keys()
        chosen = fails if injected_failure("shipping", key, FAIL_RATE) else passes
        if len(chosen) < (failing if chosen is fails else passing):
            chosen.append(key)
    return fails, passes


async def test_orders_complete_through_the_node_shipping_and_its_failures_compensate(bench: Bench) -> None:
    async with node_shipping(bench, PARTICIPANT_FAIL_RATE=str(FAIL_RATE)) as shipping:
        tap = await Tap.on(bench)
        failing, passing = order_ids(failing=4, passing=8)
        for key in failing + passing:
            await bench.place_order(key)

        sagas = await bench.finished("order", failing + passing, timeout=90)

        assert {k: sagas[k].status for k in passing} == dict.fromkeys(passing, Status.COMPLETED)
        assert {k: sagas[k].status for k in failing} == dict.fromkeys(failing, Status.COMPENSATED)
        for key in failing:
            sent = await bench.commands_sent(saga_id_for("order", key))
            assert sent[-2:] == ["payment.RefundPayment", "inventory.ReleaseStock"], sent
        rows = {r["order_id"]: r for r in await shipping.shipments(failing + passing)}
        assert sorted(rows) == sorted(failing + passing)  # one row per order, the primary key
        assert {k: rows[k]["status"] for k in failing} == dict.fromkeys(failing, "failed")
        assert {k: rows[k]["status"] for k in passing} == dict.fromkeys(passing, "shipped")
        # the reply on the wire, as section 6 of docs/protocol.md has it
        for key in failing + passing:
            command = tap.command_for(key)
            [reply] = tap.replies_to(command)
            assert command.message_id is not None
            shipped = key in passing
            reply_type = "shipping.OrderShipped" if shipped else "shipping.ShipmentFailed"
            assert reply.type == reply_type
            assert reply.message_id == reply_id(command.message_id, reply_type)
            assert reply.correlation_id == command.correlation_id == saga_id_for("order", key)
            assert reply.content_type == "application/json"
            assert reply.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert reply.headers["x-saga-id"] == command.headers["x-saga-id"]
            assert reply.headers["x-workflow"] == "order"
            expected = (
                {"order_id": key, "tracking_id": rows[key]["tracking_id"]}
                if shipped
                else {"order_id": key, "reason": "injected failure (fail rate)"}
            )
            assert orjson.loads(reply.body) == expected
        assert await bench.dead_letters(0, timeout=0) == []


async def test_the_node_shipping_serves_a_parallel_saga_as_it_is(bench: Bench) -> None:
    """Issue 28, item 7: written from docs/protocol.md before parallel steps existed, it serves a
    branch of a parallel group unchanged; its failures compensate the other branch."""
    async with node_shipping(
        bench, "tests.integration.parallel_shipping", PARTICIPANT_FAIL_RATE=str(FAIL_RATE)
    ) as shipping:
        failing, passing = order_ids(failing=3, passing=5)
        for key in failing + passing:
            await bench.place_order(key)

        sagas = await bench.finished("charge_and_ship", failing + passing, timeout=90)

        assert {k: sagas[k].status for k in passing} == dict.fromkeys(passing, Status.COMPLETED)
        assert {k: sagas[k].status for k in failing} == dict.fromkeys(failing, Status.COMPENSATED)
        assert bench.store is not None
        for key in failing + passing:
            journal = await bench.store.journal(saga_id_for("charge_and_ship", key))
            together = [[c["type"] for c in e.decision["commands"]] for e in journal]
            assert ["payment.ChargePayment", "shipping.ShipOrder"] in together  # one decision
        for key in failing:
            sent = await bench.commands_sent(saga_id_for("charge_and_ship", key))
            assert sent[-2:] == ["payment.RefundPayment", "inventory.ReleaseStock"], sent
        rows = {r["order_id"]: r["status"] for r in await shipping.shipments(failing + passing)}
        assert rows == {**dict.fromkeys(failing, "failed"), **dict.fromkeys(passing, "shipped")}
        assert await bench.dead_letters(0, timeout=0) == []


async def test_the_node_shipping_serves_a_child_saga_as_it_is(bench: Bench) -> None:
    """Issue 28, items 2 and 7: the child saga's shipping step is an ordinary command to it; its
    failures compensate the child (the stock given back) and then the parent (the refund)."""
    async with node_shipping(
        bench, "tests.integration.child_shipping", PARTICIPANT_FAIL_RATE=str(FAIL_RATE)
    ) as shipping:
        failing, passing = order_ids(failing=3, passing=5)
        for key in failing + passing:
            await bench.place_order(key)

        parents = await bench.finished("charge_then_fulfil", failing + passing, timeout=90)
        children = await bench.finished("fulfilment", failing + passing, timeout=30)

        for sagas in (parents, children):
            assert {k: sagas[k].status for k in passing} == dict.fromkeys(passing, Status.COMPLETED)
            assert {k: sagas[k].status for k in failing} == dict.fromkeys(failing, Status.COMPENSATED)
        for key in failing:
            assert (await bench.commands_sent(saga_id_for("charge_then_fulfil", key)))[-1] == (
                "payment.RefundPayment"
            )
            sent = await bench.commands_sent(saga_id_for("fulfilment", key))
            assert sent[-2:] == ["inventory.ReleaseStock", "saga.ChildCompensated"], sent
        rows = {r["order_id"]: r["status"] for r in await shipping.shipments(failing + passing)}
        assert rows == {**dict.fromkeys(failing, "failed"), **dict.fromkeys(passing, "shipped")}
        assert await bench.dead_letters(0, timeout=0) == []


async def test_invalid_commands_are_dead_lettered_and_the_node_shipping_keeps_serving(bench: Bench) -> None:
    async with node_shipping(bench) as shipping:
        assert bench.channel is not None
        commands = await bench.channel.get_exchange(f"{bench.namespace}.commands")
        saga_id = str(uuid.uuid4())
        good = {"order_id": "o-1", "lines": [{"sku": "s", "quantity": 1}]}
        invalid = {
            "not json": (b"{ not json", "shipping.ShipOrder", saga_id),
            "not an object": (b"[1, 2]", "shipping.ShipOrder", saga_id),
            "no lines": (b'{"order_id": "o-1"}', "shipping.ShipOrder", saga_id),
            "a line without quantity": (
                b'{"order_id": "o-1", "lines": [{"sku": "s"}]}',
                "shipping.ShipOrder",
                saga_id,
            ),
            "an order_id not a string": (b'{"order_id": 7, "lines": []}', "shipping.ShipOrder", saga_id),
            "no correlation_id": (orjson.dumps(good), "shipping.ShipOrder", None),
            "a type shipping does not take": (orjson.dumps(good), "shipping.CancelOrder", saga_id),
        }
        sent: dict[str, str] = {}
        for what, (body, type_, correlation_id) in invalid.items():
            sent[what] = str(uuid.uuid4())
            await commands.publish(
                aio_pika.Message(
                    body,
                    type=type_,
                    message_id=sent[what],
                    correlation_id=correlation_id,
                    content_type="application/json",
                ),
                routing_key=type_,
            )

        rows = await bench.dead_letters(len(invalid))

        assert sorted(r["message_id"] for r in rows) == sorted(sent.values())
        for row in rows:
            assert (row["source"], row["reason"]) == ("broker", "rejected")
            assert row["detail"] == f"rejected in queue {bench.namespace}.shipping, 1 time"
        assert shipping.process is not None and shipping.process.popen.poll() is None
        output = shipping.output()
        assert output.count(f"rejected to {bench.namespace}.dead") == len(invalid)
        answered = await shipping.query(
            "SELECT message_id FROM shipping_node.inbox WHERE message_id = ANY($1::text[])",
            list(sent.values()),
        )
        assert answered == []  # nothing of a rejected command is remembered
        # and it goes on serving
        key = keys()
        await bench.place_order(key)
        sagas = await bench.finished("order", [key])
        assert sagas[key].status == Status.COMPLETED
        assert [r["status"] for r in await shipping.shipments([key])] == ["shipped"]
        assert shipping.process.stop() == 0  # SIGTERM: an orderly stop
        assert shipping.output().rstrip().endswith("info shipping-node: stopped")
        password = urlsplit(bench.amqp_url).password
        assert password and f":{password}@" not in shipping.output()


async def test_the_node_shipping_exits_1_when_it_loses_the_broker(
    private_bench: Bench, private_broker: PrivateBroker
) -> None:
    """No reconnection: it exits 1, for a supervisor to start it again; its unacked commands
    went back to the queue with the connection."""
    require_node_modules()
    async with participant_database(private_bench) as database_url:
        shipping = NodeShipping(private_bench, database_url, {})
        process = await shipping.start()
        await asyncio.to_thread(private_broker.stop_app)
        assert await asyncio.to_thread(process.popen.wait, 30) == 1
        assert "lost the connection to RabbitMQ" in shipping.output()


async def test_kill_9_mid_flow_and_resent_commands_make_one_shipment_per_order(bench: Bench) -> None:
    async with node_shipping(bench, PARTICIPANT_CONCURRENCY="20") as shipping:
        tap = await Tap.on(bench)
        orders = [keys() for _ in range(40)]
        for key in orders:
            await bench.place_order(key)

        async def some_shipped() -> bool:
            return len(await shipping.shipments(orders)) >= 5

        await eventually(some_shipped, "5 shipments")
        assert shipping.process is not None
        shipping.process.kill()  # SIGKILL, in the middle of the flow
        await shipping.start()
        sagas = await bench.finished("order", orders, timeout=120)

        assert {k: s.status for k, s in sagas.items()} == dict.fromkeys(orders, Status.COMPLETED)
        rows = {r["order_id"]: r for r in await shipping.shipments(orders)}
        assert sorted(rows) == sorted(orders)
        assert len(await shipping.shipments(orders)) == len(orders)

        # Re-sent commands, after another SIGKILL and restart: each one twice at once, so the two
        # copies are served concurrently (prefetch 20) and meet on the inbox's unique key.
        resent = [tap.command_for(key) for key in orders[:5]]
        before = {c.message_id: list(tap.replies_to(c)) for c in resent}
        shipping.process.kill()
        await shipping.start()
        for command in resent:
            await send_command(bench, command)
            await send_command(bench, command)

        async def answered_again() -> bool:
            return all(len(tap.replies_to(c)) >= len(before[c.message_id]) + 2 for c in resent)

        await eventually(answered_again, "two more replies to each re-sent command")
        for command in resent:
            replies = tap.replies_to(command)
            first = replies[0]
            assert first.type == "shipping.OrderShipped"
            assert command.message_id is not None
            assert first.message_id == reply_id(command.message_id, "shipping.OrderShipped")
            # same type, same reply message id, same body byte for byte (its random tracking id too)
            assert {(r.type, r.message_id, r.body) for r in replies} == {
                (first.type, first.message_id, first.body)
            }
            key = orjson.loads(command.body)["order_id"]
            assert orjson.loads(first.body) == {"order_id": key, "tracking_id": rows[key]["tracking_id"]}
        after = await shipping.shipments(orders)
        assert [(r["order_id"], r["tracking_id"]) for r in after] == [
            (k, rows[k]["tracking_id"]) for k in sorted(orders)
        ]
        inbox = await shipping.query(
            "SELECT message_id, count(*) AS n FROM shipping_node.inbox WHERE message_id = ANY($1::text[])"
            " GROUP BY message_id",
            [c.message_id for c in resent],
        )
        assert sorted((r["message_id"], r["n"]) for r in inbox) == sorted((c.message_id, 1) for c in resent)
        assert shipping.output().count("(repeated answer)") >= 2 * len(resent)
        # the orchestrator took the repeated replies as duplicates: nothing moved, nothing dead
        for key, saga in sagas.items():
            again = await bench.saga("order", key)
            assert again is not None and (again.status, again.version) == (saga.status, saga.version)
        assert await bench.dead_letters(0, timeout=0) == []


async def test_with_quorum_queues_the_node_shipping_declares_its_queue_as_the_orchestrator_does(
    bench: Bench,
) -> None:
    """ORCHESTRATOR_QUEUE_TYPE=quorum: the orchestrator declares the participant queues first, as
    quorum queues; the Node participant declaring them otherwise is refused by RabbitMQ."""
    require_node_modules()
    quorum = {"ORCHESTRATOR_QUEUE_TYPE": "quorum"}
    async with participant_database(bench) as database_url:
        await bench.start_orchestrator(env=quorum)
        tap = await Tap.on(bench)
        classic = NodeShipping(bench, database_url, {"ORCHESTRATOR_QUEUE_TYPE": "classic"})
        with pytest.raises(AssertionError, match="exited 2"):
            await classic.start()
        assert "PRECONDITION_FAILED" in classic.output()
        shipping = NodeShipping(bench, database_url, quorum)
        await shipping.start()
        assert "(quorum queue" in shipping.output()
        saga_id = str(uuid.uuid4())
        command = {"order_id": keys(), "lines": [{"sku": "s", "quantity": 2}]}
        message_id = str(uuid.uuid4())
        assert bench.channel is not None
        commands = await bench.channel.get_exchange(f"{bench.namespace}.commands")
        await commands.publish(
            aio_pika.Message(
                orjson.dumps(command),
                type="shipping.ShipOrder",
                message_id=message_id,
                correlation_id=saga_id,
                headers={"x-saga-id": saga_id, "x-workflow": "order", **TRACE},
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="shipping.ShipOrder",
        )

        async def replied() -> bool:
            return bool(tap.replies)

        await eventually(replied, "a reply")
        [reply] = tap.replies
        assert reply.message_id == reply_id(message_id, "shipping.OrderShipped")
        assert reply.correlation_id == saga_id
        # the trace context goes on from the command to its reply (docs/tracing.md)
        assert {k: reply.headers[k] for k in TRACE} == TRACE
        for process in bench.processes:  # before its database is dropped
            process.stop()
