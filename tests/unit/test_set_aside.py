"""A message whose saga row another transaction holds is set aside, not failed (issue 27, case 4):
its batch goes on without it, later messages for that saga wait behind it in order, and it is
taken once the lock goes. Over the in-memory store, whose transactions are told which rows are
locked; the same against PostgreSQL: tests/integration/test_locked_rows.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.engine import SagaSnapshot, saga_id_for
from orchestrator.core.ingress import Envelope
from orchestrator.examples.contracts import OutOfStock, StockReserved
from orchestrator.service.batch import Verdict
from orchestrator.service.ports import Unpublishable
from tests.replies import reply_envelope
from tests.stepped_time import SteppedTime

from .test_batch_faults import orchestrator, start


class LockingStore(MemoryStore):
    """A memory store some of whose saga rows another session holds: a batch's read skips them
    and says so, as PostgreSQL's ``FOR UPDATE SKIP LOCKED`` read does."""

    def __init__(self) -> None:
        super().__init__()
        self.locked: set[str] = set()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with super().transaction() as tx:
            read = tx.read_batch

            async def skipping(
                saga_ids: Iterable[str], message_ids: Iterable[str]
            ) -> tuple[dict[str, SagaSnapshot], set[str]]:
                ids = set(saga_ids)
                current, seen = await read(ids - self.locked, message_ids)
                tx.busy.update(i for i in ids & self.locked if i in self.sagas)
                return current, seen

            tx.read_batch = skipping  # type: ignore[method-assign]
            yield tx


def reply(store: MemoryStore, order_id: str, out_of_stock: bool = False) -> Envelope:
    """The inventory's answer to the saga's ReserveStock, with its section 6 reply id."""
    saga_id = saga_id_for("order", order_id)
    if out_of_stock:
        return reply_envelope(store, OutOfStock(order_id, "sku-1"), saga_id)
    return reply_envelope(store, StockReserved(order_id, f"r-{order_id}"), saga_id)


class Consumer:
    """Records what the intake settles and how."""

    def __init__(self) -> None:
        self.unsettled = 0
        self.busy_since = 0.0
        self.acked: list[tuple[str | None, bool]] = []
        self.requeued: list[str | None] = []

    async def ack(self, deliveries: Sequence[Any], multiple_ok: bool = True) -> None:
        self.acked += [(d.envelope.message_id, multiple_ok) for d in deliveries]

    async def requeue(self, deliveries: Sequence[Any]) -> None:
        self.requeued += [d.envelope.message_id for d in deliveries]

    def set_aside(self, deliveries: Sequence[Any]) -> None:
        self.aside = [d.envelope.message_id for d in deliveries]


class Delivery:
    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.arrived = 0.0


async def test_a_locked_saga_s_message_waits_and_the_rest_of_its_batch_commits() -> None:
    store = LockingStore()
    app = orchestrator(store)
    assert await app.bus.handle([start("o-1"), start("o-2")], [0.0, 0.0])
    store.locked.add(saga_id_for("order", "o-1"))

    replies = [reply(store, "o-1"), reply(store, "o-2"), reply(store, "o-1", out_of_stock=True)]
    result = await app.bus.handle(replies, [0.0] * 3)

    assert result.verdicts == [Verdict.BUSY, Verdict.ACCEPTED, Verdict.BUSY]
    assert result.waits[0] == {saga_id_for("order", "o-1")} and result.waits[1] == frozenset()
    assert (await store.get_saga(saga_id_for("order", "o-1"))).state == "reserve"  # type: ignore[union-attr]
    assert (await store.get_saga(saga_id_for("order", "o-2"))).state == "charge"  # type: ignore[union-attr]
    assert not store.dead_letters


async def test_a_message_for_a_saga_held_behind_an_earlier_one_waits_though_its_row_is_free() -> None:
    store = LockingStore()
    app = orchestrator(store)
    await app.bus.handle([start("o-1")], [0.0])

    result = await app.bus.handle([reply(store, "o-1")], [0.0], held={saga_id_for("order", "o-1")})

    assert result.verdicts == [Verdict.BUSY]


async def test_the_intake_keeps_them_unacked_in_order_and_takes_them_once_the_lock_goes() -> None:
    store = LockingStore()
    app = orchestrator(store)
    consumer = Consumer()
    app.consumer = consumer  # type: ignore[assignment]
    await app.take([Delivery(start("o-1")), Delivery(start("o-2"))])
    store.locked.add(saga_id_for("order", "o-1"))

    r1, r2 = reply(store, "o-1"), reply(store, "o-2")
    await app.take([Delivery(r1), Delivery(r2)])
    store.locked.clear()  # free now, but the next one for o-1 must not overtake the one aside
    await app.take([Delivery(start("o-1", "m-again"))])
    held = app.set_aside
    [[first, _], [again, _]] = [[d.envelope.message_id, s] for d, s in app._aside]

    stopping = asyncio.Event()
    retry = asyncio.create_task(app.retry_aside(stopping))
    while app.set_aside:
        await asyncio.sleep(0.05)
    stopping.set()
    await retry

    assert held == 2 and (first, again) == (r1.message_id, "m-again")
    assert (r2.message_id, False) in consumer.acked  # one by one while something is aside
    assert [m for m, _ in consumer.acked][-2:] == [r1.message_id, "m-again"]  # in the order they came
    assert (await store.get_saga(saga_id_for("order", "o-1"))).state == "charge"  # type: ignore[union-attr]
    assert app.counts.messages_in == {"accepted": 5}  # none counted as busy, failed or dead


async def test_readiness_says_so_once_messages_wait_on_a_locked_row_past_the_stall_bound() -> None:
    """What README's "Crashes and outages" promises: unready only past ORCHESTRATOR_STALL_SECONDS,
    with the count and how long, while other sagas' batches commit meanwhile."""
    store = LockingStore()
    time = SteppedTime()
    app = orchestrator(store, stall_seconds=30, time=time)
    app.consumer = Consumer()  # type: ignore[assignment]
    await app.take([Delivery(start("o-1")), Delivery(start("o-2"))])
    store.locked.add(saga_id_for("order", "o-1"))
    await app.take([Delivery(reply(store, "o-1"))])

    soon = app.stalled()
    time.now += 20
    await app.take([Delivery(reply(store, "o-2"))])  # the others go on: a batch commits
    still = app.stalled()
    time.now += 15
    late = app.stalled()

    assert (soon, still) == (None, None)
    assert late == "1 messages wait for saga rows another transaction holds, the oldest for 35s"


class FencedStore(MemoryStore):
    """A store whose every fence is gone: each partition was handed over since."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with super().transaction() as tx:

            async def nothing_holds(fences: Any) -> set[tuple[int, int]]:
                return set()

            tx.fence = nothing_holds  # type: ignore[method-assign]
            yield tx


class HandOver:
    """The intake's hand-over: records what it publishes; with ``up`` False, the publisher is
    down and the broker takes nothing."""

    def __init__(self) -> None:
        self.handed: list[str | None] = []
        self.up = True

    async def __call__(self, delivery: Any) -> bool:
        if not self.up:
            raise Unpublishable("the publishing connection is down")
        self.handed.append(delivery.envelope.message_id)
        return True


async def test_a_message_of_a_partition_handed_over_since_goes_to_the_queue_all_replicas_share() -> None:
    """Not back to its partition's queue, whose delivery limit counts each return and which may
    hand it to this replica again (a consumer on it not yet cancelled): handed over, and acked."""
    store = FencedStore()
    app = orchestrator(store)
    consumer = Consumer()
    app.consumer = consumer  # type: ignore[assignment]
    app.hand_over = hand_over = HandOver()
    app.fence_of = lambda d: (3, 1) if d.envelope.message_id == "m-fenced" else None

    await app.take([Delivery(start("o-1", "m-fenced")), Delivery(start("o-2", "m-start"))])

    assert hand_over.handed == ["m-fenced"] and consumer.requeued == []
    assert sorted(m for m, _ in consumer.acked) == ["m-fenced", "m-start"]
    assert await store.get_saga(saga_id_for("order", "o-1")) is None  # nothing decided for it
    assert app.counts.messages_in == {"fenced": 1, "accepted": 1}


async def test_a_fenced_message_the_broker_would_not_take_is_set_aside_not_requeued() -> None:
    """Through a broker restart the consumer may be back before the publisher: a message that
    cannot be handed over yet waits in hand (set aside) and is handed over once it can be, never
    returned to its queue, whose delivery limit would count each return."""
    store = FencedStore()
    app = orchestrator(store)
    consumer = Consumer()
    app.consumer = consumer  # type: ignore[assignment]
    app.hand_over = hand_over = HandOver()
    hand_over.up = False
    app.fence_of = lambda d: (3, 1)

    await app.take([Delivery(start("o-1", "m-fenced"))])
    held, requeued, acked = app.set_aside, list(consumer.requeued), list(consumer.acked)
    hand_over.up = True
    stopping = asyncio.Event()
    retry = asyncio.create_task(app.retry_aside(stopping))
    while app.set_aside:
        await asyncio.sleep(0.05)
    stopping.set()
    await retry

    assert (held, requeued, acked) == (1, [], [])
    assert hand_over.handed == ["m-fenced"] and [m for m, _ in consumer.acked] == ["m-fenced"]


async def test_at_the_stop_what_waits_is_handed_over_not_returned_to_its_queue() -> None:
    """A message set aside at every stop would climb its queue's delivery limit if it were
    given back each time: it is handed to the queue every replica takes from, and acked."""
    store = LockingStore()
    app = orchestrator(store)
    consumer = Consumer()
    app.consumer = consumer  # type: ignore[assignment]

    async def nothing_more(limit: int, stopping: asyncio.Event) -> AsyncIterator[list[Any]]:
        return
        yield []

    app.hand_over = hand_over = HandOver()
    await app.take([Delivery(start("o-1"))])
    store.locked.add(saga_id_for("order", "o-1"))
    waiting = reply(store, "o-1")
    await app.take([Delivery(waiting)])
    held = app.set_aside
    consumer.batches = nothing_more  # type: ignore[attr-defined]

    await app.run(asyncio.Event())

    assert held == 1 and app.set_aside == 0
    assert hand_over.handed == [waiting.message_id] and consumer.requeued == []
    assert (waiting.message_id, False) in consumer.acked
