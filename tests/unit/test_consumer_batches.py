"""The AMQP consumer's batches: what it hands out, and what it still hands out at a stop."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.adapters.amqp.broker import Delivery, QueueConsumer
from orchestrator.core.ingress import Envelope


def _delivery(tag: int) -> Delivery:
    channel: Any = object()
    return Delivery(Envelope(b"{}", message_id=f"m-{tag}"), channel, tag, False, 0.0, 2)


async def test_batches_hand_out_what_is_in_hand_then_at_a_stop_what_was_handed_out_already() -> None:
    consumer = QueueConsumer("amqp://unused", "queue", 10, "test")
    stopping = asyncio.Event()
    for tag in range(1, 4):
        consumer.inbound.put_nowait(_delivery(tag))
    seen: list[list[int]] = []

    async for batch in consumer.batches(2, stopping):
        seen.append([d.delivery_tag for d in batch])
        if len(seen) == 1:
            stopping.set()  # a stop while deliveries are still in hand: taken, not left to return
            consumer.inbound.put_nowait(_delivery(4))

    assert seen == [[1, 2], [3, 4]]
    assert consumer.inbound.empty()


async def test_batches_end_at_a_stop_with_nothing_in_hand() -> None:
    consumer = QueueConsumer("amqp://unused", "queue", 10, "test")
    stopping = asyncio.Event()

    async def stop_soon() -> None:
        await asyncio.sleep(0.01)
        stopping.set()

    stopper = asyncio.ensure_future(stop_soon())
    batches = [batch async for batch in consumer.batches(5, stopping)]
    await stopper

    assert batches == []


async def test_a_delivery_set_aside_holds_up_neither_the_queue_being_opened_nor_a_new_session() -> None:
    """Issue 27: a message waiting for a saga row another transaction holds stays unacked, but
    opening a queue (which waits for its first delivery to be settled) and a new session (which
    waits until nothing is in hand) go on without it; settled later, it is counted once."""
    consumer = QueueConsumer("amqp://unused", "queue", 10, "test")
    aside, other = _delivery(1), _delivery(2)
    consumer.unsettled = 2  # both in hand, as _hold leaves them
    consumer._all_settled.clear()
    opening = asyncio.get_running_loop().create_future()
    consumer._awaited[id(aside)] = opening

    consumer.set_aside([aside])
    waits_for_other = not consumer._all_settled.is_set()
    consumer.settled([other])
    after_other = consumer._all_settled.is_set()
    consumer.settled([aside])

    assert opening.done() and waits_for_other and after_other
    assert (consumer.unsettled, consumer._aside) == (0, set())
