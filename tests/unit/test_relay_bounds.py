"""The relay waits and grows within bounds (issue 27): a publish not confirmed in time is left to
the sweep, the queue of commands waiting for the broker is capped (the outbox keeps the rest), and
a command the broker will not route is set aside as a dead letter after a few tries, where it was
sent every 5 s for ever. Over the in-memory store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.engine import OutgoingCommand
from orchestrator.service.ports import Unpublishable
from orchestrator.service.relay import Relay
from orchestrator.service.store import Changes

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


def command(n: int) -> OutgoingCommand:
    return OutgoingCommand(
        f"c-{n}", "payment.ChargeCard", {"order_id": f"o-{n}", "cents": n}, f"s-{n}", "order"
    )


async def outbox_with(store: MemoryStore, *commands: OutgoingCommand) -> None:
    async with store.transaction() as tx:
        await tx.save(Changes(commands=list(commands)))


async def eventually(check: object, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "not within the time"
        await asyncio.sleep(0.01)


async def test_a_command_the_broker_will_not_route_is_set_aside_after_its_tries() -> None:
    store = MemoryStore()
    await outbox_with(store, command(1), command(2))
    tries: list[str] = []

    async def publish(sent: OutgoingCommand) -> None:
        tries.append(sent.message_id)
        if sent.message_id == "c-1":
            raise Unpublishable("no queue is bound to ns.commands for routing key payment.ChargeCard")

    relay = Relay(
        store,
        publish,
        sweep_seconds=0.01,
        unroutable_tries=3,
        exchange="ns.commands",
        now=lambda: datetime.now(UTC) + timedelta(hours=1),
    )
    await relay.start()
    try:
        await eventually(lambda: store.dead_letters and not relay.in_flight)
    finally:
        await relay.stop()

    [letter] = store.dead_letters
    assert (letter.reason, letter.correlation_id, letter.message_id) == ("unroutable", "s-1", "c-1")
    assert (letter.exchange, letter.routing_key, orjson.loads(letter.body)) == (
        "ns.commands",
        "payment.ChargeCard",
        command(1).payload,
    )
    assert "refused 3 times: no queue is bound" in letter.detail
    assert tries.count("c-1") == 3 and tries.count("c-2") == 1
    assert await store.unsent(10) == []  # out of the outbox: not sent every 5 s for ever
    assert relay.metrics.dead_lettered["unroutable"] == 1


async def test_a_publish_never_confirmed_is_given_up_and_left_to_the_sweep() -> None:
    store = MemoryStore()
    await outbox_with(store, command(1))
    never = asyncio.Event()

    async def publish(sent: OutgoingCommand) -> None:
        await never.wait()

    relay = Relay(store, publish, publish_timeout=0.05, sweep_seconds=3600)
    await relay.start()
    try:
        await eventually(lambda: not relay.in_flight)
    finally:
        await relay.stop()

    assert [c.message_id for c in await store.unsent(10)] == ["c-1"]  # kept for the next sweep


async def test_the_queue_waiting_for_the_broker_is_capped_and_the_outbox_keeps_the_rest() -> None:
    store = MemoryStore()
    await outbox_with(store, *(command(n) for n in range(50)))
    stuck = asyncio.Event()  # a broker under a memory alarm: publishes block

    async def publish(sent: OutgoingCommand) -> None:
        await stuck.wait()

    relay = Relay(store, publish, in_flight=2, max_pending=5, sweep_seconds=3600)
    await relay.start()  # its first sweep reads the outbox, and stops when there is no room
    try:
        taken = relay.submit([command(n) for n in range(50, 60)])
        assert taken is False
        assert relay.pending.qsize() <= 5 and len(relay.in_flight) <= 5 + 2
        assert len(await store.unsent(100)) == 50  # nothing lost: the outbox holds them all
        stuck.set()
        await eventually(lambda: not relay.in_flight)
        await relay.sweep(older_than=None)  # the sweep takes the rest once there is room
        await eventually(lambda: not relay.in_flight and relay.pending.empty())
        await relay.sweep(older_than=None)
        await eventually(lambda: not relay.in_flight)
    finally:
        await relay.stop()

    assert len(await store.unsent(100)) <= 50 - 5


class SlowRead(MemoryStore):
    """An outbox read that takes a while: the rows it returns were read at its start, and the
    relay may have sent and deleted some of them by the time it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.sent_meanwhile = asyncio.Event()

    async def unsent(self, limit: int, older_than: datetime | None = None) -> list[OutgoingCommand]:
        rows = await super().unsent(limit, older_than)
        await self.sent_meanwhile.wait()
        return rows


async def test_a_sweep_does_not_send_again_what_was_sent_while_it_read() -> None:
    """With a large backlog (recovery at 100,000) a sweep's read of 5,000 rows raced the relay's
    confirms, and every row confirmed meanwhile went out a second time."""
    store = SlowRead()
    await outbox_with(store, command(1))
    published: list[str] = []

    async def publish(sent: OutgoingCommand) -> None:
        published.append(sent.message_id)

    relay = Relay(store, publish, sweep_seconds=3600)
    store.sent_meanwhile.set()
    await relay.start()
    try:
        await eventually(lambda: not relay.in_flight)
        await outbox_with(store, command(2))
        store.sent_meanwhile.clear()
        sweeping = asyncio.create_task(relay.sweep(older_than=None))  # reads c-2, then waits
        await asyncio.sleep(0.01)
        assert relay.submit([command(2)])  # its batch's commit hands it over as well
        await eventually(lambda: not relay.in_flight and published.count("c-2") == 1)
        store.sent_meanwhile.set()
        await sweeping
        await eventually(lambda: not relay.in_flight)
    finally:
        await relay.stop()

    assert published == ["c-1", "c-2"]


async def test_a_backlog_is_swept_page_after_page_as_room_frees_not_a_page_per_interval() -> None:
    """An outbox left full (a crash, a broker outage) was sent one page of 5,000 per sweep
    interval; the next page now follows as soon as half of one is sent."""
    store = MemoryStore()
    await outbox_with(store, *(command(n) for n in range(12_000)))
    published: list[str] = []

    async def publish(sent: OutgoingCommand) -> None:
        await asyncio.sleep(0.001)  # a broker's confirm: the relay's queue is seldom empty
        published.append(sent.message_id)

    relay = Relay(
        store,
        publish,
        in_flight=1000,
        max_pending=3000,
        sweep_seconds=3600,  # only the backlog's own pace can explain the progress
        now=lambda: datetime.now(UTC) + timedelta(hours=2),
    )
    await relay.start()
    try:
        await eventually(lambda: len(published) == 12_000, seconds=20)
        await eventually(lambda: not relay.in_flight)
    finally:
        await relay.stop()

    assert len(set(published)) == 12_000  # each once
    assert await store.unsent(10) == []


async def test_a_backlog_behind_a_stuck_broker_is_read_once_per_interval_not_once_per_poll() -> None:
    """Nothing is confirmed: the next read waits for the sweep interval, however small the relay."""
    store = MemoryStore()
    await outbox_with(store, *(command(n) for n in range(6000)))
    reads = 0
    read = store.unsent

    async def counted(limit: int, older_than: datetime | None = None) -> list[OutgoingCommand]:
        nonlocal reads
        reads += 1
        return await read(limit, older_than)

    store.unsent = counted  # type: ignore[method-assign]
    stuck = asyncio.Event()

    async def publish(sent: OutgoingCommand) -> None:
        await stuck.wait()

    relay = Relay(
        store,
        publish,
        in_flight=2,
        max_pending=5,
        sweep_seconds=0.25,
        now=lambda: datetime.now(UTC) + timedelta(hours=2),
    )
    await relay.start()
    try:
        await asyncio.sleep(0.6)  # two intervals: the start's read and two more (a poll: twelve)
    finally:
        stuck.set()
        await relay.stop()

    assert relay.backlog and 1 <= reads <= 4, reads
