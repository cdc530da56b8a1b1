"""The numbers the service keeps as it works: plain ints and lock-free histograms.

The service is one event loop, so the consumer, the relay and the alarm bump these on the hot path
without a lock; the Prometheus adapter (:mod:`orchestrator.adapters.metrics`) turns them into metric
families only at a scrape. This is the service's metrics port: it knows no exporter.

Labels are bounded by the workflow definitions (workflow, release, state, command type, timer
kind) or by enums in the code (reason, fault, verdict), never by a saga, key or message.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from orchestrator.core.definitions import Status
from orchestrator.core.engine import Decision, Outcome
from orchestrator.core.machine import CompiledWorkflow

__all__ = ["LATENESS_BUCKETS", "STEP_LATENCY_BUCKETS", "Counts", "Histogram", "Histograms", "count_finished"]

#: from a broker round trip on an idle queue (~1 ms) to a confirm held by a queue sync (~200 ms) and
#: beyond; millisecond steps up to 10 ms, where a step should land, so a quantile read off them is close
STEP_LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01, 0.0125, 0.015, 0.02,
    0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: the alarm rings within milliseconds; the 15 s safety sweep and downtime make the tail
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 300.0, 3600.0)


class Histogram:
    """Cumulative buckets in plain ints: one event loop writes, the scrape reads between awaits."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """As Prometheus wants them: cumulative, ``le`` per bound, then ``+Inf``."""
        running = 0
        out = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


class Histograms:
    """One :class:`Histogram` per label values (a tuple), made on the first observation: the hot
    path pays a dict lookup more than an unlabelled histogram, and no lock."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.by: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        histogram = self.by.get(labels)
        if histogram is None:
            histogram = self.by[labels] = Histogram(self.bounds)
        histogram.observe(value)

    @property
    def count(self) -> int:
        """Over every label set, for a test or a log line."""
        return sum(h.count for h in self.by.values())

    @property
    def sum(self) -> float:
        return sum(h.sum for h in self.by.values())


class Counts:
    """Every number the service keeps; one instance per running service (and per test app)."""

    def __init__(self) -> None:
        self.messages_in: Counter[str] = Counter()  # by verdict: accepted, duplicate, dead, left
        self.dead_lettered: Counter[str] = Counter()  # by reason code (orchestrator.core.ingress.Reason)
        self.batch_failures: Counter[str] = Counter()  # by fault (orchestrator.service.faults.Fault)
        #: by service: messages taken without a section 6 reply id (ORCHESTRATOR_UNCHECKED_REPLIES)
        self.unchecked_replies: Counter[str] = Counter()
        self.commands_out = 0  # confirmed by the broker
        self.deadlines_fired: Counter[str] = Counter()  # by kind: deadline, retry
        self.operator_actions: Counter[str] = Counter()  # by action, including start
        self.task_restarts: Counter[str] = Counter()  # by task (orchestrator.supervision)
        #: sagas this process saw finish (completed, compensated), by (workflow, status)
        self.sagas_finished: Counter[tuple[str, str]] = Counter()
        #: sagas this process started (over AMQP or REST), by workflow
        self.sagas_started: Counter[str] = Counter()
        #: sagas this process saw turn from running to compensating, by workflow
        self.compensations_started: Counter[str] = Counter()
        #: cancel events (``Workflow.cancelled_by``) that came after their saga finished, by workflow
        self.cancels_after_finish: Counter[str] = Counter()
        #: completed child sagas reopened to be compensated by their parent, by workflow
        self.sagas_reopened: Counter[str] = Counter()
        #: by (workflow, command type): which step of which workflow is slow
        self.step_latency = Histograms(STEP_LATENCY_BUCKETS)
        #: by (workflow, kind): deadline or retry
        self.deadline_lateness = Histograms(LATENESS_BUCKETS)
        self.in_flight: Callable[[], int] = lambda: 0
        #: messages and body bytes taken from the broker and not yet settled
        self.in_hand: Callable[[], tuple[int, int]] = lambda: (0, 0)
        #: why the consumer is not making progress, or None while it is
        self.stalled: Callable[[], str | None] = lambda: None
        #: partition queues this replica consumes (0 with one queue: docs/scaling.md)
        self.partitions_owned: Callable[[], int] = lambda: 0
        #: messages set aside because their saga's row is locked by another transaction
        self.waiting_on_locks: Callable[[], int] = lambda: 0

    def confirmed(self, commands: int) -> None:
        """Commands the broker confirmed."""
        self.commands_out += commands

    def watch(
        self,
        *,
        in_flight: Callable[[], int] | None = None,
        in_hand: Callable[[], tuple[int, int]] | None = None,
        stalled: Callable[[], str | None] | None = None,
        partitions_owned: Callable[[], int] | None = None,
        waiting_on_locks: Callable[[], int] | None = None,
    ) -> None:
        """Gauges read at a scrape from the parts that know them, given once the parts exist."""
        if in_flight is not None:
            self.in_flight = in_flight
        if in_hand is not None:
            self.in_hand = in_hand
        if stalled is not None:
            self.stalled = stalled
        if partitions_owned is not None:
            self.partitions_owned = partitions_owned
        if waiting_on_locks is not None:
            self.waiting_on_locks = waiting_on_locks


def count_finished(
    metrics: Counts, decisions: Iterable[Decision], workflows: Mapping[str, CompiledWorkflow]
) -> None:
    """Count the turns in a saga's course that its decisions made, where every committed decision
    passes (the batch, the alarm, a REST start or action), so no path is counted twice or missed:

    - a saga started: no state before;
    - a saga closed (completed or compensated) from a status that was not closed: the state it
      left says what it was (a failed saga keeps the state it failed in, whose status is not a
      closed one, so its late way to ``compensated`` counts too);
    - a compensation started: from a running state to a compensating one, or straight to
      compensated (nothing to undo). ``rate()`` of it over that of the starts is the workflow's
      compensation rate, which a finished counter alone gives only once the undoing is over.
    """
    for decision in decisions:
        saga = decision.saga
        if decision.outcome is Outcome.DISCARDED:  # a cancel too late: neither journaled nor a turn
            metrics.cancels_after_finish[saga.workflow] += 1
            continue
        before = decision.previous_state
        if before is None:
            metrics.sagas_started[saga.workflow] += 1
        status = saga.status
        if status not in _TURNS:
            continue
        compiled = workflows.get(saga.workflow)
        spec = compiled.workflow.states.get(before) if compiled is not None and before else None
        if decision.outcome is Outcome.REOPENED:  # completed, and now undone: it will finish again
            metrics.sagas_reopened[saga.workflow] += 1
        # in its final state, closed only now; or reopened and compensated at once
        settled = decision.outcome in (Outcome.SETTLED, Outcome.REOPENED)
        if status in _CLOSED and (spec is None or spec.status not in _CLOSED or settled):
            # not closed already (a late reply journaled on a closed saga, say)
            metrics.sagas_finished[(saga.workflow, str(status))] += 1
        if status in _UNDOING and spec is not None and spec.status is Status.RUNNING:
            metrics.compensations_started[saga.workflow] += 1


_CLOSED = frozenset({Status.COMPLETED, Status.COMPENSATED})
_UNDOING = frozenset({Status.COMPENSATING, Status.COMPENSATED})
_TURNS = _CLOSED | _UNDOING

_CLOSED = frozenset({Status.COMPLETED, Status.COMPENSATED})
_UNDOING = frozenset({Status.COMPENSATING, Status.COMPENSATED})
_TURNS = _CLOSED | _UNDOING
