"""The deadline alarm when a sweep fails: the bus tries a race again at once (a few times),
anything else is tried again later with a backoff; the alarm never crashes and never loops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.service import bus as bus_module
from orchestrator.service.batch import BatchResult
from orchestrator.service.bus import MessageBus
from orchestrator.service.deadlines import DeadlineAlarm
from orchestrator.service.faults import DEADLINES, Fault
from tests.outlets import NoRelay


class _Clock:
    """The alarm clock port, never ringing on its own: each test sweeps by hand."""

    def start(self, ring: Any, interval: float) -> None:
        return None

    def set(self, when: datetime) -> None:
        return None

    def stop(self) -> None:
        return None


async def alarm_failing_with(
    monkeypatch: pytest.MonkeyPatch, *errors: Exception
) -> tuple[DeadlineAlarm, list[Any]]:
    """An alarm, started (its first sweep found nothing), whose sweeps then fail with ``errors``
    in turn, then find nothing due. The bus between them tries a race again without waiting."""
    calls: list[Any] = []
    pending: list[Exception] = []

    async def fire(
        registry: Any, store: Any, now: datetime, limit: int = 500, tracer: Any = None
    ) -> BatchResult:
        calls.append(now)
        if pending:
            raise pending.pop(0)
        return BatchResult()

    async def no_pause(seconds: float) -> None:
        return None

    monkeypatch.setattr(bus_module, "fire_due_deadlines", fire)
    registry, store = Registry(WORKFLOWS), MemoryStore()
    bus = MessageBus(registry, store, outbox=NoRelay(), clock=lambda: datetime.now(UTC), sleep=no_pause)
    alarm = DeadlineAlarm(registry, store, _Clock())
    await alarm.start(bus.fire_due)
    calls.clear()
    pending.extend(errors)
    return alarm, calls


async def test_a_sweep_that_meets_a_deadlock_is_tried_again_at_once(monkeypatch):
    alarm, calls = await alarm_failing_with(
        monkeypatch, asyncpg.DeadlockDetectedError("deadlock detected"), asyncpg.SerializationError("x")
    )

    await alarm.sweep()

    assert len(calls) == 3
    assert alarm.failures == 0 and alarm.armed_for is None  # nothing due, nothing armed


async def test_a_race_that_persists_is_not_retried_forever_but_later(monkeypatch):
    alarm, calls = await alarm_failing_with(
        monkeypatch, *(asyncpg.DeadlockDetectedError("d") for _ in range(50))
    )
    before = datetime.now(UTC)

    await alarm.sweep()  # does not raise

    assert len(calls) == DEADLINES.tries[Fault.CONFLICT]
    assert alarm.failures == 1
    assert alarm.armed_for is not None and before < alarm.armed_for <= before + timedelta(seconds=5)


async def test_any_other_failure_is_tried_again_with_a_backoff_bounded_by_the_safety_sweep(monkeypatch):
    alarm, calls = await alarm_failing_with(monkeypatch, *(RuntimeError("bug") for _ in range(9)))

    waits = []
    for _ in range(8):
        before = datetime.now(UTC)
        await alarm.sweep()
        assert alarm.armed_for is not None
        waits.append(round((alarm.armed_for - before).total_seconds()))

    assert len(calls) == 8  # one try per sweep: not a race, so not again at once
    assert waits == [1, 2, 4, 8, 15, 15, 15, 15]
    await alarm.sweep()  # the last failure
    await alarm.sweep()  # succeeds: the backoff starts over
    assert alarm.failures == 0


class _PastDue(MemoryStore):
    """A store whose earliest timer is due already, yet no sweep takes it: its saga's row is
    held by another transaction, which the sweep skips."""

    async def next_deadline(self, workflows: Any = None) -> datetime | None:
        return datetime.now(UTC) - timedelta(seconds=5)


async def test_a_due_timer_no_sweep_can_take_waits_with_a_backoff_instead_of_ringing_at_once() -> None:
    """Issue 27: armed for its (past) due time, the alarm rang again at once, for ever, while the
    row stayed locked: three queries per turn, without a pause."""
    registry, store = Registry(WORKFLOWS), _PastDue()
    bus = MessageBus(registry, store, outbox=NoRelay(), clock=lambda: datetime.now(UTC))
    alarm = DeadlineAlarm(registry, store, _Clock())
    await alarm.start(bus.fire_due)
    first = alarm.armed_for
    await alarm.sweep()
    second = alarm.armed_for
    now = datetime.now(UTC)

    assert first is not None and second is not None
    assert first > now  # not the past due time: a moment from now
    assert second - now > first - now - timedelta(seconds=0.2)  # and longer the next time
    assert alarm.held == 2
