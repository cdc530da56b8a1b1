"""The deadline alarm when a sweep fails: a race is tried again at once (a few times), anything
else is tried again later with a backoff; the alarm never crashes and never loops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.service import deadlines
from orchestrator.service.batch import BatchResult
from orchestrator.service.deadlines import DeadlineAlarm


def alarm_failing_with(
    monkeypatch: pytest.MonkeyPatch, *errors: Exception
) -> tuple[DeadlineAlarm, list[Any]]:
    """An alarm whose sweeps fail with ``errors`` in turn, then find nothing due."""
    calls: list[Any] = []
    pending = list(errors)

    async def fire(
        registry: Any, store: Any, now: datetime, limit: int = 500, tracer: Any = None
    ) -> BatchResult:
        calls.append(now)
        if pending:
            raise pending.pop(0)
        return BatchResult()

    async def no_pause(seconds: float) -> None:
        return None

    monkeypatch.setattr(deadlines, "fire_due_deadlines", fire)
    monkeypatch.setattr(deadlines.asyncio, "sleep", no_pause)
    return DeadlineAlarm(Registry(WORKFLOWS), MemoryStore(), lambda commands: None), calls


async def test_a_sweep_that_meets_a_deadlock_is_tried_again_at_once(monkeypatch):
    alarm, calls = alarm_failing_with(
        monkeypatch, asyncpg.DeadlockDetectedError("deadlock detected"), asyncpg.SerializationError("x")
    )

    await alarm.sweep()

    assert len(calls) == 3
    assert alarm.failures == 0 and alarm.armed_for is None  # nothing due, nothing armed


async def test_a_race_that_persists_is_not_retried_forever_but_later(monkeypatch):
    alarm, calls = alarm_failing_with(monkeypatch, *(asyncpg.DeadlockDetectedError("d") for _ in range(50)))
    before = datetime.now(UTC)

    await alarm.sweep()  # does not raise

    assert len(calls) == deadlines._CONFLICT_TRIES
    assert alarm.failures == 1
    assert alarm.armed_for is not None and before < alarm.armed_for <= before + timedelta(seconds=5)


async def test_any_other_failure_is_tried_again_with_a_backoff_bounded_by_the_safety_sweep(monkeypatch):
    alarm, calls = alarm_failing_with(monkeypatch, *(RuntimeError("bug") for _ in range(9)))

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
