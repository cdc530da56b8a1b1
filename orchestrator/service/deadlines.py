"""The deadline alarm: an alarm clock rings, PostgreSQL decides.

Deadline rows are written in the transaction that enters a waiting state, so they survive any
crash. The alarm clock (the :class:`~orchestrator.service.ports.Alarm` port: APScheduler) is only
set for the earliest row due; when it rings, the sweep asks the bus to fire what is due (the bus
locks the sagas with timers due, in id order as a batch locks them, then their due timer rows, and
feeds each through the engine). A slow periodic sweep covers deadlines another replica set. On
start the sweep runs at once, so deadlines that fell due while the service was down fire right away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta

from orchestrator.core.engine import Decision
from orchestrator.core.routing import Registry
from orchestrator.service.batch import BatchResult
from orchestrator.service.clock import DatabaseClock
from orchestrator.service.counts import Counts
from orchestrator.service.ports import Alarm
from orchestrator.service.store import JournalEntry, Store

__all__ = ["DeadlineAlarm"]

log = logging.getLogger("orchestrator.service.deadlines")


async def _local_now() -> datetime:
    """This host's clock, where no database clock is given (a test, one process)."""
    return datetime.now(UTC)


class DeadlineAlarm:
    """The timer outlet of the bus (:meth:`committed`) and the sweep the alarm clock rings."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        alarm: Alarm,
        safety_sweep_seconds: float = 15.0,
        counts: Counts | None = None,
        clock: DatabaseClock | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.alarm = alarm
        self.counts = counts or Counts()
        #: "now" as the database has it, so that replicas on hosts whose clocks differ agree
        self.clock = clock or DatabaseClock(_local_now)
        self.safety_sweep_seconds = safety_sweep_seconds
        self.armed_for: datetime | None = None
        self.fired = 0
        #: sweeps failed in a row, for the backoff before the next try
        self.failures = 0
        self._fire: Callable[[], Awaitable[BatchResult]] | None = None
        self._lock = asyncio.Lock()
        self._sweeps: set[asyncio.Task[None]] = set()
        #: sweeps in a row that left a due timer behind (its saga locked by another transaction):
        #: the next waits 0.25 s, doubling, rather than ringing at once for ever
        self.held = 0

    async def start(self, fire: Callable[[], Awaitable[BatchResult]]) -> None:
        """Sweep with ``fire`` (the bus's :meth:`~orchestrator.service.bus.MessageBus.fire_due`)
        now, then whenever the alarm rings."""
        self._fire = fire
        self.alarm.start(self._ring, self.safety_sweep_seconds)
        if self.armed_for is not None:  # committed before the start: the alarm was not running
            self._arm(self.armed_for)
        await self.sweep()

    def stop(self) -> None:
        self.alarm.stop()
        for task in self._sweeps:  # a sweep cut short rolls back; its timers fire on the next start
            task.cancel()

    def committed(self, decisions: Iterable[Decision]) -> None:
        """After a commit: ring earlier if a new deadline falls due before the alarm."""
        timers = [t for d in decisions for t in (d.deadline, d.retry) if t is not None]
        timers += [t for d in decisions for _, t in d.timers if t is not None]
        earliest = min((t.due_at for t in timers), default=None)
        if earliest is not None and (self.armed_for is None or earliest < self.armed_for):
            self._arm(earliest)

    def _arm(self, when: datetime) -> None:
        self.armed_for = when
        self.alarm.set(self.clock.local(when))  # a database time, as this host's clock shows it

    async def _ring(self) -> None:
        """The alarm's job only starts the sweep and returns: a job still running when the sweep
        re-arms the alarm for a time already past would be skipped by APScheduler (at most one
        instance), and the deadlines left would wait for the safety sweep."""
        task = asyncio.create_task(self.sweep())
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    async def sweep(self) -> None:
        """Fire what is due until nothing is, then set the alarm for the next row. A failure
        neither crashes the service nor loops: the bus tries a race again at once a few times;
        anything else, or a race that persists, waits for a retry armed with backoff (at most the
        safety sweep's interval), from the rows."""
        if self._fire is None:
            raise RuntimeError("the deadline alarm sweeps once started")
        async with self._lock:
            try:
                while True:
                    result = await self._fire()
                    self._observe(result.journal, result.decisions)
                    self.fired += len(result.decisions)
                    if not result.decisions:
                        break
                self.armed_for = None
                upcoming = await self.store.next_deadline(self.registry.loaded())
                if upcoming is not None:
                    now = self.clock.now()
                    if upcoming <= now:  # due, yet no round took it: its saga's row is held elsewhere
                        self.held += 1
                        upcoming = now + timedelta(
                            seconds=min(self.safety_sweep_seconds, 0.25 * 2 ** min(self.held, 6))
                        )
                    else:
                        self.held = 0
                    self._arm(upcoming)
                self.failures = 0
            except Exception as error:
                # Try again after a backoff (at most the safety sweep's interval): the alarm is set
                # for then, so a deadline committed meanwhile that falls due earlier still sets it.
                self.failures += 1
                wait = min(self.safety_sweep_seconds, 0.5 * 2 ** min(self.failures, 10))
                log.warning("deadline sweep failed, trying again in %.1fs: %s", wait, error)
                self._arm(self.clock.now() + timedelta(seconds=wait))

    def _observe(self, entries: list[JournalEntry], decisions: Iterable[Decision]) -> None:
        """Lateness (by workflow, from the decisions: a journal entry names only its saga) and a
        log line per timer fired, from the journal entries the sweep committed."""
        workflows = {d.saga.id: d.saga.workflow for d in decisions}
        for entry in entries:
            message = entry.message
            self.counts.deadlines_fired[message.kind] += 1
            try:
                due_at = datetime.fromisoformat(message.payload["due_at"])
                late = max(0.0, (entry.recorded_at - due_at).total_seconds())
                self.counts.deadline_lateness.observe((workflows.get(entry.saga_id, ""), message.kind), late)
            except (KeyError, TypeError, ValueError):
                pass
            log.info(
                "%s fired for saga %s: %s -> %s",
                message.kind,
                entry.saga_id,
                entry.decision.get("from"),
                entry.decision.get("to"),
                extra={"saga_id": entry.saga_id, "message_id": message.message_id},
            )
