"""An example participant, as a real process, against a broker that goes away (issue 17).

Every test here stops the broker, so they run on the session's private node, never the shared
one. Timing assertions are generous (the bound plus several seconds): they catch a shutdown that
waits for the broker to come back (35-60 s before the fix), not one that is a second late.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aio_pika.abc
import orjson
import pytest

from tests.integration.private_broker import PrivateBroker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0
#: what the bound may be overrun by in an assertion: process start-up, a loaded CI machine
MARGIN = 5.0
VARIABLES = (
    "PARTICIPANT_NEVER_ANSWER",
    "PARTICIPANT_DELAY",
    "PARTICIPANT_FAIL_RATE",
    "PARTICIPANT_SHUTDOWN_GRACE",
    "ORCHESTRATOR_NAMESPACE",
    "ORCHESTRATOR_AMQP_URL",
)
LINES = [{"sku": "APPLE", "quantity": 1}]


class Shipping:
    """One shipping participant on the private node, in a namespace of its own."""

    def __init__(self, broker: PrivateBroker, tmp_path: Path) -> None:
        self.broker = broker
        self.ns = f"test-shutdown-{uuid.uuid4().hex[:8]}"
        self.log = tmp_path / f"{self.ns}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *options: str, wait: bool = True) -> asyncio.subprocess.Process:
        env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
        with self.log.open("wb") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "participants", "shipping", "--namespace", self.ns),
                *("--amqp-url", self.broker.url, *options),
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        if wait:
            await self.wait_for_log("consuming ")
        return self.process

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process is not None
            if self.process.returncode is not None:
                raise AssertionError(f"exited {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"never logged {text!r}:\n{self.output()}")
            await asyncio.sleep(0.05)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def exit_code(self, timeout: float) -> int:
        """The exit code, or AssertionError (with the log) if it has not exited in time."""
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"still running after {timeout:g}s:\n{self.output()}") from None

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def send(self, connection: aio_pika.abc.AbstractConnection, count: int = 1) -> list[str]:
        """Publish ``count`` ShipOrder commands (confirmed); their saga ids."""
        channel = await connection.channel(publisher_confirms=True)
        commands = await channel.get_exchange(f"{self.ns}.commands")
        sagas = []
        for i in range(count):
            saga_id = str(uuid.uuid4())
            message = aio_pika.Message(
                orjson.dumps({"order_id": f"o-{i}", "lines": LINES}),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                type="shipping.ShipOrder",
                message_id=str(uuid.uuid4()),
                correlation_id=saga_id,
                headers={"x-saga-id": saga_id, "x-workflow": "order"},
            )
            await commands.publish(message, routing_key="shipping.ShipOrder")
            sagas.append(saga_id)
        await channel.close()
        return sagas


@contextlib.asynccontextmanager
async def connected(broker: PrivateBroker) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(broker.url, timeout=TIMEOUT)
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), TIMEOUT)


@pytest.fixture
async def shipping(private_broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[Shipping]:
    participant = Shipping(private_broker, tmp_path)
    try:
        yield participant
    finally:
        await participant.kill()


async def stop_app(broker: PrivateBroker) -> None:
    await asyncio.to_thread(broker.stop_app)


async def test_sigterm_with_the_broker_stopped_under_load_exits_within_the_bound(
    shipping: Shipping, private_broker: PrivateBroker
) -> None:
    grace = 3.0
    await shipping.start("--shutdown-grace", str(grace), "--delay", "30")
    async with connected(private_broker) as connection:
        await shipping.send(connection, count=5)
    await asyncio.sleep(0.3)  # delivered: the five wait out their delay, unacked
    await stop_app(private_broker)

    started = time.monotonic()
    shipping.signal()
    code = await shipping.exit_code(grace + MARGIN)
    elapsed = time.monotonic() - started

    assert code == 0, shipping.output()
    assert elapsed < grace + MARGIN, elapsed
    assert ": stopped" in shipping.output()
    # Unacked, so the broker kept them: back in the queue for the next participant.
    await asyncio.to_thread(private_broker.start_app)
    async with connected(private_broker) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{shipping.ns}.shipping", passive=True)
        assert queue.declaration_result.message_count == 5


async def test_sigterm_with_the_broker_stopped_and_nothing_in_flight(
    shipping: Shipping, private_broker: PrivateBroker
) -> None:
    grace = 2.0
    await shipping.start("--shutdown-grace", str(grace))
    await stop_app(private_broker)
    await asyncio.sleep(0.5)

    started = time.monotonic()
    shipping.signal(signal.SIGINT)
    assert await shipping.exit_code(grace + MARGIN) == 0, shipping.output()
    assert time.monotonic() - started < grace + MARGIN


async def test_the_broker_stopped_and_started_again_the_participant_answers(
    shipping: Shipping, private_broker: PrivateBroker
) -> None:
    await shipping.start()
    await stop_app(private_broker)
    await asyncio.sleep(1)
    await asyncio.to_thread(private_broker.start_app)

    async with connected(private_broker) as connection:
        channel = await connection.channel()
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(f"{shipping.ns}.events", "#")  # durable: it outlived the stop
        (saga_id,) = await shipping.send(connection)
        # aio-pika's robust connection retries every 5 s: allow a few rounds.
        reply = None
        deadline = time.monotonic() + 30
        while reply is None and time.monotonic() < deadline:
            reply = await tap.get(no_ack=True, fail=False)
            if reply is None:
                await asyncio.sleep(0.1)

    assert reply is not None, shipping.output()
    assert reply.type == "shipping.OrderShipped"
    assert reply.correlation_id == saga_id
    assert "reconnected" in shipping.output()
    assert shipping.process is not None and shipping.process.returncode is None


async def test_sigterm_with_the_broker_frozen_exits_within_the_bound(
    shipping: Shipping, private_broker: PrivateBroker
) -> None:
    """A broker that keeps the connection open but never answers: every call of the shutdown
    (cancel, close) would wait for it, so each gets only the time left of the one bound."""
    grace = 3.0
    await shipping.start("--shutdown-grace", str(grace))
    private_broker.pause()

    started = time.monotonic()
    shipping.signal()
    code = await shipping.exit_code(grace + MARGIN)
    elapsed = time.monotonic() - started

    assert code == 0, shipping.output()
    assert grace - 0.5 < elapsed < grace + MARGIN, elapsed
    assert "bound ran out, abandoned cancelling the consumer" in shipping.output()


async def test_a_second_sigterm_exits_at_once(shipping: Shipping, private_broker: PrivateBroker) -> None:
    """The first shutdown waits on a frozen broker. Once it has ended, the interpreter is
    finalizing and the default action of SIGTERM is back: a test that signals then proves
    nothing, so the broker is checked frozen before the first signal."""
    grace = 60.0  # long enough that only the second signal can explain a quick exit
    await shipping.start("--shutdown-grace", str(grace))
    private_broker.pause()  # so that the first shutdown waits on the broker
    await asyncio.to_thread(private_broker.wait_frozen)

    shipping.signal()
    await shipping.wait_for_log("stopping:")
    await asyncio.sleep(0.5)
    assert shipping.process is not None and shipping.process.returncode is None, shipping.output()
    started = time.monotonic()
    shipping.signal()

    assert await shipping.exit_code(MARGIN) == 128 + signal.SIGTERM, shipping.output()
    assert time.monotonic() - started < MARGIN
    assert "SIGTERM again: exiting at once (143)" in shipping.output()


async def test_sigterm_while_connecting_to_a_frozen_broker_exits_at_once(
    shipping: Shipping, private_broker: PrivateBroker
) -> None:
    """The kernel accepts the TCP connection, the AMQP handshake never ends: the signal must not
    wait out the connect timeout (15 s)."""
    private_broker.pause()
    await shipping.start("--shutdown-grace", "2", wait=False)
    await shipping.wait_for_log("connecting to RabbitMQ at")
    await asyncio.sleep(0.5)  # the handshake hangs

    started = time.monotonic()
    shipping.signal()

    assert await shipping.exit_code(MARGIN) == 0, shipping.output()
    assert time.monotonic() - started < MARGIN
    assert "stopped before reaching RabbitMQ" in shipping.output()


async def test_sigterm_while_the_database_never_answers_exits_at_once(
    shipping: Shipping, private_broker: PrivateBroker
) -> None:
    """A database that accepts the connection and never answers: the signal must not wait out the
    connect timeout (10 s) of the start."""
    async with silent_server() as (port, accepted):
        url = f"postgresql://postgres@127.0.0.1:{port}/participants"
        await shipping.start("--shutdown-grace", "2", "--database-url", url, wait=False)
        deadline = time.monotonic() + 20
        while not accepted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert accepted, shipping.output()

        started = time.monotonic()
        shipping.signal()
        assert await shipping.exit_code(MARGIN) == 0, shipping.output()
        assert time.monotonic() - started < MARGIN
        assert "stopped before reaching the database" in shipping.output()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A TCP port that accepts connections and never sends a byte: a hung server."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        for writer in accepted:
            writer.close()
        server.close()
