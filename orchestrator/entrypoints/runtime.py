"""The running process: start the parts the bootstrap built, serve, stop them whole.

Lifecycle only: the order parts start in, signals, supervision, the bounded stop and its exit
watchdog. How a message becomes a decision is the service layer's (:mod:`orchestrator.service.bus`,
:mod:`orchestrator.service.intake`); what is built from which settings is the bootstrap's.
``start()`` and ``stop()`` work in a caller's event loop (a test, the benchmark) without signal
handlers; :meth:`Orchestrator.run_until_signalled` adds them for ``orchestrator run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.adapters import tracing
from orchestrator.adapters.amqp.broker import Broker, Delivery, services_of
from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.retention import Pruner
from orchestrator.adapters.tracing import OtelTracer
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.settings import Settings
from orchestrator.service.bus import MessageBus
from orchestrator.service.clock import DatabaseClock
from orchestrator.service.dead_letters import DeadLetterDrain
from orchestrator.service.deadlines import DeadlineAlarm
from orchestrator.service.intake import Intake
from orchestrator.service.partitions import PartitionOwner
from orchestrator.service.relay import Relay
from orchestrator.service.releases import ReleaseBook
from orchestrator.service.store import Store
from orchestrator.supervision import Restart, Supervisor, TaskFactory, bounded, parse_injection

if TYPE_CHECKING:  # FastAPI is for `orchestrator run`, not every command that wires a part
    from orchestrator.entrypoints.server import ApiServer

__all__ = ["Orchestrator", "Parts"]


log = logging.getLogger("orchestrator")


@dataclass(frozen=True)
class Parts:
    """What the bootstrap built, for the process to start and stop."""

    settings: Settings
    registry: Registry
    store: Store
    metrics: Metrics
    broker: Broker
    clock: DatabaseClock
    relay: Relay
    deadlines: DeadlineAlarm
    bus: MessageBus
    intake: Intake[Delivery]
    drain: DeadLetterDrain[Delivery]
    #: which partitions this replica consumes (docs/scaling.md); None with one queue
    ownership: PartitionOwner | None
    pruner: Pruner | None
    #: the releases run has loaded before (the release gate, orchestrator.service.releases)
    releases: ReleaseBook
    #: None unless the OTEL_* variables ask for traces (docs/tracing.md)
    tracer: OtelTracer | None
    api: ApiServer | None = None


class Orchestrator:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.settings = settings = parts.settings
        self.registry = parts.registry
        self.store = parts.store
        self.metrics = parts.metrics
        self.broker = parts.broker
        self.clock = parts.clock
        self.relay = parts.relay
        self.deadlines = parts.deadlines
        self.bus = parts.bus
        self.intake = parts.intake
        self.drain = parts.drain
        self.ownership = parts.ownership
        self.pruner = parts.pruner
        self.releases = parts.releases
        self.tracer = parts.tracer
        self.api = parts.api
        self.counts = self.metrics.messages_in  # by verdict, for the stop line and the metrics alike
        self._stopping = asyncio.Event()
        self._stopped = False
        self._exiting = False
        self.supervisor = Supervisor(
            self._fatal, self.metrics.task_restarts, parse_injection(settings.test_fail_task)
        )
        self._worker: asyncio.Task[None] | None = None

    def _spawn(self, name: str, factory: TaskFactory) -> asyncio.Task[None]:
        return self.supervisor.spawn(name, factory, _RESTARTABLE.get(name))

    async def start(self) -> None:
        spawn = self._spawn
        # before anything is decided: commands' and timers' ids are keyed with it (core/ids.py)
        self.registry.use_id_key(await self.store.id_key())
        await self.broker.connect(services_of(self.registry.command_types()), self.registry.start_types())
        await self.clock.sync()  # before anything is decided: "now" is the database's
        spawn("clock-sync", self.clock.keep_in_sync)
        holder = await self.store.hold()  # before anything commits: its outbox rows name it
        log.info("replica %d: other replicas' outbox sweeps leave the commands it commits to it", holder)
        await self.relay.start(spawn)
        await self.deadlines.start(self.bus.fire_due)
        await self.broker.start_consuming(spawn)
        if self.ownership is not None:
            spawn("partitions", self.ownership.run)
        self.drain.start(spawn)
        self._worker = spawn("worker", lambda: self.intake.run(self._stopping))
        spawn("queue-watch", lambda: self.intake.watch_queue(self._stopping))
        spawn("set-aside", lambda: self.intake.retry_aside(self._stopping))
        if self.pruner is not None:
            spawn("prune", self.pruner.run)
        log.info(
            "orchestrator running: workflows %s, namespace %s",
            ", ".join(self._loaded_names()),
            self.settings.namespace,
        )
        if self.api is not None:  # last: a request finds every part it may use running
            self.api.start(self._spawn)
            log.info("api listening on %s (OpenAPI at %s/docs)", self.api.url, self.api.url)

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
        settle_the_heap()
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
        self.supervisor.stop_watching()
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.shutdown_seconds
        # the exit watchdog, only in a process that exits after (orchestrator run): in a caller's
        # event loop (a test, the benchmark) a stop that hangs is the caller's to bound
        watchdog = _watchdog(self.settings.shutdown_seconds + _WATCHDOG_MARGIN, 1) if self._exiting else None

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
        if watchdog is not None and not self._exiting:
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
            # and its exporter's thread ended, in a caller's process that goes on (a test, the
            # benchmark): none left to export, and to log its failures, into what runs next
            if tracing.active() is self.tracer:
                tracing.install(None)
            await bounded("ending the span exporter", asyncio.to_thread(self.tracer.shutdown), 2.5)


#: the tasks that hold nothing in hand, so that starting them again after an unexpected end is
#: safe; any other task's end stops the service (orchestrator.supervision)
_RESTARTABLE = {
    "queue-watch": Restart(),
    "outbox-sweep": Restart(),
    "prune": Restart(),
    "clock-sync": Restart(),
    "partitions": Restart(),
    "set-aside": Restart(),  # what it retries stays in the intake's list
}


#: past the shutdown bound, closing connections takes at most this long
_CLOSE_SECONDS = 4.5
#: past the shutdown bound, the watchdog ends the process whatever its event loop is doing
_WATCHDOG_MARGIN = 10.0


#: the cyclic collector's thresholds while serving: a collection of the youngest objects every
#: GC_THRESHOLDS[0] allocations, not Python's 700
GC_THRESHOLDS = (20_000, 10, 10)


def settle_the_heap() -> None:
    """What the process built to start (modules, workflows, the API's routes) is moved out of the
    cyclic collector's reach, and its youngest generation collected less often. A step allocates
    a few hundred objects, nearly all freed by reference counting; at Python's thresholds the
    collector ran every few messages, and the older generations' collections went through
    everything in hand: 11 % of the CPU in the benchmark's burst of 4,000 sagas, 0.1 % after
    (perf). Memory stays flat: what a step leaves in a cycle is collected all the same, a little
    later (the benchmark's memory scenario reads the RSS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
