"""The private RabbitMQ node that fault tests stop and start, and the shared one it must not touch."""

from __future__ import annotations

import asyncio
import os
import uuid

import aio_pika
import aio_pika.exceptions
import pytest

from tests.integration.private_broker import SHARED_PORT, PrivateBroker, PrivateBrokerError

pytestmark = pytest.mark.integration

SHARED_URL = os.environ.get("ORCHESTRATOR_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
CONNECT = 5.0


async def round_trip(url: str) -> None:
    """Publish one message through a queue and read it back: the broker works, not only listens."""
    connection = await aio_pika.connect(url, timeout=CONNECT)
    try:
        await round_trip_on(connection)
    finally:
        await connection.close()


async def round_trip_on(connection: aio_pika.abc.AbstractConnection) -> None:
    channel = await connection.channel()
    queue = await channel.declare_queue(f"test-private-broker-{uuid.uuid4().hex[:8]}", auto_delete=True)
    body = uuid.uuid4().bytes
    await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
    for _ in range(100):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            assert message.body == body
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the message never came back")
    await queue.delete(if_unused=False, if_empty=False)
    await channel.close()


async def test_the_node_is_its_own(private_broker: PrivateBroker) -> None:
    assert private_broker.port != SHARED_PORT
    assert not private_broker.node.startswith("rabbit@")
    assert private_broker.url == f"amqp://guest:guest@127.0.0.1:{private_broker.port}/"
    assert private_broker.start_seconds is not None
    await round_trip(private_broker.url)
    # No management plugin: the shared node's 15672 is not fought over, nor start time spent.
    assert "rabbitmq_management" not in private_broker.ctl("eval", "application:which_applications().")


async def test_stop_app_refuses_connections_and_start_app_brings_them_back(
    private_broker: PrivateBroker,
) -> None:
    shared = await aio_pika.connect(SHARED_URL, timeout=CONNECT)
    try:
        private = await aio_pika.connect(private_broker.url, timeout=CONNECT)
        closed = asyncio.get_running_loop().create_future()
        private.close_callbacks.add(lambda *_: closed.done() or closed.set_result(None))

        await asyncio.to_thread(private_broker.stop_app)

        await asyncio.wait_for(closed, CONNECT)  # the open connection is dropped...
        with pytest.raises((OSError, aio_pika.exceptions.AMQPError)):  # ...and new ones refused
            await aio_pika.connect(private_broker.url, timeout=CONNECT)
        # One connection to the shared broker, open all along: had it restarted, this would fail.
        await round_trip_on(shared)

        await asyncio.to_thread(private_broker.start_app)

        await round_trip(private_broker.url)
        await round_trip_on(shared)
        assert not shared.is_closed
    finally:
        await shared.close()


async def test_a_frozen_node_keeps_connections_but_answers_nothing(private_broker: PrivateBroker) -> None:
    connection = await aio_pika.connect(private_broker.url, timeout=CONNECT)
    try:
        private_broker.pause()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(connection.channel(), 1.0)
        assert not connection.is_closed
        private_broker.resume()
        await round_trip_on(connection)
    finally:
        private_broker.resume()
        await connection.close()


def test_a_node_that_cannot_start_says_why_and_leaves_nothing() -> None:
    broker = PrivateBroker()
    (broker.directory / "rabbitmq.conf").write_text("listeners.tcp.default = not-a-port\n")
    try:
        with pytest.raises(PrivateBrokerError) as error:
            broker.start(timeout=30)
    finally:
        broker.stop()

    assert "ended while starting" in str(error.value)
    assert "failed_to_prepare_configuration" in str(error.value)  # the tail of its log
    assert not broker.directory.exists()
