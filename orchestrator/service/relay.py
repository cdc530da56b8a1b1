"""The outbox relay: publishes committed commands, many in flight, and forgets them once confirmed.

Commands reach it two ways: handed over right after their batch commits (the fast path), and
by a periodic sweep of outbox rows that are older than the sweep interval (the safety net: a
crash between commit and publish, a publish that failed, another replica that died). A command
is only deleted from the outbox after the broker confirmed it, so a crash sends it again with the
same message id, and participants dedupe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from orchestrator.core.engine import OutgoingCommand
from orchestrator.service.counts import Counts
from orchestrator.service.faults import MARK_SENT, Fault, GaveUp, attempt
from orchestrator.service.ports import Clock, Publish
from orchestrator.service.store import Store
from orchestrator.supervision import Spawn, unsupervised

__all__ = ["Relay"]

log = logging.getLogger("orchestrator.service.relay")


class Relay:
    def __init__(
        self,
        store: Store,
        publish: Publish,
        in_flight: int = 4096,
        sweep_seconds: float = 5.0,
        counts: Counts | None = None,
        now: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.publish = publish
        self.sweep_seconds = sweep_seconds
        self.pending: asyncio.Queue[OutgoingCommand] = asyncio.Queue()
        self.in_flight: set[str] = set()
        self._slots = asyncio.Semaphore(in_flight)
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

    def submit(self, commands: Iterable[OutgoingCommand], received_at: float | None = None) -> None:
        for command in commands:
            if command.message_id not in self.in_flight:
                self.in_flight.add(command.message_id)
                self.pending.put_nowait(command)
                if received_at is not None:
                    self.received[command.message_id] = received_at

    async def start(self, spawn: Spawn = unsupervised) -> None:
        await self.sweep(older_than=None)  # whatever a previous run left committed but unsent
        self._runner = spawn("relay", self._run)
        self._sweeper = spawn("outbox-sweep", self._sweep_forever)

    async def sweep(self, older_than: datetime | None) -> int:
        total = 0
        while True:
            rows = [
                r for r in await self.store.unsent(5000, older_than) if r.message_id not in self.in_flight
            ]
            self.submit(rows)
            total += len(rows)
            if len(rows) < 5000:
                return total

    def sweep_soon(self) -> None:
        """Sweep now, not at the next interval: a replica died, and the commands it committed and
        did not send are anybody's (the store gives a dead replica's rows whatever their age)."""
        self._wake.set()

    async def _sweep_forever(self) -> None:
        while True:
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
            while not self.pending.empty() and len(batch) < 512:
                batch.append(self.pending.get_nowait())
            for _ in batch:
                await self._slots.acquire()
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[OutgoingCommand]) -> None:
        try:
            results = await asyncio.gather(*(self.publish(c) for c in batch), return_exceptions=True)
            confirmed = [c.message_id for c, r in zip(batch, results, strict=True) if r is None]
            for command, outcome in zip(batch, results, strict=True):
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
            self.sent += len(confirmed)
        finally:
            for command in batch:
                self.in_flight.discard(command.message_id)
                self.received.pop(command.message_id, None)
                self._slots.release()

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
