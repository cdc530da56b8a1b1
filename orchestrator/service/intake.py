"""The broker's way in: batches off the consumer through the bus, then settled by their verdicts.

Nothing is acked before its batch committed. A message for a saga on a release of its workflow
this process does not load (a rolling deploy) is handed over to a process that loads it. A message
for a saga whose row another transaction holds (an operator's open ``psql`` session, a stuck
connection) is set aside, unacked, and taken again after a pause, with every later message for
that saga behind it: the other sagas go on meanwhile. The intake also knows whether it makes
progress, which readiness reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic

from orchestrator.core.ingress import printable
from orchestrator.core.routing import Registry
from orchestrator.service.batch import Verdict
from orchestrator.service.bus import MessageBus
from orchestrator.service.counts import Counts
from orchestrator.service.ports import Consumer, D, Sleep, Unpublishable

__all__ = ["Intake"]

log = logging.getLogger("orchestrator")


#: verdicts whose delivery is not acked with the batch: set aside, handed over, given back
_UNSETTLED = frozenset({Verdict.BUSY, Verdict.LEFT, Verdict.FENCED})


class Intake(Generic[D]):
    def __init__(
        self,
        bus: MessageBus,
        consumer: Consumer[D],
        hand_over: Callable[[D], Awaitable[bool]],
        waiting: Callable[[], Awaitable[int | None]],
        registry: Registry,
        counts: Counts,
        batch_size: int,
        stall_seconds: float,
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        fence_of: Callable[[D], tuple[int, int] | None] = lambda delivery: None,
    ) -> None:
        self.bus = bus
        #: the (partition, epoch) a delivery was taken under, None: from no partition queue
        self.fence_of = fence_of
        self.consumer = consumer
        #: publishes a message to the queue every replica takes from; False: it went round too often
        self.hand_over = hand_over
        #: how many messages the broker says wait in this process's queues (None: cannot ask)
        self.waiting = waiting
        self.registry = registry
        self.counts = counts
        self.batch_size = batch_size
        self.stall_seconds = stall_seconds
        #: the pauses and the seconds of the stall checks: a test's stepped time, else the real
        self.sleep = sleep
        self.monotonic = monotonic
        self._left_logged = 0.0  # when leaving messages was last logged: once per 10 s at most
        #: messages the broker says wait in the queue while none are in hand, and since when
        self._waiting: tuple[int, float] = (0, monotonic())
        #: messages set aside for sagas locked elsewhere, in the order they came, each with the
        #: sagas it is for, and since when the oldest waits
        self._aside: list[tuple[D, frozenset[str]]] = []
        #: when each delivery set aside was first (by id): how long the oldest waits
        self._since: dict[int, float] = {}
        #: one batch at a time, whether new or set aside: the order of a saga's messages holds
        self._turn = asyncio.Lock()

    @property
    def set_aside(self) -> int:
        """Messages waiting for a saga row another transaction holds."""
        return len(self._aside)

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume, then decide, commit and ack each batch, until stopping (the consumer says
        what it still hands out then); then hand what is set aside to the queue every replica
        takes from (another replica, or this one restarted, takes them): not back to its own
        queue, whose delivery limit would count a return at every stop. What the broker will not
        take is given back."""
        async for batch in self.consumer.batches(self.batch_size, stopping):
            await self.take(batch)
        async with self._turn:
            aside, self._aside = [d for d, _ in self._aside], []
            self._since.clear()
            handed, kept, unsent = await self._publish(aside)
            if kept or unsent:
                await self.consumer.requeue(kept + unsent)
            if handed:
                await self.consumer.ack(handed, multiple_ok=False)

    async def retry_aside(self, stopping: asyncio.Event) -> None:
        """Take the messages set aside again, after a pause that grows while their rows stay
        locked (0.25 s, doubling, at most 2 s): a lock held a moment costs a moment; one held for
        an hour costs a read every 2 s. Never counted as a failure, never dead-lettered."""
        pause = 0.25
        while not stopping.is_set():
            await self.sleep(pause)
            async with self._turn:
                if not self._aside:
                    pause = 0.25
                    continue
                aside, self._aside = self._aside, []
                before = len(aside)
                try:
                    await self._settle([d for d, _ in aside], held=())
                except BaseException:  # kept, not lost: a later round (or the stop) settles them
                    self._aside[:0] = [a for a in aside if a not in self._aside]
                    raise
                pause = 0.25 if len(self._aside) < before else min(pause * 2, 2.0)

    async def take(self, batch: Sequence[D]) -> None:
        """Decide and commit a batch through the bus, then settle each message by its verdict."""
        async with self._turn:
            held = frozenset().union(*(sagas for _, sagas in self._aside))
            await self._settle(batch, held)

    async def _settle(self, batch: Sequence[D], held: frozenset[str] | tuple[()]) -> None:
        """Settle each of ``batch`` by its verdict: acked, handed over, or set aside (BUSY)."""
        fences = [self.fence_of(d) for d in batch]
        result = await self.bus.handle(
            [d.envelope for d in batch],
            [d.arrived for d in batch],
            held,
            fences if any(fences) else None,
        )
        verdicts = result.verdicts
        busy = [
            (d, sagas) for d, v, sagas in zip(batch, verdicts, result.waits, strict=True) if v is Verdict.BUSY
        ]
        now = self.monotonic()
        for delivery, verdict in zip(batch, verdicts, strict=True):
            if verdict is not Verdict.BUSY:
                self._since.pop(id(delivery), None)
        fresh = [d for d, _ in busy if id(d) not in self._since]
        for delivery in fresh:
            self._since[id(delivery)] = now
        if fresh and not self._aside:
            log.warning(
                "%d messages wait for saga rows another transaction holds (saga %s first);"
                " the other sagas go on",
                len(busy),
                ", ".join(sorted(busy[0][1])),
            )
        self._aside.extend(busy)
        if busy:
            self.consumer.set_aside([d for d, _ in busy])
        for delivery, verdict, refusal in zip(batch, verdicts, result.refusals, strict=True):
            if verdict is Verdict.BUSY:
                continue
            self.counts.messages_in[str(verdict)] += 1
            envelope = delivery.envelope
            if verdict is Verdict.DEAD and refusal is not None:
                self.counts.dead_lettered[str(refusal.reason)] += 1
                log.warning(
                    "dead-lettered message %s (type %s): %s",
                    printable(envelope.properties.get("message_id") or envelope.message_id),
                    printable(envelope.properties.get("type") or envelope.type),
                    refusal,
                    extra={"saga_id": envelope.correlation_id, "message_id": envelope.message_id},
                )
            elif verdict is Verdict.DUPLICATE:
                log.info(
                    "duplicate message %s (type %s) acked",
                    envelope.message_id,
                    envelope.type,
                    extra={"saga_id": envelope.correlation_id, "message_id": envelope.message_id},
                )
        settled = [d for d, v in zip(batch, verdicts, strict=True) if v not in _UNSETTLED]
        fenced = [d for d, v in zip(batch, verdicts, strict=True) if v is Verdict.FENCED]
        if fenced:
            log.info(
                "%d messages of partitions this replica no longer holds: handed to the queue every"
                " replica takes from",
                len(fenced),
            )
            settled += await self._hand_over(fenced)
        left = [d for d, v in zip(batch, verdicts, strict=True) if v is Verdict.LEFT]
        if left:
            settled += await self._leave(left)
        # a multiple ack would take along the deliveries set aside, which come earlier on the channel
        await self.consumer.ack(settled, multiple_ok=not self._aside)

    async def _leave(self, left: list[D]) -> list[D]:
        """Hand over messages for sagas on a release of their workflow this process does not load
        (a rolling deploy: a process that loads it takes them): each is published to the queue
        every replica takes from, and acked with the rest of the batch (returned). Not given back
        to its own queue (:meth:`_hand_over`). A batch of nothing else waits a moment first, so
        that a process alone with them does not spin on them."""
        now = self.monotonic()
        if now - self._left_logged > 10:
            self._left_logged = now
            log.warning(
                "left %d messages for sagas on a release this process does not load (loaded: %s);"
                " a process that loads it takes them",
                len(left),
                ", ".join(f"{name} {release}" for name, release in self.registry.loaded()),
            )
        if len(left) == self.consumer.unsettled - len(self._aside):
            await self.sleep(0.5)
        return await self._hand_over(left)

    async def _hand_over(self, deliveries: list[D]) -> list[D]:
        """Publish each of ``deliveries`` to the queue every replica takes from; those handed over
        (to be acked with the rest). Not given back to its own queue, whose delivery limit counts
        each return, and which may hand it to this process again: one the broker would not take
        (the publishing connection is down, as through a broker restart) is set aside, unacked,
        and tried again with what waits there; one that went round too often is requeued before
        the rest is acked (so that no ``multiple`` ack takes it along), for its queue's delivery
        limit to end."""
        handed, kept, unsent = await self._publish(deliveries)
        if kept:
            await self.consumer.requeue(kept)
        if unsent:
            now = self.monotonic()
            for delivery in unsent:
                self._since.setdefault(id(delivery), now)
            cid = [d.envelope.correlation_id for d in unsent]
            self._aside.extend(
                (d, frozenset({c}) if c else frozenset()) for d, c in zip(unsent, cid, strict=True)
            )
            self.consumer.set_aside(unsent)
        return handed

    async def _publish(self, deliveries: list[D]) -> tuple[list[D], list[D], list[D]]:
        """Each of ``deliveries`` handed over: (handed over, gone round too often, not taken by
        the broker)."""
        handed: list[D] = []
        kept: list[D] = []
        unsent: list[D] = []
        for delivery in deliveries:
            try:
                (handed if await self.hand_over(delivery) else kept).append(delivery)
            except Unpublishable as error:
                log.warning("could not hand over message %s yet: %s", delivery.envelope.message_id, error)
                unsent.append(delivery)
        return handed, kept, unsent

    def stalled(self) -> str | None:
        """Why the consumer makes no progress, or None: the database cannot commit; or messages
        are in hand, or the broker says some wait in the queue while none are, and no batch has
        committed for longer than ``stall_seconds`` since."""
        if self.bus.database_trouble is not None:
            return f"cannot commit: {self.bus.database_trouble}"
        consumer = self.consumer
        now = self.monotonic()
        oldest = min((self._since.get(id(d), now) for d, _ in self._aside), default=now)
        if self._aside and now - oldest > self.stall_seconds:
            return (
                f"{len(self._aside)} messages wait for saga rows another transaction holds, the oldest"
                f" for {now - oldest:.0f}s"
            )
        if consumer.unsettled > len(self._aside):
            idle = now - max(self.bus.last_commit, consumer.busy_since)
            if idle > self.stall_seconds:
                return f"{consumer.unsettled} messages in hand and no batch committed for {idle:.0f}s"
            return None
        waiting, since = self._waiting
        idle = now - max(self.bus.last_commit, since)
        if waiting and idle > self.stall_seconds:
            return f"{waiting} messages wait in the queue and none was taken for {idle:.0f}s"
        return None

    async def watch_queue(self, stopping: asyncio.Event) -> None:
        """Asks the broker, while nothing is in hand, whether messages wait all the same (a
        consumer the broker stopped feeding): readiness must see that too."""
        interval = max(1.0, min(5.0, self.stall_seconds / 3))
        while not stopping.is_set():
            await self.sleep(interval)
            if self.consumer.unsettled:
                self._waiting = (0, self.monotonic())
                continue
            count = await self.waiting()
            if not count:
                self._waiting = (0, self.monotonic())
            elif not self._waiting[0]:
                self._waiting = (count, self.monotonic())
            else:
                self._waiting = (count, self._waiting[1])
