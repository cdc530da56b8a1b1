"""The deadline alarm: APScheduler rings, PostgreSQL decides.

Deadline rows are written in the transaction that enters a waiting state, so they survive any
crash. APScheduler (memory job store, one job) is only the alarm clock, set for the earliest row
due; when it rings, the sweeper locks the sagas with timers due (in id order, as a batch locks
them), then their due timer rows, and feeds each through the engine. A slow periodic sweep covers
deadlines another replica set. On start the sweep runs at once, so deadlines that fell due while
the service was down fire right away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from orchestrator.adapters.metrics import Metrics, count_finished
from orchestrator.core.engine import Decision, OutgoingCommand
from orchestrator.core.routing import Registry
from orchestrator.service.batch import fire_due_deadlines
from orchestrator.service.clock import DatabaseClock
from orchestrator.service.faults import Fault, classify
from orchestrator.service.store import JournalEntry, Store
from orchestrator.service.tracing import Tracer

__all__ = ["DeadlineAlarm"]

log = logging.getLogger("orchestrator.service.deadlines")

_ALARM = "deadline-alarm"
#: how many times in a row a sweep that lost a race (40P01, 40001, 55P03) is tried before it waits
_CONFLICT_TRIES = 5


async def _local_now() -> datetime:
    """This host's clock, where no database clock is given (a test, one process)."""
    return datetime.now(UTC)


class DeadlineAlarm:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        send: Callable[[Iterable[OutgoingCommand]], None],
        safety_sweep_seconds: float = 15.0,
        metrics: Metrics | None = None,
        clock: DatabaseClock | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.registry = registry
        #: a fired timer's spans continue the trace that set it (None: untraced)
        self.tracer = tracer
        self.store = store
        self.metrics = metrics or Metrics(process=False)
        self.send = send
        #: "now" as the database has it, so that replicas on hosts whose clocks differ agree
        self.clock = clock or DatabaseClock(_local_now)
        self.safety_sweep_seconds = safety_sweep_seconds
        self.scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
        )
        self.armed_for: datetime | None = None
        self.fired = 0
        #: sweeps failed in a row, for the backoff before the next try
        self.failures = 0
        self._lock = asyncio.Lock()
        self._sweeps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.scheduler.start()
        self.scheduler.add_job(
            self._ring, "interval", seconds=self.safety_sweep_seconds, id="deadline-safety"
        )
        await self.sweep()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for task in self._sweeps:  # a sweep cut short rolls back; its timers fire on the next start
            task.cancel()

    def committed(self, decisions: Iterable[Decision]) -> None:
        """After a commit: ring earlier if a new deadline falls due before the alarm."""
        timers = [t for d in decisions for t in (d.deadline, d.retry) if t is not None]
        earliest = min((t.due_at for t in timers), default=None)
        if earliest is not None and (self.armed_for is None or earliest < self.armed_for):
            self._arm(earliest)

    def _arm(self, when: datetime) -> None:
        self.armed_for = when
        run_date = self.clock.local(when)  # a database time, as this host's clock shows it
        self.scheduler.add_job(self._ring, "date", run_date=run_date, id=_ALARM, replace_existing=True)

    async def _ring(self) -> None:
        """The alarm's job only starts the sweep and returns: a job still running when the sweep
        re-arms the alarm for a time already past would be skipped by APScheduler (at most one
        instance), and the deadlines left would wait for the safety sweep."""
        task = asyncio.create_task(self.sweep())
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    async def sweep(self) -> None:
        """Fire what is due until nothing is, then set the alarm for the next row. A failure
        neither crashes the service nor loops: a race (a lock conflict, a deadlock another session
        caused) is tried again at once a few times; anything else, or a race that persists, waits
        for a retry armed with backoff (at most the safety sweep's interval), from the rows."""
        async with self._lock:
            conflicts = 0
            try:
                while True:
                    now = self.clock.now()
                    try:
                        result = await fire_due_deadlines(self.registry, self.store, now, tracer=self.tracer)
                    except Exception as error:
                        conflicts += 1
                        if classify(error) is not Fault.CONFLICT or conflicts >= _CONFLICT_TRIES:
                            raise
                        log.info("deadline sweep met a concurrent transaction (%s), again", error)
                        await asyncio.sleep(0.05 * conflicts)
                        continue
                    conflicts = 0
                    self._observe(result.journal, result.decisions)
                    count_finished(self.metrics, result.decisions, self.registry.workflows)
                    self.fired += len(result.decisions)
                    self.send(result.commands)
                    self.committed(result.decisions)
                    if not result.decisions:
                        break
                self.armed_for = None
                upcoming = await self.store.next_deadline(self.registry.loaded())
                if upcoming is not None:
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
            self.metrics.deadlines_fired[message.kind] += 1
            try:
                due_at = datetime.fromisoformat(message.payload["due_at"])
                late = max(0.0, (entry.recorded_at - due_at).total_seconds())
                self.metrics.deadline_lateness.observe((workflows.get(entry.saga_id, ""), message.kind), late)
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
