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
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage

from orchestrator.amqp import Broker, Topology, envelope_of, services_of
from orchestrator.deadlines import DeadlineAlarm
from orchestrator.metrics import Metrics
from orchestrator.operations import Applied
from orchestrator.relay import Relay
from orchestrator.routing import Registry
from orchestrator.server import ApiServer
from orchestrator.service import Verdict, process_batch
from orchestrator.settings import Settings
from orchestrator.store import Store

__all__ = ["Orchestrator"]


async def _ack(messages: list[AbstractIncomingMessage], left_open: set[int]) -> None:
    """Ack a committed batch with one ``multiple`` ack per channel: the worker takes deliveries in
    order and acks batch after batch, so every earlier delivery on the channel is settled. Not on
    a channel where a message was left unacked (``left_open``): there each message is acked alone."""
    last: dict[int, AbstractIncomingMessage] = {}
    single: list[AbstractIncomingMessage] = []
    for message in messages:
        key = id(message.channel)
        if key in left_open:
            single.append(message)
        elif key not in last or (message.delivery_tag or 0) > (last[key].delivery_tag or 0):
            last[key] = message
    targets = [(m, True) for m in last.values()] + [(m, False) for m in single]
    for message, multiple in targets:
        try:
            await message.ack(multiple=multiple)
        except Exception as error:  # the channel broke: the broker redelivers, the inbox dedupes
            extra = {"saga_id": message.correlation_id, "message_id": message.message_id}
            log.warning("could not ack message %s: %s", message.message_id, error, extra=extra)


log = logging.getLogger("orchestrator")


class Orchestrator:
    def __init__(
        self, settings: Settings, registry: Registry, store: Store, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.metrics = metrics or Metrics()
        self.broker = Broker(settings.amqp_url, Topology(settings.namespace), settings.prefetch)
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
        self._left_open: set[int] = set()  # channels with a delivery we chose not to ack

    def dispatch(self, applied: Applied) -> None:
        """After a start or an operator action committed: its commands out, its timers armed."""
        self.relay.submit(applied.commands)
        self.deadlines.committed(applied.decisions)

    async def broker_checks(self) -> dict[str, str]:
        """Readiness: both broker connections up (a robust connection may be reconnecting)."""
        return {name: "ok" if up else "not connected" for name, up in self.broker.connections().items()}

    async def start(self) -> None:
        await self.broker.connect(services_of(self.registry.command_types()))
        await self.relay.start()
        await self.deadlines.start()
        await self.broker.start_consuming()
        self._worker = asyncio.create_task(self._work(), name="worker")
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
            except TimeoutError:
                log.warning("the batch in hand did not finish in time; its messages will be redelivered")
        self.deadlines.stop()
        await self.relay.drain(self.settings.shutdown_seconds)
        await self.relay.stop()
        await self.broker.close()
        await self.store.close()
        log.info("orchestrator stopped: %s", dict(self.counts))

    async def _work(self) -> None:
        inbound = self.broker.inbound
        while not self._stopping.is_set():
            getter = asyncio.ensure_future(inbound.get())
            stopper = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not getter.done():
                getter.cancel()
                break
            arrived, first = getter.result()
            batch = [first]
            while not inbound.empty() and len(batch) < self.settings.batch_size:
                batch.append(inbound.get_nowait()[1])
            await self._handle(batch, arrived)

    async def _handle(self, batch: list[AbstractIncomingMessage], arrived: float) -> None:
        """``arrived`` is when the batch's first message came in: the step latency of all its
        commands runs from there to their confirms, the wait for the batch before included."""
        envelopes = [envelope_of(m) for m in batch]
        delay = 0.1
        while True:
            try:
                result = await process_batch(self.registry, self.store, envelopes, datetime.now(UTC))
                break
            except Exception as error:
                # Nothing is acked: the batch stays in hand and is decided again from scratch.
                log.error("batch of %d failed, retrying in %.1fs: %s", len(batch), delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.relay.submit(result.commands, received_at=arrived)
        self.deadlines.committed(result.decisions)
        metrics = self.metrics
        settled: list[AbstractIncomingMessage] = []
        for message, verdict, reason in zip(batch, result.verdicts, result.reasons, strict=True):
            self.counts[str(verdict)] += 1
            extra = {"saga_id": message.correlation_id, "message_id": message.message_id}
            if verdict is Verdict.DEAD:
                log.warning(
                    "dead-lettered message %s (type %s): %s",
                    message.message_id,
                    message.type,
                    reason,
                    extra=extra,
                )
                try:
                    await self.broker.dead_letter(message, reason or "rejected")
                except Exception as error:  # not acked: the broker redelivers it, and we try again
                    log.warning(
                        "could not dead-letter message %s: %s", message.message_id, error, extra=extra
                    )
                    self._left_open.add(id(message.channel))
                    continue
                metrics.dead_lettered += 1
            elif verdict is Verdict.DUPLICATE:
                log.info(
                    "duplicate message %s (type %s) acked", message.message_id, message.type, extra=extra
                )
            settled.append(message)
        await _ack(settled, self._left_open)
