"""Prometheus metrics: plain numbers on the hot path, turned into metric families only at scrape.

The service is one event loop, so the consumer, the relay and the alarm bump plain ints and
lock-free histograms here; ``prometheus_client``'s own metric objects take a lock per update,
which a few thousand messages a second need not pay. Gauges that describe the database (sagas
in flight and failed per workflow and status, stuck sagas, the outbox) are read by the
``/metrics`` handler just before it renders, never per message, and only from rows that are
still of interest (a partial index of the sagas in flight): finished sagas, which only grow, are
a counter of this process (``orchestrator_sagas_finished_total``), not a count of the table.

Labels are bounded by the workflow definitions (workflow, release, state, command type, timer
kind) or by enums in the code (reason, fault, verdict), never by a saga, key or message: a label
value per saga would make a series per saga. docs/monitoring.md says which question each metric
answers, and deploy/ holds the alert rules and the dashboard built on them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from orchestrator.core.definitions import Status
from orchestrator.core.engine import Decision
from orchestrator.core.machine import CompiledWorkflow

__all__ = ["CONTENT_TYPE", "DatabaseGauges", "Histogram", "Histograms", "Metrics", "count_finished"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

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


@dataclass
class DatabaseGauges:
    """What the database says at scrape time."""

    #: (workflow, status) -> sagas, for running, compensating and failed (never a finished status)
    sagas: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (workflow, state) -> stuck sagas: the state says what a stuck saga waits for
    stuck: dict[tuple[str, str], int] = field(default_factory=dict)
    outbox: int = 0
    #: (workflow, release, state, status) -> sagas, the same sagas as ``sagas`` one level finer
    states: dict[tuple[str, str, str, str], int] = field(default_factory=dict)

    @classmethod
    def of_states(
        cls, states: dict[tuple[str, str, str, str], int], stuck: dict[tuple[str, str], int], outbox: int
    ) -> DatabaseGauges:
        """From the counts per state, the coarser counts per status summed out of them (one query
        for both, and they cannot disagree)."""
        sagas: Counter[tuple[str, str]] = Counter()
        for (workflow, _, _, status), n in states.items():
            sagas[(workflow, status)] += n
        return cls(dict(sagas), stuck, outbox, states)


class Metrics:
    """Every number the service exposes; one instance per running service (and per test app)."""

    def __init__(self, process: bool = True) -> None:
        self.messages_in: Counter[str] = Counter()  # by verdict: accepted, duplicate, dead, left
        self.dead_lettered: Counter[str] = Counter()  # by reason code (orchestrator.core.ingress.Reason)
        self.batch_failures: Counter[str] = Counter()  # by fault (orchestrator.service.faults.Fault)
        self.commands_out = 0  # confirmed by the broker
        self.deadlines_fired: Counter[str] = Counter()  # by kind: deadline, retry
        self.operator_actions: Counter[str] = Counter()  # by action, including start
        self.task_restarts: Counter[str] = Counter()  # by task (orchestrator.service.supervisor)
        #: sagas this process saw finish (completed, compensated), by (workflow, status)
        self.sagas_finished: Counter[tuple[str, str]] = Counter()
        #: sagas this process started (over AMQP or REST), by workflow
        self.sagas_started: Counter[str] = Counter()
        #: sagas this process saw turn from running to compensating, by workflow
        self.compensations_started: Counter[str] = Counter()
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
        self.database: DatabaseGauges | None = None  # None: the last scrape could not read it
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def count_finished(
    metrics: Metrics, decisions: Iterable[Decision], workflows: Mapping[str, CompiledWorkflow]
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
        before = decision.previous_state
        if before is None:
            metrics.sagas_started[saga.workflow] += 1
        status = saga.status
        if status not in _TURNS:
            continue
        compiled = workflows.get(saga.workflow)
        spec = compiled.workflow.states.get(before) if compiled is not None and before else None
        if status in _CLOSED and (spec is None or spec.status not in _CLOSED):
            # not closed already (a late reply journaled on a closed saga, say)
            metrics.sagas_finished[(saga.workflow, str(status))] += 1
        if status in _UNDOING and spec is not None and spec.status is Status.RUNNING:
            metrics.compensations_started[saga.workflow] += 1


_CLOSED = frozenset({Status.COMPLETED, Status.COMPENSATED})
_UNDOING = frozenset({Status.COMPENSATING, Status.COMPENSATED})
_TURNS = _CLOSED | _UNDOING

_Family = TypeVar("_Family", CounterMetricFamily, GaugeMetricFamily)


def _labelled(family: _Family, counts: Mapping[Any, float]) -> _Family:
    """One sample per label value (a tuple for several labels), in a stable order."""
    for labels, count in sorted(counts.items()):
        family.add_metric(list(labels) if isinstance(labels, tuple) else [labels], count)
    return family


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _labelled(
            CounterMetricFamily(
                "orchestrator_messages_in",
                "Messages taken off the orchestrator queue, by verdict",
                labels=["verdict"],
            ),
            {v: m.messages_in[v] for v in ("accepted", "duplicate", "dead", "left")},
        )
        yield CounterMetricFamily(
            "orchestrator_duplicates",
            "Messages whose id was taken before (acked, changed nothing)",
            m.messages_in["duplicate"],
        )
        yield _labelled(
            CounterMetricFamily(
                "orchestrator_dead_lettered",
                "Messages set aside in the dead-letter table, by reason code",
                labels=["reason"],
            ),
            m.dead_lettered,
        )
        yield _labelled(
            CounterMetricFamily(
                "orchestrator_batch_failures",
                "Batches whose commit failed, by whose fault (retried, or split to find the message)",
                labels=["fault"],
            ),
            m.batch_failures,
        )
        count, size = m.in_hand()
        yield GaugeMetricFamily(
            "orchestrator_messages_in_hand", "Messages taken from the broker and not yet settled", count
        )
        yield GaugeMetricFamily("orchestrator_bytes_in_hand", "Body bytes of the messages in hand", size)
        yield GaugeMetricFamily(
            "orchestrator_consumer_stalled",
            "1 while messages wait and no batch has committed for ORCHESTRATOR_STALL_SECONDS",
            m.stalled() is not None,
        )
        yield GaugeMetricFamily(
            "orchestrator_partitions_owned", "Partition queues this replica consumes", m.partitions_owned()
        )
        yield CounterMetricFamily(
            "orchestrator_commands_out", "Commands the broker confirmed", m.commands_out
        )
        yield _labelled(
            CounterMetricFamily(
                "orchestrator_timers_fired", "Deadlines and retries fed through the engine", labels=["kind"]
            ),
            {k: m.deadlines_fired[k] for k in ("deadline", "retry")},
        )
        yield _labelled(
            CounterMetricFamily(
                "orchestrator_operator_actions",
                "Starts and operator actions applied over REST",
                labels=["action"],
            ),
            m.operator_actions,
        )
        yield _labelled(
            CounterMetricFamily(
                "orchestrator_sagas_finished",
                "Sagas this process saw finish (completed or compensated), by workflow and status",
                labels=["workflow", "status"],
            ),
            m.sagas_finished,
        )
        yield _labelled(
            CounterMetricFamily(
                "orchestrator_sagas_started",
                "Sagas this process started (over AMQP or REST), by workflow",
                labels=["workflow"],
            ),
            m.sagas_started,
        )
        yield _labelled(
            CounterMetricFamily(
                "orchestrator_compensations_started",
                "Sagas this process saw turn from running to compensating (or straight to compensated)",
                labels=["workflow"],
            ),
            m.compensations_started,
        )
        yield _labelled(
            CounterMetricFamily(
                "orchestrator_task_restarts",
                "Tasks of the service started again after an unexpected end",
                labels=["task"],
            ),
            m.task_restarts,
        )
        yield _histograms(
            "orchestrator_step_latency_seconds",
            "From an event's arrival to the broker's confirm of the command it caused,"
            " by workflow and command type",
            ["workflow", "command"],
            m.step_latency,
        )
        yield _histograms(
            "orchestrator_deadline_lateness_seconds",
            "How long after its due time a deadline or retry fired, by workflow and kind",
            ["workflow", "kind"],
            m.deadline_lateness,
        )
        yield GaugeMetricFamily(
            "orchestrator_relay_in_flight",
            "Commands handed to the relay and not yet confirmed",
            m.in_flight(),
        )
        database = m.database
        yield GaugeMetricFamily(
            "orchestrator_database_up",
            "Whether the last scrape could read the database",
            database is not None,
        )
        if database is None:
            return
        yield _labelled(
            GaugeMetricFamily(
                "orchestrator_sagas",
                "Sagas in flight (running, compensating) and failed, by workflow and status",
                labels=["workflow", "status"],
            ),
            database.sagas,
        )
        yield _labelled(
            GaugeMetricFamily(
                "orchestrator_sagas_in_state",
                "Sagas in flight and failed, by workflow, release, state and status",
                labels=["workflow", "release", "state", "status"],
            ),
            database.states,
        )
        yield _labelled(
            GaugeMetricFamily(
                "orchestrator_stuck_sagas",
                "Unfinished sagas with no pending timer and no progress for longer than the threshold,"
                " by workflow and the state they wait in",
                labels=["workflow", "state"],
            ),
            database.stuck,
        )
        yield GaugeMetricFamily(
            "orchestrator_outbox_backlog",
            "Committed commands not yet confirmed by the broker",
            database.outbox,
        )


def _histograms(
    name: str, documentation: str, labels: list[str], histograms: Histograms
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in sorted(histograms.by.items()):
        family.add_metric(list(values), histogram.buckets(), histogram.sum)
    return family
