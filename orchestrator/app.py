"""The running service: consume in batches, decide and commit, ack, hand commands to the relay.

One batch is committed at a time (group commit); the relay's confirms overlap with the next
batch. Nothing is acked before its batch committed; a batch whose commit fails is retried with
backoff while its messages stay unacked.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage

from orchestrator.amqp import Broker, Topology, envelope_of, services_of
from orchestrator.deadlines import DeadlineAlarm
from orchestrator.relay import Relay
from orchestrator.routing import Registry
from orchestrator.service import Verdict, process_batch
from orchestrator.settings import Settings
from orchestrator.store import Store

__all__ = ["Orchestrator"]

log = logging.getLogger("orchestrator")


class Orchestrator:
    def __init__(self, settings: Settings, registry: Registry, store: Store) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.broker = Broker(settings.amqp_url, Topology(settings.namespace), settings.prefetch)
        self.relay = Relay(
            store, self.broker.publish_command, settings.relay_in_flight, settings.outbox_sweep_seconds
        )
        self.deadlines = DeadlineAlarm(registry, store, self.relay.submit)
        self.counts: Counter[str] = Counter()
        self._stopping = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

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
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({worker, stop}, return_when=asyncio.FIRST_COMPLETED)
        if worker.done() and worker.exception() is not None:
            raise worker.exception()  # type: ignore[misc]
        await self.stop()

    async def stop(self) -> None:
        """Stop taking messages, finish the batch in hand, let the relay send what is committed."""
        self._stopping.set()
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
            batch = [getter.result()]
            while not inbound.empty() and len(batch) < self.settings.batch_size:
                batch.append(inbound.get_nowait())
            await self._handle(batch)

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
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
        self.relay.submit(result.commands)
        self.deadlines.committed(result.decisions)
        for message, verdict, reason in zip(batch, result.verdicts, result.reasons, strict=True):
            self.counts[str(verdict)] += 1
            try:
                if verdict is Verdict.DEAD:
                    log.warning(
                        "dead-lettered message %s (type %s): %s", message.message_id, message.type, reason
                    )
                    await self.broker.dead_letter(message, reason or "rejected")
                elif verdict is Verdict.DUPLICATE:
                    log.info("duplicate message %s (type %s) acked", message.message_id, message.type)
                await message.ack()
            except Exception as error:  # the channel broke: the broker redelivers, the inbox dedupes
                log.warning("could not settle message %s: %s", message.message_id, error)
