"""Two orchestrator processes on one queue, every event sent twice: a message is decided once.

A redelivery can race its first delivery in another consumer (a second replica, or a consumer
whose connection died after the commit and before the ack). The second transaction waits for
the saga's lock; when it gets it, the inbox it read in the same statement is from before the
first one committed. The inbox row is what makes the second one fail and be retried, and the
retry sees the duplicate."""

from __future__ import annotations

import uuid
from collections import Counter

import aio_pika
import aio_pika.abc
import orjson
import pytest

from orchestrator.core.engine import reply_id_for, saga_id_for

from .conftest import Bench

pytestmark = pytest.mark.integration

ORDERS = 60


REPLIES = {
    "inventory.ReserveStock": ("inventory.StockReserved", "reservation_id"),
    "payment.ChargePayment": ("payment.PaymentCharged", "charge_id"),
    "shipping.ShipOrder": ("shipping.OrderShipped", "tracking_id"),
}


async def test_every_reply_sent_twice_to_two_processes_is_decided_once(bench: Bench) -> None:
    first = await bench.start_orchestrator()
    second = await bench.start_orchestrator()
    assert bench.channel is not None
    events = await bench.channel.get_exchange(f"{bench.namespace}.events")

    async def answer_twice(command: aio_pika.abc.AbstractIncomingMessage) -> None:
        """A participant whose publish was retried: every reply goes out twice, same id."""
        async with command.process():
            reply_type, field = REPLIES[str(command.type)]
            order_id = orjson.loads(command.body)["order_id"]
            reply = orjson.dumps({"order_id": order_id, field: f"{field}-{order_id}"})
            for _ in range(2):
                await events.publish(
                    aio_pika.Message(
                        reply,
                        type=reply_type,
                        message_id=reply_id_for(str(command.message_id), reply_type),  # section 6
                        correlation_id=command.correlation_id,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=reply_type,
                )

    for service in ("inventory", "payment", "shipping"):
        queue = await bench.channel.get_queue(f"{bench.namespace}.{service}")
        await queue.consume(answer_twice)
    keys = [f"twice-{uuid.uuid4().hex[:6]}-{i}" for i in range(ORDERS)]
    for key in keys:
        await bench.place_order(key)

    sagas = await bench.finished("order", keys, timeout=90)
    assert {s.status for s in sagas.values()} == {"completed"}
    assert bench.store is not None
    for key in keys:
        journal = await bench.store.journal(saga_id_for("order", key))
        taken = Counter(entry.message.message_id for entry in journal)
        assert max(taken.values()) == 1, (key, taken)
    assert first.popen.poll() is None and second.popen.poll() is None
    assert bench.verify().returncode == 0
