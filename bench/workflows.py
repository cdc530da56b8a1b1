"""The workflows the benchmark runs: ``orchestrator run --workflows bench.workflows``.

``bench_order`` is the bundled order saga with deadlines long enough that 100,000 sagas can sit
parked without any of them timing out: a parked saga must stay parked for recovery and memory.

``bench_hold`` exists only to time deadlines. Its one step commands the ``silent`` service, which
nobody serves, so each saga waits until its deadline fires; normal orders keep their own
participants busy meanwhile. Its deadline comes from ``BENCH_DEADLINE_SECONDS`` at import,
because the orchestrator is a separate process and its environment is the only way in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from orchestrator import Command, Event, Saga, step
from orchestrator.examples.order import OrderSaga

ORDER = "bench_order"
HOLD = "bench_hold"
SILENT_SERVICE = "silent"
PARKED = timedelta(hours=1)
HOLD_DEADLINE = timedelta(seconds=float(os.environ.get("BENCH_DEADLINE_SECONDS", "10")))


@dataclass(frozen=True)
class HoldRequested(Event):
    TYPE = "bench.HoldRequested"
    hold_id: str


@dataclass(frozen=True)
class PlaceHold(Command):
    TYPE = f"{SILENT_SERVICE}.PlaceHold"
    hold_id: str


@dataclass(frozen=True)
class HoldPlaced(Event):
    TYPE = f"{SILENT_SERVICE}.HoldPlaced"
    hold_id: str


class BenchHoldSaga(Saga, starts_on=HoldRequested, key="hold_id", name=HOLD):
    """One step nobody answers: the saga ends ``compensated`` when its deadline fires."""

    @step(done=HoldPlaced, deadline=HOLD_DEADLINE)
    def hold(self, request: HoldRequested) -> PlaceHold:
        return PlaceHold(request.hold_id)


#: The order saga of orchestrator.examples, every deadline an hour.
BENCH_ORDER = OrderSaga.workflow.with_deadlines(ORDER, PARKED)
WORKFLOWS = [BENCH_ORDER, BenchHoldSaga.workflow]
