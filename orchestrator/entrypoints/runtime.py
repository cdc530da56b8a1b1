"""The running service: consume in batches, decide and commit, ack, hand commands to the relay.

One batch is committed at a time (group commit); the relay's confirms overlap with the next
batch. Nothing is acked before its batch committed; a batch whose commit fails is retried with
backoff while its messages stay unacked. The REST API, when there is one, is served in the same
event loop, and its starts and actions hand their commands to the same relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from orchestrator.adapters.amqp.broker import Broker, Delivery, Topology, Unpublishable, services_of
from orchestrator.adapters.memory import MemoryPartitionLocks
from orchestrator.adapters.metrics import Metrics, count_finished
from orchestrator.adapters.postgres.partitions import PostgresPartitionLocks
from orchestrator.adapters.postgres.retention import Pruner
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.adapters.tracing import OtelTracer, publishing
from orchestrator.core.engine import OutgoingCommand
from orchestrator.core.ingress import Envelope, Limits, Reason, Refused, printable
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.server import ApiServer
from orchestrator.entrypoints.settings import Settings
from orchestrator.service.batch import BatchResult, Verdict, process_batch
from orchestrator.service.clock import DatabaseClock
from orchestrator.service.dead_letters import DeadLetterDrain
from orchestrator.service.deadlines import DeadlineAlarm
from orchestrator.service.faults import Fault, classify
from orchestrator.service.operations import Applied
from orchestrator.service.partitions import PartitionLocks, PartitionOwner
from orchestrator.service.relay import Relay
from orchestrator.service.store import Store
from orchestrator.service.supervisor import Restart, Supervisor, TaskFactory, bounded, parse_injection

__all__ = ["Orchestrator"]


log = logging.getLogger("orchestrator")


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: Store,
        metrics: Metrics | None = None,
        tracer: OtelTracer | None = None,
    ) -> None:
        self.settings = settings
        #: None unless the OTEL_* variables ask for traces (docs/tracing.md)
        self.tracer = tracer
        self.registry = registry
        self.store = store
        self.metrics = metrics or Metrics()
        self.limits = limits = Limits(max_message_bytes=settings.max_message_bytes)
        # The budget of bytes in hand is shared: an eighth of it for the dead-letter drain.
        drain_prefetch = max(1, min(32, settings.effective_prefetch // 8))
        topology = Topology(
            settings.namespace, partitions=settings.partitions, queue_type=settings.queue_type
        )
        self.broker = Broker(
            settings.amqp_url, topology, max(1, settings.effective_prefetch - drain_prefetch), limits
        )
        #: which partitions this replica consumes (docs/scaling.md); None with one queue
        self.ownership = _ownership(settings, store, self.broker, topology)
        if self.ownership is not None:  # until it knows its share: as if it held them all
            self.broker.consumer.share = settings.partitions + 1
        #: takes what the broker dead-letters (to {ns}.dead-letter) into the dead-letter table
        self.drain = DeadLetterDrain(
            settings.amqp_url,
            topology,
            store,
            self.metrics,
            limits,
            drain_prefetch,
        )
        publish: Callable[[OutgoingCommand], Awaitable[None]] = self.broker.publish_command
        if tracer is not None:
            publish = publishing(tracer, publish, topology.commands)
        self.relay = Relay(store, publish, settings.relay_in_flight, settings.outbox_sweep_seconds)
        self.relay.metrics = self.metrics
        self.metrics.in_flight = lambda: len(self.relay.in_flight)
        #: "now" as the database has it: decisions and deadlines agree across replicas' hosts
        self.clock = DatabaseClock(store.database_now)
        self.relay.now = self.clock.now
        if self.ownership is not None:
            self.ownership.replica_gone = self.relay.sweep_soon
        self.deadlines = DeadlineAlarm(
            registry, store, self.relay.submit, metrics=self.metrics, clock=self.clock, tracer=tracer
        )
        self.counts = self.metrics.messages_in  # by verdict, for the stop line and the metrics alike
        self.api: ApiServer | None = None
        self._stopping = asyncio.Event()
        self._stopped = False
        self._exiting = False
        self.supervisor = Supervisor(
            self._fatal, self.metrics.task_restarts, parse_injection(settings.test_fail_task)
        )
        self._worker: asyncio.Task[None] | None = None
        self._database_trouble: str | None = None
        self._last_commit = time.monotonic()
        self._left_logged = 0.0  # when leaving messages was last logged: once per 10 s at most
        #: messages the broker says wait in the queue while none are in hand, and since when
        self._waiting: tuple[int, float] = (0, time.monotonic())
        self.metrics.in_hand = lambda: (self.broker.consumer.unsettled, self.broker.consumer.bytes_in_hand)
        self.metrics.stalled = self.stalled
        self.pruner = _pruner(settings, store)
        if (ownership := self.ownership) is not None:
            self.metrics.partitions_owned = lambda: len(ownership.owned)

    def dispatch(self, applied: Applied) -> None:
        """After a start or an operator action committed: its commands out, its timers armed."""
        self.relay.submit(applied.commands)
        self.deadlines.committed(applied.decisions)
        count_finished(self.metrics, applied.decisions, self.registry.workflows)

    async def broker_checks(self) -> dict[str, str]:
        """Readiness: both broker connections up (either may be reconnecting), and the consumer
        making progress."""
        checks = {name: "ok" if up else "not connected" for name, up in self.broker.connections().items()}
        stalled = self.stalled()
        checks["consumer"] = "ok" if stalled is None else stalled
        return checks

    def _spawn(self, name: str, factory: TaskFactory) -> asyncio.Task[None]:
        return self.supervisor.spawn(name, factory, _RESTARTABLE.get(name))

    async def start(self) -> None:
        spawn = self._spawn
        await self.broker.connect(services_of(self.registry.command_types()), self.registry.start_types())
        await self.clock.sync()  # before anything is decided: "now" is the database's
        spawn("clock-sync", self.clock.keep_in_sync)
        holder = await self.store.hold()  # before anything commits: its outbox rows name it
        log.info("replica %d: other replicas' outbox sweeps leave the commands it commits to it", holder)
        await self.relay.start(spawn)
        await self.deadlines.start()
        await self.broker.start_consuming(spawn)
        if self.ownership is not None:
            spawn("partitions", self.ownership.run)
        self.drain.start(spawn)
        self._worker = spawn("worker", self._work)
        spawn("queue-watch", self._watch_queue)
        if self.pruner is not None:
            spawn("prune", self.pruner.run)
        log.info(
            "orchestrator running: workflows %s, namespace %s",
            ", ".join(self._loaded_names()),
            self.settings.namespace,
        )

    def _loaded_names(self) -> list[str]:
        """Each loaded workflow release, the current one of each workflow marked."""
        current = {name: c.workflow.release for name, c in self.registry.workflows.items()}
        return [
            f"{name} release {release}{' (current)' if current[name] == release else ''}"
            for name, release in sorted(self.registry.loaded())
        ]

    async def run_until_signalled(self) -> int:
        """Serve until SIGTERM or SIGINT (exit code 0), or until a part of the service fails for
        good (1); a second signal exits at once. The exit code to use."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled, sig)
        self._exiting = True  # the watchdog set at the stop runs until the process has exited
        starting = asyncio.ensure_future(self.start())
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # a signal during the start: what started is stopped
            starting.cancel()
            await asyncio.wait({starting}, timeout=1.0)
        elif starting.exception() is not None:
            stop.cancel()
            await self.stop()
            raise starting.exception()  # type: ignore[misc]
        elif self.api is not None:
            self.api.start(self._spawn)
            log.info("api listening on %s (OpenAPI at %s/docs)", self.api.url, self.api.url)
        await stop
        await self.stop()
        return 1 if self.supervisor.fatal is not None else 0

    def _signalled(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._stopping.is_set():
            log.warning("%s again while stopping: exiting at once", name)
            _exit_now(128 + sig)
        log.info("%s: stopping within %gs", name, self.settings.shutdown_seconds)
        self._stopping.set()

    def _fatal(self, reason: str) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Stop whole, within ``shutdown_seconds`` whatever the broker and the database are doing:
        intake off at once (API, consumers, deadline alarm), then the work in hand (the batch,
        the relay's confirms, the dead letters, the requests) until the bound, then close.
        Nothing committed is lost by stopping early: the next process finds the outbox and the
        timers, and the broker redelivers what was not acked."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self.supervisor.stopping = True
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.shutdown_seconds
        watchdog = _watchdog(self.settings.shutdown_seconds + _WATCHDOG_MARGIN, 1)

        def left() -> float:
            return max(0.0, until - loop.time())

        # intake off, at once
        self.deadlines.stop()
        if self.api is not None:
            self.api.stop_taking()
        await bounded("cancelling the consumer", self.broker.stop_consuming(), min(left(), 2.0))
        await bounded("cancelling the dead-letter consumer", self.drain.stop_taking(2.0), min(left(), 2.0))
        # the work in hand, within what is left of the bound
        if self._worker is not None and not await bounded(
            "the batch in hand", asyncio.shield(self._worker), left()
        ):
            log.warning("the messages in hand were not settled; the broker will redeliver them")
        if not await bounded("the relay", self.relay.drain(left()), left() + 0.5) or self.relay.in_flight:
            log.warning("%d commands not confirmed; the outbox keeps them", len(self.relay.in_flight))
        await bounded("the dead-letter drain", self.drain.stop(left()), left() + 0.5)
        if self.api is not None:
            await bounded("the REST API", self.api.stop(left()), left() + 0.5)
        await bounded("closing", self._close(), _CLOSE_SECONDS)
        log.info("orchestrator stopped: %s", dict(self.counts))
        if self.supervisor.fatal is not None:
            log.error("exiting non-zero: %s", self.supervisor.fatal)
        if not self._exiting:  # used in a process that goes on (a test, the benchmark)
            watchdog.cancel()

    async def _close(self) -> None:
        """What is left once the work in hand is done or out of time: each step briefly."""
        await bounded("the relay's tasks", self.relay.stop(0.5), 1.0)
        stuck = await self.supervisor.cancel_all(1.0)
        if stuck:
            log.warning("tasks still running at exit: %s", ", ".join(stuck))
        if self.ownership is not None:
            await bounded("giving up the partitions", self.ownership.close(), 2.5)
        await bounded("closing the broker connections", self.broker.close(0.5), 1.5)
        await bounded("closing the database pool", self.store.close(), 1.0)
        if self.tracer is not None:  # the spans buffered: out before the process ends
            await bounded("exporting the spans", asyncio.to_thread(self.tracer.flush, 2.0), 2.5)

    async def _work(self) -> None:
        """Consume, then decide, commit and ack each batch, until stopping (the consumer says
        what it still hands out then)."""
        async for batch in self.broker.consumer.batches(self.settings.batch_size, self._stopping):
            await self._handle(batch)

    def stalled(self) -> str | None:
        """Why the consumer makes no progress, or None: the database cannot commit; or messages
        are in hand, or the broker says some wait in the queue while none are, and no batch has
        committed for longer than ``stall_seconds`` since."""
        if self._database_trouble is not None:
            return f"cannot commit: {self._database_trouble}"
        consumer = self.broker.consumer
        now = time.monotonic()
        if consumer.unsettled:
            idle = now - max(self._last_commit, consumer.busy_since)
            if idle > self.settings.stall_seconds:
                return f"{consumer.unsettled} messages in hand and no batch committed for {idle:.0f}s"
            return None
        waiting, since = self._waiting
        idle = now - max(self._last_commit, since)
        if waiting and idle > self.settings.stall_seconds:
            return f"{waiting} messages wait in the queue and none was taken for {idle:.0f}s"
        return None

    async def _watch_queue(self) -> None:
        """Asks the broker, while nothing is in hand, whether messages wait all the same (a
        consumer the broker stopped feeding): readiness must see that too."""
        interval = max(1.0, min(5.0, self.settings.stall_seconds / 3))
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            if self.broker.consumer.unsettled:
                self._waiting = (0, time.monotonic())
                continue
            count = await self.broker.waiting()
            if not count:
                self._waiting = (0, time.monotonic())
            elif not self._waiting[0]:
                self._waiting = (count, time.monotonic())
            else:
                self._waiting = (count, self._waiting[1])

    async def _handle(self, batch: list[Delivery]) -> None:
        """Decide and commit a batch, then ack it. A batch that cannot commit is retried while
        the database is away, and split while it is about a message, until every message is
        either taken or set aside: nothing about one message holds up the others."""
        result = await self._commit([d.envelope for d in batch], [d.arrived for d in batch])
        metrics = self.metrics
        for delivery, verdict, refusal in zip(batch, result.verdicts, result.refusals, strict=True):
            self.counts[str(verdict)] += 1
            envelope = delivery.envelope
            if verdict is Verdict.DEAD and refusal is not None:
                metrics.dead_lettered[str(refusal.reason)] += 1
                log.warning(
                    "dead-lettered message %s (type %s): %s",
                    printable(envelope.properties.get("message_id") or envelope.message_id),
                    printable(envelope.properties.get("type") or envelope.type),
                    refusal,
                    extra={"saga_id": envelope.correlation_id, "message_id": envelope.message_id},
                )
            elif verdict is Verdict.DUPLICATE:
                log.info(
                    "duplicate message %s (type %s) acked",
                    envelope.message_id,
                    envelope.type,
                    extra={"saga_id": envelope.correlation_id, "message_id": envelope.message_id},
                )
        left = [d for d, verdict in zip(batch, result.verdicts, strict=True) if verdict is Verdict.LEFT]
        if left:
            handed = await self._leave(left)
            batch = [
                d for d, verdict in zip(batch, result.verdicts, strict=True) if verdict is not Verdict.LEFT
            ] + handed
        await self.broker.consumer.ack(batch)

    async def _leave(self, left: list[Delivery]) -> list[Delivery]:
        """Hand over messages for sagas on a release of their workflow this process does not load
        (a rolling deploy: a process that loads it takes them): each is published to the queue
        every replica takes from, and acked with the rest of the batch (returned). Not given back
        to its own queue, which would hand it to this process again when it owns the partition,
        and whose delivery limit counts a return. A batch of nothing else waits a moment first,
        so that a process alone with them does not spin on them. What cannot be handed over (the
        broker refuses, or it went round too often) is requeued before the rest is acked, so no
        ``multiple`` ack takes it along."""
        now = time.monotonic()
        if now - self._left_logged > 10:
            self._left_logged = now
            log.warning(
                "left %d messages for sagas on a release this process does not load (loaded: %s);"
                " a process that loads it takes them",
                len(left),
                ", ".join(f"{name} {release}" for name, release in self.registry.loaded()),
            )
        if len(left) == self.broker.consumer.unsettled:
            await asyncio.sleep(0.5)
        handed: list[Delivery] = []
        kept: list[Delivery] = []
        for delivery in left:
            try:
                (handed if await self.broker.hand_over(delivery) else kept).append(delivery)
            except Unpublishable as error:
                log.warning("could not hand over message %s: %s", delivery.envelope.message_id, error)
                kept.append(delivery)
        if kept:
            await self.broker.consumer.requeue(kept)
        return handed

    async def _commit(
        self, envelopes: list[Envelope], arrived: list[float], *, split: bool = False, last: bool = False
    ) -> BatchResult:
        """``process_batch`` until it commits; the commands go to the relay, the timers to the
        alarm. ``arrived`` is when each message came in: step latency runs from there. ``split``:
        a part of a batch that failed already (tried less before splitting again); ``last``: a
        dead letter's bare record, which nothing about a message can fail any more, so any
        failure of it is the database's."""
        delay, attempts = 0.1, 0
        while True:
            try:
                now = self.clock.now()
                result = await process_batch(
                    self.registry, self.store, envelopes, now, self.limits, self.tracer
                )
            except Exception as error:
                fault = Fault.UNAVAILABLE if last else classify(error)
                self.metrics.batch_failures[fault.value] += 1
                if fault is Fault.UNAVAILABLE:  # nothing is acked; the batch waits for the database
                    self._database_trouble = printable(error)[:300]
                    log.error(
                        "batch of %d cannot commit (%s), retrying in %.1fs", len(envelopes), error, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                attempts += 1
                tries = _TRIES[fault][1 if split else 0]
                if attempts < tries:
                    pause = 0.25 * 4 ** (attempts - 1) if fault is Fault.OTHER and not split else 0.05
                    log.warning(
                        "batch of %d failed (%s: %s), again in %.2fs",
                        len(envelopes),
                        fault.value,
                        error,
                        pause,
                    )
                    await asyncio.sleep(pause)
                    continue
                return await self._isolate(envelopes, arrived, fault, error)
            self._database_trouble = None
            self._last_commit = time.monotonic()
            first = min(arrived) if arrived else None
            self.relay.submit(result.commands, received_at=first)
            self.deadlines.committed(result.decisions)
            count_finished(self.metrics, result.decisions, self.registry.workflows)
            return result

    async def _isolate(
        self, envelopes: list[Envelope], arrived: list[float], fault: Fault, error: Exception
    ) -> BatchResult:
        """Split a failing batch in halves until the message at fault stands alone; set it aside."""
        if len(envelopes) > 1:
            half = len(envelopes) // 2
            left = await self._commit(envelopes[:half], arrived[:half], split=True)
            right = await self._commit(envelopes[half:], arrived[half:], split=True)
            return _joined(left, right)
        envelope = envelopes[0]
        if envelope.refused is not None:  # even its dead letter failed: record it bare
            log.error("could not record the dead letter of %s: %s", printable(envelope.message_id), error)
            bare = Envelope(
                body=b"", message_id=envelope.message_id, type=envelope.type, refused=envelope.refused
            )
            return await self._commit([bare], arrived, last=True)
        reason = Reason.DATABASE_REFUSED if fault is Fault.MESSAGE else Reason.FAILED_REPEATEDLY
        refused = Refused(reason, f"{type(error).__name__}: {error}")
        log.error(
            "message %s failed its batch (%s); setting it aside",
            printable(envelope.message_id),
            refused,
            extra={"message_id": envelope.message_id},
        )
        return await self._commit([envelope.refuse(refused)], arrived, split=True)


#: the tasks that hold nothing in hand, so that starting them again after an unexpected end is
#: safe; any other task's end stops the service (orchestrator.service.supervisor)
_RESTARTABLE = {
    "queue-watch": Restart(),
    "outbox-sweep": Restart(),
    "prune": Restart(),
    "clock-sync": Restart(),
    "partitions": Restart(),
}


def _ownership(settings: Settings, store: Store, broker: Broker, topology: Topology) -> PartitionOwner | None:
    """Partition ownership when there are partitions: shared with the other replicas through
    PostgreSQL; a store of one process alone owns them all."""
    if settings.partitions == 1:
        return None
    locks: PartitionLocks
    if isinstance(store, PostgresStore):
        locks = PostgresPartitionLocks(store.dsn, settings.namespace)
    else:
        locks = MemoryPartitionLocks()
    return PartitionOwner(
        locks, broker.consumer, topology.partition_queue, settings.partitions, settings.rebalance_seconds
    )


def _pruner(settings: Settings, store: Store) -> Pruner | None:
    """The periodic prune (docs/retention.md), on PostgreSQL, unless its interval is 0."""
    if not isinstance(store, PostgresStore) or settings.prune_interval_seconds <= 0:
        return None
    return Pruner(
        store.pool,
        settings.prune_interval_seconds,
        timedelta(days=settings.inbox_retention_days),
        timedelta(days=settings.dead_letter_retention_days),
        timedelta(days=settings.tombstone_retention_days),
    )


#: past the shutdown bound, closing connections takes at most this long
_CLOSE_SECONDS = 4.5
#: past the shutdown bound, the watchdog ends the process whatever its event loop is doing
_WATCHDOG_MARGIN = 10.0


def _exit_now(code: int) -> None:
    """Exit without running anything else: flush the logs, then ``os._exit``."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(code)


def _watchdog(seconds: float, code: int) -> threading.Timer:
    """A thread that ends the process after ``seconds``: the stop is bounded even if a step of
    it, or anything else, blocks the event loop."""

    def expire() -> None:
        os.write(2, f"orchestrator: not stopped {seconds:g}s after the stop began; exiting\n".encode())
        _exit_now(code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


#: how many times a batch is tried before it is split, by whose fault its failure is: (a whole
#: batch, a part of one being split). A failure of unknown kind gets a few seconds of backoff on
#: the whole batch, in case it passes; once splitting, the parts are not waited on again.
_TRIES = {Fault.CONFLICT: (5, 5), Fault.OTHER: (4, 2), Fault.MESSAGE: (1, 1)}


def _joined(left: BatchResult, right: BatchResult) -> BatchResult:
    return BatchResult(
        verdicts=left.verdicts + right.verdicts,
        refusals=left.refusals + right.refusals,
        commands=left.commands + right.commands,
        decisions=left.decisions + right.decisions,
        journal=left.journal + right.journal,
    )
