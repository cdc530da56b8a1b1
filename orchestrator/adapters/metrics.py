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

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from orchestrator.service.counts import Counts, Histogram, Histograms, count_finished

__all__ = ["CONTENT_TYPE", "DatabaseGauges", "Histogram", "Histograms", "Metrics", "count_finished"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


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


class Metrics(Counts):
    """The service's numbers (:class:`~orchestrator.service.counts.Counts`) as Prometheus scrapes
    them, with the gauges read from the database just before a render."""

    def __init__(self, process: bool = True) -> None:
        super().__init__()
        self.database: DatabaseGauges | None = None  # None: the last scrape could not read it
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    def read_database(self, gauges: DatabaseGauges | None) -> None:
        """What the database said just before a scrape (None: it could not be read)."""
        self.database = gauges

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
                "orchestrator_unchecked_replies",
                "Messages taken without a section 6 reply id, from the services"
                " ORCHESTRATOR_UNCHECKED_REPLIES lets by while they move to one",
                labels=["service"],
            ),
            m.unchecked_replies,
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
            "orchestrator_messages_waiting_on_locks",
            "Messages set aside because another transaction holds their saga's row (retried, never"
            " dead-lettered)",
            m.waiting_on_locks(),
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
                "orchestrator_cancels_after_finish",
                "Cancel events (a workflow's cancelled_by) that came after their saga had completed or"
                " been compensated: acked, not journaled",
                labels=["workflow"],
            ),
            m.cancels_after_finish,
        )
        yield _labelled(
            CounterMetricFamily(
                "orchestrator_sagas_reopened",
                "Completed child sagas reopened to be compensated by their parent: each is counted"
                " finished again when its compensation is over",
                labels=["workflow"],
            ),
            m.sagas_reopened,
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
