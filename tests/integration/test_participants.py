"""The example participants against a real RabbitMQ, seen only through the wire contract.

Each rig owns a random namespace and declares the orchestrator's side of the topology itself, so
a participant whose queue arguments drifted from the orchestrator's fails here (PRECONDITION_FAILED)
instead of in production; the participants run as real subprocesses, as they would be deployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import orjson
import pytest
import pytest_asyncio

pytestmark = pytest.mark.integration

AMQP_URL = os.environ.get("ORCHESTRATOR_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0
SERVICES = ("inventory", "payment", "shipping", "buyer", "seller", "bank")
DEAD_LETTER_ARGUMENTS = "x-dead-letter-exchange"
INJECTION_VARIABLES = (
    "PARTICIPANT_NEVER_ANSWER",
    "PARTICIPANT_DELAY",
    "PARTICIPANT_FAIL_RATE",
    "INVENTORY_OUT_OF_STOCK",
    "PAYMENT_DECLINE_OVER",
    "BUYER_REFUSE_OVER",
    "ORCHESTRATOR_NAMESPACE",
)


def expected_reply_id(command_message_id: str, reply_type: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{command_message_id}:{reply_type}"))


class Rig:
    """One namespace: the orchestrator-side topology, a reply tap on the events exchange, cleanup."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, tmp_path: Path) -> None:
        self.ns = f"test-participants-{uuid.uuid4().hex[:10]}"
        self.connection = connection
        self.tmp_path = tmp_path
        self.replies: defaultdict[str, asyncio.Queue[aio_pika.abc.AbstractIncomingMessage]] = defaultdict(
            asyncio.Queue
        )
        self.dead: list[aio_pika.abc.AbstractIncomingMessage] = []
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.logs: dict[str, Path] = {}

    async def declare(self) -> None:
        # A plain connection on purpose: a robust channel answers passive declares from its cache,
        # which would freeze the consumer and message counts polled below.
        self.channel = await self.connection.channel()
        ns, topic = self.ns, aio_pika.ExchangeType.TOPIC
        self.commands = await self.channel.declare_exchange(f"{ns}.commands", topic, durable=True)
        self.events = await self.channel.declare_exchange(f"{ns}.events", topic, durable=True)
        dead = await self.channel.declare_exchange(f"{ns}.dead", aio_pika.ExchangeType.FANOUT, durable=True)
        self.dead_letters = await self.channel.declare_queue(f"{ns}.dead-letter", durable=True)
        await self.dead_letters.bind(dead)
        arguments: dict[str, Any] = {DEAD_LETTER_ARGUMENTS: f"{ns}.dead"}
        quorum: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-delivery-limit": 5,
            "x-dead-letter-exchange": f"{ns}.dead",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        orchestrator = await self.channel.declare_queue(
            f"{ns}.orchestrator.events", durable=True, arguments=quorum
        )
        await orchestrator.bind(self.events, "#")
        for service in SERVICES:
            queue = await self.channel.declare_queue(f"{ns}.{service}", durable=True, arguments=arguments)
            await queue.bind(self.commands, f"{service}.#")
        tap = await self.channel.declare_queue(f"{ns}.test-tap", exclusive=True)
        await tap.bind(self.events, "#")
        await tap.consume(self._tapped, no_ack=True)

    async def _tapped(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await self.replies[message.correlation_id or ""].put(message)

    async def start(self, service: str, *options: str) -> asyncio.subprocess.Process:
        env = {k: v for k, v in os.environ.items() if k not in INJECTION_VARIABLES}
        log = self.tmp_path / f"{self.ns}-{service}.log"
        self.logs[service] = log
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "participants", service, "--namespace", self.ns),
                *("--amqp-url", AMQP_URL, *options),
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        self.processes[service] = process
        return process

    async def wait_ready(self, *services: str) -> None:
        """Wait until each service consumes its queue, so timeouts below measure answers only."""

        async def ready(service: str) -> None:
            while True:
                queue = await self.channel.declare_queue(f"{self.ns}.{service}", passive=True)
                assert queue.declaration_result.consumer_count is not None
                if queue.declaration_result.consumer_count > 0:
                    return
                process = self.processes[service]
                assert process.returncode is None, f"{service} exited: {self.log_of(service)}"
                await asyncio.sleep(0.05)

        for service in services:
            await asyncio.wait_for(ready(service), TIMEOUT)

    async def stop(self, service: str) -> int:
        process = self.processes.pop(service)
        if process.returncode is None:
            process.terminate()
        try:
            return await asyncio.wait_for(process.wait(), TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise

    def log_of(self, service: str) -> str:
        return self.logs[service].read_text(errors="replace")

    async def send(
        self,
        command_type: str,
        body: dict[str, Any] | bytes,
        *,
        message_id: str | None = None,
        saga_id: str | None = None,
        workflow: str = "order",
        **properties: Any,
    ) -> tuple[str, str]:
        message_id = message_id or str(uuid.uuid4())
        saga_id = saga_id or str(uuid.uuid4())
        message = aio_pika.Message(
            body=body if isinstance(body, bytes) else orjson.dumps(body),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            type=command_type,
            message_id=message_id,
            correlation_id=saga_id,
            headers={"x-saga-id": saga_id, "x-workflow": workflow},
        )
        for name, value in properties.items():
            setattr(message, name, value)
        await self.commands.publish(message, routing_key=command_type)
        return message_id, saga_id

    async def reply(self, saga_id: str, timeout: float = TIMEOUT) -> aio_pika.abc.AbstractIncomingMessage:
        return await asyncio.wait_for(self.replies[saga_id].get(), timeout)

    async def ask(
        self, command_type: str, body: dict[str, Any], **kwargs: Any
    ) -> tuple[aio_pika.abc.AbstractIncomingMessage, dict[str, Any]]:
        _, saga_id = await self.send(command_type, body, **kwargs)
        reply = await self.reply(saga_id)
        return reply, orjson.loads(reply.body)

    async def dead_lettered(self, message_id: str) -> aio_pika.abc.AbstractIncomingMessage:
        async def find() -> aio_pika.abc.AbstractIncomingMessage:
            while True:
                for message in self.dead:
                    if message.message_id == message_id:
                        return message
                got = await self.dead_letters.get(no_ack=True, fail=False)
                if got is None:
                    await asyncio.sleep(0.05)
                else:
                    self.dead.append(got)

        return await asyncio.wait_for(find(), TIMEOUT)

    async def ready_count(self, service: str) -> int:
        queue = await self.channel.declare_queue(f"{self.ns}.{service}", passive=True)
        assert queue.declaration_result.message_count is not None
        return queue.declaration_result.message_count

    async def close(self) -> None:
        for service in list(self.processes):
            with contextlib.suppress(Exception):
                await self.stop(service)
        channel = await self.connection.channel()
        for queue in (*SERVICES, "orchestrator.events", "dead-letter", "test-tap"):
            await channel.queue_delete(f"{self.ns}.{queue}")
        for exchange in ("commands", "events", "dead"):
            await channel.exchange_delete(f"{self.ns}.{exchange}")
        await channel.close()


@contextlib.asynccontextmanager
async def open_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    connection = await asyncio.wait_for(aio_pika.connect(AMQP_URL), TIMEOUT)
    rig = Rig(connection, tmp_path)
    try:
        await rig.declare()
        yield rig
    finally:
        try:
            await asyncio.wait_for(rig.close(), 3 * TIMEOUT)
        finally:
            await connection.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    """All six services in one namespace, with the injection options the tests below rely on."""
    async with open_rig(tmp_path_factory.mktemp("participants")) as rig:
        await asyncio.gather(
            rig.start("inventory", "--out-of-stock", "GONE-1,GONE-2"),
            rig.start("payment", "--decline-over", "10000"),
            rig.start("shipping"),
            rig.start("buyer", "--refuse-over", "50000"),
            rig.start("seller"),
            rig.start("bank"),
        )
        await rig.wait_ready(*SERVICES)
        yield rig


@pytest_asyncio.fixture(loop_scope="session")
async def own_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A namespace for one test whose participants run with options the shared rig must not have."""
    async with open_rig(tmp_path) as rig:
        yield rig


LINES = [{"sku": "APPLE", "quantity": 2}, {"sku": "PEAR", "quantity": 1}]


async def test_reply_carries_the_contract_properties(rig: Rig) -> None:
    message_id, saga_id = await rig.send("inventory.ReserveStock", {"order_id": "o-1", "lines": LINES})
    reply = await rig.reply(saga_id)

    assert reply.exchange == f"{rig.ns}.events"
    assert reply.routing_key == reply.type == "inventory.StockReserved"
    assert reply.correlation_id == saga_id
    assert reply.message_id == expected_reply_id(message_id, "inventory.StockReserved")
    assert reply.content_type == "application/json"
    assert reply.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert reply.headers == {"x-saga-id": saga_id, "x-workflow": "order"}
    body = orjson.loads(reply.body)
    assert body["order_id"] == "o-1"
    assert isinstance(body["reservation_id"], str) and body["reservation_id"]


async def test_a_resent_command_gets_the_same_reply(rig: Rig) -> None:
    message_id, saga_id = await rig.send("payment.ChargePayment", _charge("o-dup", 1500))
    first = await rig.reply(saga_id)
    await rig.send("payment.ChargePayment", _charge("o-dup", 1500), message_id=message_id, saga_id=saga_id)
    second = await rig.reply(saga_id)

    assert first.type == second.type == "payment.PaymentCharged"
    assert first.message_id == second.message_id == expected_reply_id(message_id, "payment.PaymentCharged")
    assert first.body == second.body


async def test_a_new_command_for_the_same_order_is_a_new_reply(rig: Rig) -> None:
    first, _ = await rig.ask("inventory.ReleaseStock", {"order_id": "o-2"})
    second, _ = await rig.ask("inventory.ReleaseStock", {"order_id": "o-2"})
    assert first.type == second.type == "inventory.StockReleased"
    assert first.message_id != second.message_id


async def test_out_of_stock_injection(rig: Rig) -> None:
    lines = [{"sku": "APPLE", "quantity": 1}, {"sku": "GONE-2", "quantity": 3}]
    reply, body = await rig.ask("inventory.ReserveStock", {"order_id": "o-3", "lines": lines})
    assert reply.type == "inventory.OutOfStock"
    assert body == {"order_id": "o-3", "sku": "GONE-2"}


@pytest.mark.parametrize(
    ("amount", "reply_type"), [(10000, "payment.PaymentCharged"), (10001, "payment.PaymentDeclined")]
)
async def test_decline_injection(rig: Rig, amount: int, reply_type: str) -> None:
    reply, body = await rig.ask("payment.ChargePayment", _charge("o-4", amount))
    assert reply.type == reply_type
    assert body["order_id"] == "o-4"
    assert isinstance(body.get("charge_id", body.get("reason")), str)


async def test_order_saga_compensations_and_shipping(rig: Rig) -> None:
    reply, body = await rig.ask("payment.RefundPayment", {"order_id": "o-5"})
    assert (reply.type, body) == ("payment.PaymentRefunded", {"order_id": "o-5"})
    reply, body = await rig.ask("shipping.ShipOrder", {"order_id": "o-5", "lines": LINES})
    assert reply.type == "shipping.OrderShipped"
    assert body["order_id"] == "o-5" and isinstance(body["tracking_id"], str)


async def test_escrow_participants(rig: Rig) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("buyer.RequestSignature", {"escrow_id": "e-1", "amount_cents": 700}, "buyer.BuyerSigned"),
        ("seller.RequestSignature", {"escrow_id": "e-1"}, "seller.SellerSigned"),
        ("seller.VoidDocuments", {"escrow_id": "e-1"}, "seller.DocumentsVoided"),
        (
            "bank.CollectFunds",
            {"escrow_id": "e-1", "buyer_id": "b-1", "amount_cents": 700},
            "bank.FundsReceived",
        ),
        ("bank.ReturnFunds", {"escrow_id": "e-1"}, "bank.FundsReturned"),
        (
            "bank.ReleaseFunds",
            {"escrow_id": "e-1", "seller_id": "s-1", "amount_cents": 700},
            "bank.FundsReleased",
        ),
    ]
    for command_type, command, reply_type in cases:
        reply, body = await rig.ask(command_type, command, workflow="escrow")
        assert reply.type == reply_type, command_type
        assert body["escrow_id"] == "e-1"


@pytest.mark.parametrize(
    ("amount", "reply_type"), [(50000, "buyer.BuyerSigned"), (50001, "buyer.BuyerRefused")]
)
async def test_refuse_injection(rig: Rig, amount: int, reply_type: str) -> None:
    command = {"escrow_id": "e-2", "amount_cents": amount}
    reply, body = await rig.ask("buyer.RequestSignature", command, workflow="escrow")
    assert reply.type == reply_type
    assert body["escrow_id"] == "e-2"
    if reply_type == "buyer.BuyerRefused":
        assert isinstance(body["reason"], str)


async def test_a_signature_request_without_an_amount_is_dead_lettered(rig: Rig) -> None:
    body = orjson.dumps({"escrow_id": "e-3"})
    message_id, saga_id = await rig.send("buyer.RequestSignature", body, workflow="escrow")
    dead = await rig.dead_lettered(message_id)
    assert dead.body == body
    assert dead.correlation_id == saga_id
    assert dead.headers["x-participant"] == "buyer"
    assert "amount_cents" in str(dead.headers["x-participant-reason"])
    assert dead.headers["x-original-exchange"] == f"{rig.ns}.commands"
    assert "amount_cents" in rig.log_of("buyer")

    reply, _ = await rig.ask(
        "buyer.RequestSignature", {"escrow_id": "e-3", "amount_cents": 1}, workflow="escrow"
    )
    assert reply.type == "buyer.BuyerSigned"
    assert rig.processes["buyer"].returncode is None


@pytest.mark.parametrize(
    ("body", "properties"),
    [
        pytest.param(b"not json at all", {}, id="not-json"),
        pytest.param(b"[1, 2]", {}, id="not-an-object"),
        pytest.param(orjson.dumps({"order_id": 7, "lines": []}), {}, id="bad-schema"),
        pytest.param(orjson.dumps({"order_id": "o-6"}), {"type": "inventory.CountStock"}, id="unknown-type"),
        pytest.param(orjson.dumps({"order_id": "o-6", "lines": []}), {"type": None}, id="no-type"),
    ],
)
async def test_unparsable_command_is_dead_lettered_and_the_service_goes_on(
    rig: Rig, body: bytes, properties: dict[str, Any]
) -> None:
    message_id, saga_id = await rig.send("inventory.ReserveStock", body, **properties)
    dead = await rig.dead_lettered(message_id)
    assert dead.body == body
    assert dead.correlation_id == saga_id
    # published to {ns}.dead by the kit with its reason (docs/protocol.md section 9)
    assert dead.headers["x-participant"] == "inventory"
    assert str(dead.headers["x-participant-reason"]).startswith("invalid command: ")
    assert dead.headers["x-original-routing-key"] == "inventory.ReserveStock"

    reply, reply_body = await rig.ask("inventory.ReserveStock", {"order_id": "o-7", "lines": LINES})
    assert reply.type == "inventory.StockReserved"
    assert reply_body["order_id"] == "o-7"
    assert rig.processes["inventory"].returncode is None


async def test_delay_does_not_hold_back_other_commands(own_rig: Rig) -> None:
    await own_rig.start("shipping", "--delay", "1.0")
    await own_rig.wait_ready("shipping")
    started = time.monotonic()
    sagas = [
        (await own_rig.send("shipping.ShipOrder", {"order_id": f"o-{i}", "lines": LINES}))[1]
        for i in range(5)
    ]
    replies = await asyncio.gather(*(own_rig.reply(saga) for saga in sagas))
    elapsed = time.monotonic() - started

    assert {reply.type for reply in replies} == {"shipping.OrderShipped"}
    assert 0.9 <= elapsed < 3.0, elapsed


async def test_never_answer_acks_without_replying_and_sigterm_stops_cleanly(own_rig: Rig) -> None:
    await own_rig.start("seller", "--never-answer")
    await own_rig.wait_ready("seller")
    _, saga_id = await own_rig.send("seller.RequestSignature", {"escrow_id": "e-4"}, workflow="escrow")
    with pytest.raises(TimeoutError):
        await own_rig.reply(saga_id, timeout=1.5)

    assert await own_rig.stop("seller") == 0
    # Had the command not been acked, stopping would have put it back in the queue.
    assert await own_rig.ready_count("seller") == 0
    assert "-> no answer (never-answer)" in own_rig.log_of("seller")


async def test_stopping_during_a_delay_requeues_the_command(own_rig: Rig) -> None:
    await own_rig.start("bank", "--delay", "30")
    await own_rig.wait_ready("bank")
    await own_rig.send("bank.ReturnFunds", {"escrow_id": "e-5"}, workflow="escrow")

    async def in_flight() -> None:
        while "consuming" not in own_rig.log_of("bank") or await own_rig.ready_count("bank") != 0:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(in_flight(), TIMEOUT)
    await asyncio.sleep(0.3)
    started = time.monotonic()
    assert await own_rig.stop("bank") == 0
    assert time.monotonic() - started < 5

    async def requeued() -> None:
        while await own_rig.ready_count("bank") != 1:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(requeued(), TIMEOUT)


async def test_unreachable_broker_exits_2_with_one_masked_line() -> None:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "participants", "inventory"),
        *("--amqp-url", "amqp://guest:hunter2@127.0.0.1:1/"),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    text = stderr.decode()

    assert process.returncode == 2
    assert stdout == b""
    # where it connects (INFO), then why it cannot: one error line, the password masked in both
    lines = text.strip().splitlines()
    assert [line.split(" ", 3)[2] for line in lines] == ["INFO", "ERROR"], text
    assert "connecting to RabbitMQ at amqp://guest:***@127.0.0.1:1/" in lines[0]
    assert "cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/" in lines[1]
    assert "hunter2" not in text and "Traceback" not in text


def _charge(order_id: str, amount: int) -> dict[str, Any]:
    return {"order_id": order_id, "customer_id": "c-1", "amount_cents": amount}
