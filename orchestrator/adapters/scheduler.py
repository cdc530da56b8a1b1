"""The alarm port (:class:`orchestrator.service.ports.Alarm`) on APScheduler: one date job, set
for the earliest timer due, and one interval job, the safety sweep. The memory job store: the
timers themselves are rows in the database; this only says when to look."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

__all__ = ["SchedulerAlarm"]

_ALARM = "deadline-alarm"


class SchedulerAlarm:
    def __init__(self) -> None:
        self.scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
        )
        self._ring: Callable[[], Awaitable[None]] | None = None

    def start(self, ring: Callable[[], Awaitable[None]], interval: float) -> None:
        self._ring = ring
        self.scheduler.start()
        self.scheduler.add_job(ring, "interval", seconds=interval, id="deadline-safety")

    def set(self, when: datetime) -> None:
        if self._ring is None:  # not started (a test, a stop): the safety sweep covers it
            return
        self.scheduler.add_job(self._ring, "date", run_date=when, id=_ALARM, replace_existing=True)

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
