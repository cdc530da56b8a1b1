"""``raw_amqp.RawPublisher`` against the real RabbitMQ, read back with aio-pika as our services do.

What aio-pika 10 / aiormq 7 / pamqp 4 do with the bytes another client can send:

* a shortstr property (``type``, ``message_id``, ...) that is not valid UTF-8: pamqp cannot
  decode the ContentHeader frame (``UnicodeDecodeError`` -> ``pamqp.exceptions.UnmarshalingException``),
  aiormq's reader dies with ``aiormq.exceptions.InvalidFrameError`` (a ``ProtocolSyntaxError``) and
  the whole connection closes with it: the consumer callback never runs, and the close callbacks get
  that exception. The broker requeues the unacked delivery, so the message is still in the queue,
  ready to kill the next consumer the same way. A header *key* that is not valid UTF-8 does the same.
* a longstr header value ('S') that is not valid UTF-8: pamqp falls back to ``bytes``, so aio-pika
  delivers ``headers["x-workflow"] == b"\\xff\\xfe"`` (valid UTF-8 longstrs arrive as ``str``).
* a valid-UTF-8 shortstr with a NUL in it arrives as a ``str`` with the NUL.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
import pytest_asyncio

from orchestrator.adapters.amqp import broker as amqp_broker
from tests.integration.conftest import AMQP_URL
from tests.integration.raw_amqp import BrokerClosed, PublishReturned, RawPublisher

pytestmark = pytest.mark.integration


class Rig:
    """A throwaway direct exchange and queue (bound by the queue's name), deleted after the test."""

    def __init__(self) -> None:
        self.name = f"test-raw-{uuid.uuid4().hex[:8]}"

    async def declare(self) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(self.name, aio_pika.ExchangeType.DIRECT)
            queue = await channel.declare_queue(self.name)
            await queue.bind(exchange, routing_key=self.name)

    async def delete(self) -> None:
        connection = await aio_pika.connect(AMQP_URL)  # a fresh one: the test's may be dead
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(self.name)
            await channel.exchange_delete(self.name)

    async def ready(self) -> int:
        """Messages ready in the queue (a passive declare)."""
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.name, passive=True)
            assert queue.declaration_result.message_count is not None
            return queue.declaration_result.message_count

    async def publish(self, body: bytes = b"{}", **options: Any) -> None:
        async with RawPublisher(AMQP_URL) as publisher:
            await publisher.publish(self.name, self.name, body, **options)

    async def consume_one(self, timeout: float = 10) -> aio_pika.abc.AbstractIncomingMessage:
        """The next message, as an aio-pika consumer (basic.consume) receives it; acked."""
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(self.name)
            async with queue.iterator(timeout=timeout) as messages:
                async for message in messages:
                    await message.ack()
                    return message
        raise AssertionError("no message")


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    setup = Rig()
    await setup.declare()
    try:
        yield setup
    finally:
        await setup.delete()


async def test_str_properties_and_headers_arrive_as_published(rig: Rig) -> None:
    stamp = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    properties = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "priority": 5,
        "correlation_id": "corr-1",
        "reply_to": "replies",
        "expiration": "60000",
        "message_id": "msg-1",
        "timestamp": stamp,
        "type": "orders.OrderPlaced",
        "user_id": "guest",  # RabbitMQ checks it is the connection's user
        "app_id": "raw-test",
    }
    headers = {
        "x-workflow": "order",
        "x-count": 7,
        "x-big": 2**40,
        "x-ratio": 0.5,
        "x-flag": True,
        "x-nested": {"inner": "value", "list": [1, "two", {"three": 3}]},
        "x-none": None,
    }
    await rig.publish(b'{"order_id": "o-1"}', properties=properties, headers=headers)

    message = await rig.consume_one()

    assert message.body == b'{"order_id": "o-1"}'
    assert message.exchange == rig.name
    assert message.routing_key == rig.name
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.priority == 5
    assert message.correlation_id == "corr-1"
    assert message.reply_to == "replies"
    assert message.expiration == 60.0  # aio-pika turns the milliseconds into seconds
    assert message.message_id == "msg-1"
    assert message.timestamp == stamp
    assert message.type == "orders.OrderPlaced"
    assert message.user_id == "guest"
    assert message.app_id == "raw-test"
    assert message.headers == headers


@pytest.mark.parametrize(
    ("properties", "headers"),
    [
        pytest.param({"type": b"\xff\xfe"}, None, id="type-invalid-utf8"),
        pytest.param({"message_id": b"m-\xc3"}, None, id="message_id-truncated-utf8"),
        pytest.param({"correlation_id": b"\x80" * 255}, None, id="correlation_id-255-bytes"),
        pytest.param({"type": "ok"}, {b"x-\xff": "value"}, id="header-key-invalid-utf8"),
    ],
)
async def test_an_invalid_utf8_shortstr_arrives_with_the_orchestrator_s_tolerant_decoding(
    rig: Rig, properties: dict[str, Any], headers: dict[str | bytes, Any] | None
) -> None:
    """The broker takes the message. Plain aio-pika cannot decode its ContentHeader frame: aiormq's
    reader fails with ``InvalidFrameError`` (from pamqp's strict ``UnicodeDecodeError``), closes
    the whole connection, and the broker hands the message back to the next consumer, forever.
    Importing ``orchestrator.adapters.amqp.broker`` (as this test session does) makes pamqp decode such a
    ``shortstr`` with ``surrogateescape``: the message arrives, and the bytes are all there."""
    assert amqp_broker  # the import installs the tolerant decoding
    await rig.publish(b"{}", properties=properties, headers=headers)
    assert await rig.ready() == 1

    message = await rig.consume_one()

    for name, raw in properties.items():
        value = getattr(message, name)
        expected = raw if isinstance(raw, bytes) else raw.encode()
        assert isinstance(value, str) and value.encode("utf-8", "surrogateescape") == expected
    for key, value in (headers or {}).items():
        decoded = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
        assert message.headers[decoded] == value


async def test_an_invalid_utf8_longstr_header_arrives_as_bytes(rig: Rig) -> None:
    big = b"\xff" * 100_000
    headers = {
        "x-workflow": b"\xff\xfe",
        "x-big": big,
        "x-nested": {"raw": b"\xc3\x28", "text": "caf\u00e9".encode()},
        "x-array": [b"\xff", "ok"],
    }
    await rig.publish(
        b"{}",
        properties={"type": "orders.OrderPlaced", "correlation_id": b"with\x00nul"},
        headers=headers,
    )

    message = await rig.consume_one()

    assert message.headers["x-workflow"] == b"\xff\xfe"
    assert message.headers["x-big"] == big
    assert message.headers["x-nested"] == {"raw": b"\xc3\x28", "text": "caf\u00e9"}  # valid UTF-8: str
    assert message.headers["x-array"] == [b"\xff", "ok"]
    assert message.correlation_id == "with\x00nul"
    assert message.type == "orders.OrderPlaced"


async def test_a_body_of_several_frames_arrives_whole(rig: Rig) -> None:
    body = os.urandom(3 * 1024 * 1024)  # 3 MiB: 25 body frames of the default frame_max (128 KiB)

    await rig.publish(body, properties={"message_id": "big"})

    message = await rig.consume_one()
    assert message.message_id == "big"
    assert message.body == body


async def test_broker_refusals_are_raised(rig: Rig) -> None:
    async with RawPublisher(AMQP_URL) as publisher:
        with pytest.raises(PublishReturned) as returned:
            await publisher.publish(rig.name, "no-binding", b"x", mandatory=True)
        assert returned.value.reply_code == 312  # NO_ROUTE
        await publisher.publish(rig.name, rig.name, b"still usable")  # the channel survives a return

        with pytest.raises(BrokerClosed) as closed:
            await publisher.publish(f"{rig.name}-missing", rig.name, b"x")
        assert (closed.value.what, closed.value.reply_code) == ("channel", 404)
        with pytest.raises(BrokerClosed):
            await publisher.publish(rig.name, rig.name, b"x")  # the channel is gone
    assert await rig.ready() == 1


async def test_a_content_header_bigger_than_frame_max_closes_the_connection(rig: Rig) -> None:
    """A content header cannot be split: RabbitMQ answers 501 FRAME_ERROR (frame_too_large)."""
    async with RawPublisher(AMQP_URL) as publisher:
        with pytest.raises(BrokerClosed) as closed:
            await publisher.publish(rig.name, rig.name, b"x", headers={"x-huge": b"a" * 200_000})
    assert (closed.value.what, closed.value.reply_code) == ("connection", 501)
    assert "frame_too_large" in closed.value.reply_text
    assert await rig.ready() == 0
