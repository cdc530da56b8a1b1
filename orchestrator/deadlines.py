"""The deadline alarm: APScheduler rings, PostgreSQL decides.

Deadline rows are written in the transaction that enters a waiting state, so they survive any
crash. APScheduler (memory job store, one job) is only the alarm clock, set for the earliest row
due; when it rings, the sweeper claims due rows with ``FOR UPDATE SKIP LOCKED`` and feeds each
through the engine. A slow periodic sweep covers deadlines another replica set. On start the
sweep runs at once, so deadlines that fell due while the service was down fire right away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from orchestrator.engine import Decision, OutgoingCommand
from orchestrator.routing import Registry
from orchestrator.service import fire_due_deadlines
from orchestrator.store import Store

__all__ = ["DeadlineAlarm"]

log = logging.getLogger("orchestrator.deadlines")

_ALARM = "deadline-alarm"


class DeadlineAlarm:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        send: Callable[[Iterable[OutgoingCommand]], None],
        safety_sweep_seconds: float = 15.0,
    ) -> None:
        self.registry = registry
        self.store = store
        self.send = send
        self.safety_sweep_seconds = safety_sweep_seconds
        self.scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
        )
        self.armed_for: datetime | None = None
        self.fired = 0
        self.lateness: list[float] = []
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.scheduler.start()
        self.scheduler.add_job(
            self.sweep, "interval", seconds=self.safety_sweep_seconds, id="deadline-safety"
        )
        await self.sweep()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def committed(self, decisions: Iterable[Decision]) -> None:
        """After a commit: ring earlier if a new deadline falls due before the alarm."""
        timers = [t for d in decisions for t in (d.deadline, d.retry) if t is not None]
        earliest = min((t.due_at for t in timers), default=None)
        if earliest is not None and (self.armed_for is None or earliest < self.armed_for):
            self._arm(earliest)

    def _arm(self, when: datetime) -> None:
        self.armed_for = when
        self.scheduler.add_job(self.sweep, "date", run_date=when, id=_ALARM, replace_existing=True)

    async def sweep(self) -> None:
        async with self._lock:
            try:
                while True:
                    now = datetime.now(UTC)
                    result = await fire_due_deadlines(self.registry, self.store, now)
                    for decision in result.decisions:
                        log.info(
                            "deadline fired for saga %s: %s -> %s",
                            decision.saga.id,
                            decision.previous_state,
                            decision.saga.state,
                        )
                    self.fired += len(result.decisions)
                    self.send(result.commands)
                    self.committed(result.decisions)
                    if not result.decisions:
                        break
                self.armed_for = None
                upcoming = await self.store.next_deadline()
                if upcoming is not None:
                    self._arm(upcoming)
            except Exception as error:  # the next ring (or the safety sweep) tries again
                log.warning("deadline sweep failed: %s", error)
