"""The broker-side guard: a message that kills the consuming connection every time it is handed
out reaches the quorum queue's delivery limit and is dead-lettered by RabbitMQ, and only it.

A dying connection returns every message it held and the quorum queue counts a delivery for each,
so the innocent messages handed out beside the poison climb with it, unless the consumer, after
each reconnect, takes the returned messages one at a time. The poison here kills the connection
the way a message the client cannot decode would (the consumer closes it when it sees the poison).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import aio_pika
import pytest
import pytest_asyncio

from orchestrator.adapters.amqp.broker import Delivery, QueueConsumer
from orchestrator.adapters.amqp.topology import ORCHESTRATOR_DELIVERY_LIMIT, Topology, declare

from .conftest import AMQP_URL, delete_namespace

pytestmark = pytest.mark.integration

GOOD = 1000


@pytest_asyncio.fixture
async def namespace() -> AsyncIterator[str]:
    ns = f"test-{uuid.uuid4().hex[:8]}"
    try:
        yield ns
    finally:
        await delete_namespace(ns)


async def test_one_poison_among_a_thousand_only_the_poison_is_dead_lettered(namespace: str) -> None:
    topology = Topology(namespace)
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    await declare(channel, topology, [])
    events = await channel.get_exchange(topology.events)
    for index in range(GOOD + 1):
        message_id = "poison" if index == 300 else f"good-{index}"
        message = aio_pika.Message(b"{}", message_id=message_id, type="x.Happened", delivery_mode=2)
        await events.publish(message, routing_key="x.Happened")

    consumer = QueueConsumer(AMQP_URL, topology.orchestrator_queue, prefetch=64, name="test-consumer")
    consumer.start()
    taken: set[str] = set()
    kills = 0
    deliveries: Counter[str] = Counter()
    deadline = time.monotonic() + 90
    try:
        while len(taken) < GOOD and time.monotonic() < deadline:
            try:
                first = await asyncio.wait_for(consumer.inbound.get(), 5)
            except TimeoutError:
                continue
            batch: list[Delivery] = [first]
            while not consumer.inbound.empty():
                batch.append(consumer.inbound.get_nowait())
            ids = [str(d.envelope.message_id) for d in batch]
            deliveries.update(ids)
            if "poison" in ids:  # as if the client could not decode it: the connection dies
                kills += 1
                connection_of_poison = consumer._connection
                assert connection_of_poison is not None
                await connection_of_poison.close()
                consumer.settled(batch)
                continue
            await consumer.ack(batch)
            taken.update(ids)
    finally:
        await consumer.close()

    assert taken == {f"good-{i}" for i in range(GOOD + 1) if i != 300}
    dead_queue = await channel.get_queue(topology.dead_letter_queue)
    dead: list[aio_pika.abc.AbstractIncomingMessage] = []
    deadline = time.monotonic() + 10
    while not dead and time.monotonic() < deadline:
        if (message := await dead_queue.get(fail=False, no_ack=True)) is not None:
            dead.append(message)
        else:
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # anything else dead-lettered would be there by now
    while (message := await dead_queue.get(fail=False, no_ack=True)) is not None:
        dead.append(message)
    await connection.close()

    assert [m.message_id for m in dead] == ["poison"]
    death = dead[0].headers["x-death"][0]  # type: ignore[index]
    assert death["reason"] == "delivery_limit"  # type: ignore[index,call-overload]
    assert kills == ORCHESTRATOR_DELIVERY_LIMIT + 1
    # Taken one at a time after each reconnect, no innocent message was handed out more than twice.
    assert max(n for message_id, n in deliveries.items() if message_id != "poison") <= 2
