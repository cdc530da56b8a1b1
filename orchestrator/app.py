"""The running service: consume in batches, decide and commit, ack, hand commands to the relay.

One batch is committed at a time (group commit); the relay's confirms overlap with the next
batch. Nothing is acked before its batch committed; a batch whose commit fails is retried with
backoff while its messages stay unacked. The REST API, when there is one, is served in the same
event loop, and its starts and actions hand their commands to the same relay.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from datetime import UTC, datetime

from orchestrator.amqp import Broker, Delivery, Topology, services_of
from orchestrator.dead_letters import DeadLetterDrain
from orchestrator.deadlines import DeadlineAlarm
from orchestrator.faults import Fault, classify
from orchestrator.ingress import Envelope, Limits, Reason, Refused, printable
from orchestrator.metrics import Metrics
from orchestrator.operations import Applied
from orchestrator.relay import Relay
from orchestrator.routing import Registry
from orchestrator.server import ApiServer
from orchestrator.service import BatchResult, Verdict, process_batch
from orchestrator.settings import Settings
from orchestrator.store import Store

__all__ = ["Orchestrator"]


log = logging.getLogger("orchestrator")


class Orchestrator:
    def __init__(
        self, settings: Settings, registry: Registry, store: Store, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.metrics = metrics or Metrics()
        self.limits = limits = Limits(max_message_bytes=settings.max_message_bytes)
        # The budget of bytes in hand is shared: an eighth of it for the dead-letter drain.
        drain_prefetch = max(1, min(32, settings.effective_prefetch // 8))
        self.broker = Broker(
            settings.amqp_url,
            Topology(settings.namespace),
            max(1, settings.effective_prefetch - drain_prefetch),
            limits,
        )
        #: takes what the broker dead-letters (to {ns}.dead-letter) into the dead-letter table
        self.drain = DeadLetterDrain(
            settings.amqp_url, Topology(settings.namespace), store, self.metrics, limits, drain_prefetch
        )
        self.relay = Relay(
            store, self.broker.publish_command, settings.relay_in_flight, settings.outbox_sweep_seconds
        )
        self.relay.metrics = self.metrics
        self.metrics.in_flight = lambda: len(self.relay.in_flight)
        self.deadlines = DeadlineAlarm(registry, store, self.relay.submit, metrics=self.metrics)
        self.counts = self.metrics.messages_in  # by verdict, for the stop line and the metrics alike
        self.api: ApiServer | None = None
        self._stopping = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._database_trouble: str | None = None
        self._last_commit = time.monotonic()
        #: messages the broker says wait in the queue while none are in hand, and since when
        self._waiting: tuple[int, float] = (0, time.monotonic())
        self._watcher: asyncio.Task[None] | None = None
        self.metrics.in_hand = lambda: (self.broker.consumer.unsettled, self.broker.consumer.bytes_in_hand)
        self.metrics.stalled = self.stalled

    def dispatch(self, applied: Applied) -> None:
        """After a start or an operator action committed: its commands out, its timers armed."""
        self.relay.submit(applied.commands)
        self.deadlines.committed(applied.decisions)

    async def broker_checks(self) -> dict[str, str]:
        """Readiness: both broker connections up (either may be reconnecting), and the consumer
        making progress."""
        checks = {name: "ok" if up else "not connected" for name, up in self.broker.connections().items()}
        stalled = self.stalled()
        checks["consumer"] = "ok" if stalled is None else stalled
        return checks

    async def start(self) -> None:
        await self.broker.connect(services_of(self.registry.command_types()))
        await self.relay.start()
        await self.deadlines.start()
        await self.broker.start_consuming()
        self.drain.start()
        self._worker = asyncio.create_task(self._work(), name="worker")
        self._watcher = asyncio.create_task(self._watch_queue(), name="queue-watch")
        log.info(
            "orchestrator running: workflows %s, namespace %s",
            ", ".join(sorted(self.registry.workflows)),
            self.settings.namespace,
        )

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        worker = self._worker
        assert worker is not None
        watched = {worker}
        if self.api is not None:
            watched.add(self.api.start())
            log.info("api listening on %s (OpenAPI at %s/docs)", self.api.url, self.api.url)
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({*watched, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in watched:
            if task.done() and task.exception() is not None:
                stop.cancel()
                await self.stop()
                raise task.exception()  # type: ignore[misc]
        await self.stop()

    async def stop(self) -> None:
        """Stop taking requests and messages, finish the batch in hand, let the relay send what is
        committed."""
        self._stopping.set()
        if self.api is not None:
            await self.api.stop()
        await self.broker.stop_consuming()
        if self._worker is not None:
            try:
                await asyncio.wait_for(self._worker, self.settings.shutdown_seconds)
            except TimeoutError:  # wait_for cancelled it
                log.warning("the batch in hand did not finish in time; its messages will be redelivered")
            except Exception as error:  # it failed earlier; everything else must still be closed
                log.error("the worker had stopped: %s", error)
        await self.drain.stop(self.settings.shutdown_seconds)
        if self._watcher is not None:
            self._watcher.cancel()
        self.deadlines.stop()
        await self.relay.drain(self.settings.shutdown_seconds)
        await self.relay.stop()
        await self.broker.close()
        await self.store.close()
        log.info("orchestrator stopped: %s", dict(self.counts))

    async def _work(self) -> None:
        consumer, limit = self.broker.consumer, self.settings.batch_size
        while batch := await consumer.batch(limit, self._stopping):
            await self._handle(batch)
        # Stopping: what was handed out already is taken, not returned (a return counts as a
        # delivery toward the queue's limit, and would be redelivered anyway).
        while batch := consumer.taken_waiting(limit):
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
        await self.broker.consumer.ack(batch)

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
                now = datetime.now(UTC)
                result = await process_batch(self.registry, self.store, envelopes, now, self.limits)
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
