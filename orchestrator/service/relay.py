"""The outbox relay: publishes committed commands, many in flight, and forgets them once confirmed.

Commands reach it two ways: handed over right after their batch commits (the fast path), and
by a periodic sweep of outbox rows that are older than the sweep interval (the safety net: a
crash between commit and publish, a publish that failed, another replica that died). A command
is only deleted from the outbox after the broker confirmed it, so a crash sends it again with the
same message id, and participants dedupe.

Nothing here waits or grows without a bound: a publish not confirmed within ``publish_timeout``
is left to the sweep; the commands waiting to be published are at most ``max_pending`` (the rest
stay in the outbox, where the sweep finds them once the broker takes commands again, say after a
memory alarm); and a command the broker refuses to route (no queue bound for its type) is tried
``unroutable_tries`` times, then set aside as a dead letter naming its saga, for an operator to
bind the queue and replay it, where it was sent every 5 s for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import orjson

from orchestrator.core.engine import OutgoingCommand
from orchestrator.core.ingress import DeadLetter, Reason, clip, printable
from orchestrator.service.counts import Counts
from orchestrator.service.faults import DEAD_LETTERS, MARK_SENT, Fault, GaveUp, attempt
from orchestrator.service.ports import Clock, Publish, Unpublishable
from orchestrator.service.store import Changes, Store
from orchestrator.supervision import Spawn, unsupervised

__all__ = ["Relay"]

log = logging.getLogger("orchestrator.service.relay")


#: outbox rows a sweep reads at a time
SWEEP_PAGE = 5000


class Relay:
    def __init__(
        self,
        store: Store,
        publish: Publish,
        in_flight: int = 4096,
        sweep_seconds: float = 5.0,
        counts: Counts | None = None,
        now: Clock = lambda: datetime.now(UTC),
        *,
        publish_timeout: float = 30.0,
        max_pending: int | None = None,
        unroutable_tries: int = 5,
        exchange: str = "",
    ) -> None:
        self.store = store
        self.publish = publish
        self.sweep_seconds = sweep_seconds
        self.publish_timeout = publish_timeout
        self.max_pending = max_pending if max_pending is not None else 4 * in_flight
        self.unroutable_tries = unroutable_tries
        #: where commands go ({ns}.commands): named in the dead letter of one that cannot be routed
        self.exchange = exchange
        #: refusals to route so far, by message id (a command taken again resets nothing: bounded
        #: by the outbox, and forgotten once the command is confirmed or set aside)
        self.refused: dict[str, int] = {}
        self._full_logged = 0.0
        self.pending: asyncio.Queue[OutgoingCommand] = asyncio.Queue()
        self.in_flight: set[str] = set()
        self._slots = asyncio.Semaphore(in_flight)
        #: a batch takes a slot per command before it goes: never more than there are slots
        self._batch = min(512, in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.sent = 0
        self.metrics = counts or Counts()
        #: message id -> when the event that caused it arrived (time.monotonic), for the step latency
        self.received: dict[str, float] = {}
        #: "now" as the outbox rows' times are written: the database's (service/clock.py)
        self.now = now
        self._wake = asyncio.Event()
        #: one set per outbox read in progress: the commands confirmed since it began. Its rows
        #: were read before their delete committed, so those it must not send again.
        self._reading: list[set[str]] = []
        #: the last sweep left rows it could not take yet: the next comes as soon as there is room
        self.backlog = False

    def submit(self, commands: Iterable[OutgoingCommand], received_at: float | None = None) -> bool:
        """Take commands to publish; False when some were left to the outbox (the queue is full)."""
        for command in commands:
            if command.message_id in self.in_flight:
                continue
            if self.pending.qsize() >= self.max_pending:
                now = time.monotonic()
                if now - self._full_logged > 10:
                    self._full_logged = now
                    log.warning(
                        "%d commands wait for the broker: the next ones stay in the outbox for the sweep",
                        self.pending.qsize(),
                    )
                return False
            self.in_flight.add(command.message_id)
            self.pending.put_nowait(command)
            if received_at is not None:
                self.received[command.message_id] = received_at
        return True

    async def start(self, spawn: Spawn = unsupervised) -> None:
        await self.sweep(older_than=None)  # whatever a previous run left committed but unsent
        self._runner = spawn("relay", self._run)
        self._sweeper = spawn("outbox-sweep", self._sweep_forever)

    async def sweep(self, older_than: datetime | None) -> int:
        total = 0
        self.backlog = False
        while True:
            confirmed: set[str] = set()
            self._reading.append(confirmed)
            try:
                found = await self.store.unsent(SWEEP_PAGE, older_than)
            finally:
                self._reading.remove(confirmed)
            rows = [r for r in found if r.message_id not in self.in_flight and r.message_id not in confirmed]
            taken = self.submit(rows)
            total += len(rows)
            if not taken or (len(found) == SWEEP_PAGE and not rows):
                # no room, or a page of rows still in flight with more behind it: the next sweep
                # as soon as there is room
                self.backlog = True
                return total
            if len(found) < SWEEP_PAGE:  # all read
                return total

    async def _room(self, seconds: float) -> None:
        """Until half of what was in flight is sent, or ``seconds``: a sweep read before that would
        find the oldest rows still in flight, and one every ``sweep_seconds`` sent a page of them
        at most (900 commands a second out of a backlog of 90,000). Half of what there was, not a
        fixed count, so that a small relay (``in_flight``) waiting on a stuck broker does not read
        a page every poll."""
        loop = asyncio.get_running_loop()
        deadline, half = loop.time() + seconds, len(self.in_flight) // 2
        while True:
            await asyncio.sleep(0.05)
            if len(self.in_flight) <= half or loop.time() > deadline:
                return

    def sweep_soon(self) -> None:
        """Sweep now, not at the next interval: a replica died, and the commands it committed and
        did not send are anybody's (the store gives a dead replica's rows whatever their age)."""
        self._wake.set()

    async def _sweep_forever(self) -> None:
        while True:
            if self.backlog:  # a backlog (an outage's, a crash's): the next page once there is room
                await self._room(self.sweep_seconds)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.sweep_seconds)
            self._wake.clear()
            try:
                found = await self.sweep(self.now() - timedelta(seconds=self.sweep_seconds))
                if found:
                    log.info("outbox sweep found %d unsent commands", found)
            except Exception as error:
                log.warning("outbox sweep failed, will try again: %s", error)

    async def _run(self) -> None:
        while True:
            batch = [await self.pending.get()]
            while not self.pending.empty() and len(batch) < self._batch:
                batch.append(self.pending.get_nowait())
            for _ in batch:
                await self._slots.acquire()
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _published(self, batch: list[OutgoingCommand]) -> list[BaseException | None]:
        """Each command's publish, all at once: None where the broker confirmed it, else why not
        (TimeoutError where it did not within ``publish_timeout``). One task per command and one
        timeout for the batch: a ``wait_for`` per command was a second task per command sent."""
        tasks = [asyncio.ensure_future(self.publish(c)) for c in batch]
        try:
            await asyncio.wait(tasks, timeout=self.publish_timeout)
        finally:
            late = [t for t in tasks if not t.done()]
            for task in late:
                task.cancel()
            if late:  # a publish ends at its cancel; a second bounds one that would not
                await asyncio.wait(late, timeout=1.0)
        return [
            TimeoutError(f"not confirmed within {self.publish_timeout}s")
            if not t.done() or t.cancelled()
            else t.exception()
            for t in tasks
        ]

    async def _send(self, batch: list[OutgoingCommand]) -> None:
        try:
            results = await self._published(batch)
            confirmed = [c.message_id for c, r in zip(batch, results, strict=True) if r is None]
            unroutable: list[tuple[OutgoingCommand, BaseException]] = []
            for command, outcome in zip(batch, results, strict=True):
                if isinstance(outcome, Unpublishable) and not outcome.unavailable:
                    tries = self.refused[command.message_id] = self.refused.get(command.message_id, 0) + 1
                    if tries >= self.unroutable_tries:
                        unroutable.append((command, outcome))
                        continue
                if isinstance(outcome, BaseException):
                    log.warning(
                        "publish of %s %s failed, the outbox keeps it: %s",
                        command.type,
                        command.message_id,
                        outcome,
                        extra={"saga_id": command.saga_id, "message_id": command.message_id},
                    )
            confirmed_at = time.monotonic()
            latency = self.metrics.step_latency
            for command, outcome in zip(batch, results, strict=True):
                received = self.received.get(command.message_id) if outcome is None else None
                if received is not None:  # by workflow and command type: which step is slow
                    latency.observe((command.workflow, command.type), confirmed_at - received)
            self.metrics.confirmed(len(confirmed))
            await self._mark_sent(confirmed)
            for reading in self._reading:
                reading.update(confirmed)
            self.sent += len(confirmed)
            for message_id in confirmed:
                self.refused.pop(message_id, None)
            if unroutable:
                await self._set_aside(unroutable)
        finally:
            for command in batch:
                self.in_flight.discard(command.message_id)
                self.received.pop(command.message_id, None)
                self._slots.release()

    async def _set_aside(self, unroutable: list[tuple[OutgoingCommand, BaseException]]) -> None:
        """Commands the broker would not route, tries over: recorded as dead letters (naming their
        saga, replayable once a queue is bound), then out of the outbox. Should the record fail,
        they stay in the outbox and are tried again: never dropped."""
        letters = [self._letter(command, error) for command, error in unroutable]

        async def record() -> None:
            async with self.store.transaction() as tx:
                await tx.save(Changes(dead_letters=letters))

        try:
            await attempt(record, self.store.classify, DEAD_LETTERS)
        except GaveUp as gave_up:
            log.error("could not set aside %d unroutable commands: %s", len(letters), gave_up.error)
            return
        for command, error in unroutable:
            self.refused.pop(command.message_id, None)
            self.metrics.dead_lettered[str(Reason.UNROUTABLE)] += 1
            log.error(
                "command %s %s of saga %s cannot be routed (%s): set aside as a dead letter; bind a"
                " queue for it and replay it",
                command.type,
                command.message_id,
                command.saga_id,
                error,
                extra={"saga_id": command.saga_id, "message_id": command.message_id},
            )
        await self._mark_sent([command.message_id for command, _ in unroutable])

    def _letter(self, command: OutgoingCommand, error: BaseException) -> DeadLetter:
        body = orjson.dumps(command.payload)
        return DeadLetter(
            reason=Reason.UNROUTABLE,
            detail=clip(f"refused {self.unroutable_tries} times: {printable(str(error))}", 600),
            source="orchestrator",
            message_id=command.message_id,
            message_type=command.type,
            correlation_id=command.saga_id,
            exchange=self.exchange,
            routing_key=command.type,
            properties={
                "type": command.type,
                "message_id": command.message_id,
                "correlation_id": command.saga_id,
                "content_type": "application/json",
                "headers": {"x-workflow": command.workflow},
            },
            body=body,
            body_size=len(body),
        )

    async def _mark_sent(self, message_ids: list[str]) -> None:
        """Confirmed commands out of the outbox, by the fault policy; failing that, they are sent
        again by a sweep (participants dedupe), never lost."""

        def note(fault: Fault, error: BaseException, pause: float | None) -> None:
            log.warning("could not mark %d commands sent (%s): %s", len(message_ids), fault.value, error)

        with contextlib.suppress(GaveUp):
            await attempt(lambda: self.store.mark_sent(message_ids), self.store.classify, MARK_SENT, note)

    async def drain(self, timeout: float) -> bool:
        """Wait until everything handed over is confirmed, for a graceful stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.in_flight or self._tasks) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return not self.in_flight

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything; what was not confirmed stays in the outbox for the next sweep."""
        tasks = [t for t in (self._runner, self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=max(timeout, 0.01))
