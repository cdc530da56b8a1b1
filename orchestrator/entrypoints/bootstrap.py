"""The one wiring point: settings in, a ready orchestrator (or its parts) out."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import re
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.adapters import tracing
from orchestrator.adapters.amqp.broker import Broker, Delivery, QueueConsumer
from orchestrator.adapters.amqp.reconnect_noise import quiet_reconnects
from orchestrator.adapters.amqp.topology import Topology
from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.dead_letters import PostgresDeadLetters
from orchestrator.adapters.postgres.partitions import PostgresPartitionLocks
from orchestrator.adapters.postgres.releases import PostgresReleaseBook
from orchestrator.adapters.postgres.retention import Pruner
from orchestrator.adapters.postgres.store import PostgresStore, Timeouts, make_engine
from orchestrator.adapters.scheduler import SchedulerAlarm
from orchestrator.adapters.tracing import publishing
from orchestrator.core.definitions import Workflow
from orchestrator.core.engine import OutgoingCommand
from orchestrator.core.ingress import Limits
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.runtime import Orchestrator, Parts
from orchestrator.entrypoints.settings import ConfigurationError, Settings
from orchestrator.service.bus import MessageBus
from orchestrator.service.clock import DatabaseClock
from orchestrator.service.dead_letters import DeadLetterDrain, ReplayRoutes
from orchestrator.service.deadlines import DeadlineAlarm
from orchestrator.service.intake import Intake
from orchestrator.service.partitions import PartitionOwner
from orchestrator.service.ports import Publish
from orchestrator.service.relay import Relay
from orchestrator.service.releases import ReleaseRefused, admit_releases

__all__ = [
    "BootstrapError",
    "Collected",
    "Shell",
    "admit_releases_of",
    "build",
    "build_shell",
    "configure_logging",
    "dead_letters_of",
    "load_workflows",
    "log_formatter",
    "quiet_libraries",
    "registry_of",
    "store_of",
]


class BootstrapError(ConfigurationError):
    """The service cannot be put together from what it was given (no such workflow module, no
    workflows in it); the message says which."""


#: Extras a log line about a message or a saga carries (``log.info(..., extra={...})``).
CONTEXT_FIELDS = ("saga_id", "message_id", "actor")


def load_workflows(module_names: str) -> list[Workflow]:
    """Every workflow a module (or comma-separated modules) defines: ``Workflow`` objects at top
    level, and ``Saga`` subclasses (they carry ``workflow``)."""
    found: list[Workflow] = []
    for name in [n.strip() for n in module_names.split(",") if n.strip()]:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and (name == error.name or name.startswith(error.name + ".")):
                raise BootstrapError(
                    f"no workflow module {name!r}: it must be importable, installed in"
                    " this environment or on PYTHONPATH (PYTHONPATH=. for the current directory)"
                ) from None
            raise
        candidates: list[Any] = list(getattr(module, "WORKFLOWS", [])) or list(vars(module).values())
        for value in candidates:
            compiled = getattr(value, "workflow", None)
            if inspect.isclass(value) and isinstance(compiled, Workflow):
                value = compiled
            if isinstance(value, Workflow) and all(value is not w for w in found):
                found.append(value)
    if not found:
        raise BootstrapError(f"no workflows found in {module_names!r}")
    return found


def registry_of(settings: Settings) -> Registry:
    """The workflows ``settings`` names, loaded: every command's view of them."""
    return Registry(load_workflows(settings.workflows), settings.max_parked)


def store_of(settings: Settings, pool_size: int = 5) -> PostgresStore:
    """The store on ``settings``' database (a command's: a small pool)."""
    return PostgresStore.from_url(settings.database_url, pool_size, timeouts_of(settings), settings.namespace)


def timeouts_of(settings: Settings) -> Timeouts:
    return Timeouts(
        statement=settings.database_statement_timeout_seconds,
        lock=settings.database_lock_timeout_seconds,
        acquire=settings.database_acquire_timeout_seconds,
    )


def dead_letters_of(settings: Settings) -> PostgresDeadLetters:
    """The dead-letter repository on ``settings``' database, one connection (close its engine)."""
    return PostgresDeadLetters(
        make_engine(settings.database_url, pool_size=1, timeouts=timeouts_of(settings))
    )


def replay_routes(settings: Settings, registry: Registry) -> ReplayRoutes:
    """Where a dead letter's replay may go: the namespace's exchanges, and the command types the
    workflows send (a dead letter of one must be proven by its saga's journal)."""
    topology = Topology(settings.namespace)
    return ReplayRoutes(
        topology.commands, topology.events, frozenset(registry.command_types()), topology.orchestrator_queue
    )


def build(
    settings: Settings,
    api_socket: socket.socket | None = None,
    *,
    registry: Registry | None = None,
    store: PostgresStore | None = None,
    clock: DatabaseClock | None = None,
) -> Orchestrator:
    """The orchestrator, and its REST API on ``api_socket`` when one is given. Every part is
    built here and handed what it needs; nothing is set on a part after it is built. ``registry``,
    ``store`` and ``clock`` (on the store's database): given by a test, else from the settings."""
    registry = registry or registry_of(settings)
    store = store or store_of(settings)
    metrics = Metrics()
    tracer = tracing.setup("orchestrator")  # None unless the OTEL_* variables ask for traces
    tracing.install(tracer)
    topology = Topology(settings.namespace, partitions=settings.partitions, queue_type=settings.queue_type)
    limits = Limits(
        max_message_bytes=settings.max_message_bytes,
        unchecked_replies=settings.unchecked_replies,
        events_exchange=topology.events,
        senders=dict(settings.senders) if settings.senders is not None else None,
    )
    # The budget of bytes in hand is shared: an eighth of it for the dead-letter drain.
    drain_prefetch = max(1, min(32, settings.effective_prefetch // 8))
    broker = Broker(settings.amqp_url, topology, max(1, settings.effective_prefetch - drain_prefetch), limits)
    #: "now" as the database has it: decisions and deadlines agree across replicas' hosts
    clock = clock or DatabaseClock(store.database_now)
    publish: Publish = broker.publish_command
    if tracer is not None:
        publish = publishing(tracer, publish, topology.commands)
    relay = Relay(
        store,
        publish,
        settings.relay_in_flight,
        settings.outbox_sweep_seconds,
        counts=metrics,
        now=clock.now,
        exchange=topology.commands,
    )
    deadlines = DeadlineAlarm(registry, store, SchedulerAlarm(), counts=metrics, clock=clock)
    bus = MessageBus(
        registry,
        store,
        outbox=relay,
        timers=deadlines,
        counts=metrics,
        clock=clock.now,
        limits=limits,
        tracer=tracer,
    )
    ownership = _ownership(settings, store, broker, topology, relay)
    intake = Intake(
        bus,
        broker.consumer,
        broker.hand_over,
        broker.waiting,
        registry,
        metrics,
        settings.batch_size,
        settings.stall_seconds,
        fence_of=_fences(ownership, topology, settings.partitions),
    )
    drain_consumer = QueueConsumer(
        settings.amqp_url,
        topology.dead_letter_queue,
        drain_prefetch,
        "orchestrator-dead-letters",
        limits=limits,
    )
    drain = DeadLetterDrain(drain_consumer, bus.record_dead_letters, metrics, limits, drain_prefetch)
    metrics.watch(
        in_flight=lambda: len(relay.in_flight),
        in_hand=lambda: (broker.consumer.unsettled, broker.consumer.bytes_in_hand),
        stalled=intake.stalled,
        waiting_on_locks=lambda: intake.set_aside,
        partitions_owned=(lambda: len(ownership.owned)) if ownership is not None else None,
    )
    api = None
    if api_socket is not None:
        from orchestrator.adapters.postgres.queries import Queries
        from orchestrator.entrypoints.api.app import ApiContext, create_app
        from orchestrator.entrypoints.server import ApiServer

        async def checks() -> dict[str, str]:
            return broker_checks(broker, intake)

        context = ApiContext(
            registry,
            store,
            Queries(store.engine),
            settings,
            metrics,
            bus=bus,
            checks=checks,
            republish=broker.republish,
            clock=clock.now,
        )
        api = ApiServer(create_app(context), api_socket, settings.shutdown_seconds)
    return Orchestrator(
        Parts(
            settings=settings,
            registry=registry,
            store=store,
            metrics=metrics,
            broker=broker,
            clock=clock,
            relay=relay,
            deadlines=deadlines,
            bus=bus,
            intake=intake,
            drain=drain,
            ownership=ownership,
            pruner=_pruner(settings, store),
            releases=PostgresReleaseBook(store.engine),
            tracer=tracer,
            api=api,
        )
    )


async def admit_releases_of(
    orchestrator: Orchestrator, *, accept_changed: bool = False, fail_dropped: bool = False
) -> None:
    """The release gate (:mod:`orchestrator.service.releases`) before the start; refused, a
    :class:`ConfigurationError` whose message is the one line ``orchestrator run`` exits 1 with."""
    try:
        admitted = await admit_releases(
            orchestrator.releases,
            orchestrator.registry,
            datetime.now(UTC),
            accept_changed=accept_changed,
            fail_dropped=fail_dropped,
        )
    except ReleaseRefused as error:
        raise ConfigurationError(str(error)) from None
    log = logging.getLogger("orchestrator.releases")
    for workflow, release in admitted.new:
        log.info("release %s of %s runs here for the first time; its fingerprint is kept", release, workflow)
    for workflow, release in admitted.accepted:
        log.warning("release %s of %s changed; its new fingerprint is accepted", release, workflow)
    for (workflow, release), count in admitted.failed.items():
        log.warning("failed %d sagas in flight on dropped release %s of %s", count, release, workflow)


class Collected:
    """The shell's outlet for committed commands: kept for the command to publish itself, with
    confirms, before it exits (it runs no relay; what it cannot send the service's sweep sends)."""

    def __init__(self) -> None:
        self.commands: list[OutgoingCommand] = []

    def submit(self, commands: Iterable[OutgoingCommand], received_at: float | None = None) -> None:
        self.commands.extend(commands)

    def take(self) -> list[OutgoingCommand]:
        taken = list(self.commands)
        self.commands.clear()
        return taken


@dataclass(frozen=True)
class Shell:
    """What a command line verb needs: the registry, the store, the bus its actions go through,
    what they committed to send, and a broker (connected only when there is something to send)."""

    registry: Registry
    store: PostgresStore
    #: the database's clock, synced once before the bus decides by it
    clock: DatabaseClock
    bus: MessageBus
    outbox: Collected
    broker: Broker


def build_shell(settings: Settings, registry: Registry | None = None) -> Shell:
    """The parts of a shell command (``orchestrator sagas ...``), one connection each: the same
    bus as the service's, deciding by the database's clock."""
    registry = registry or registry_of(settings)
    store = store_of(settings, pool_size=1)
    clock = DatabaseClock(store.database_now)
    outbox = Collected()
    bus = MessageBus(registry, store, outbox=outbox, clock=clock.now)
    topology = Topology(settings.namespace, partitions=settings.partitions, queue_type=settings.queue_type)
    return Shell(registry, store, clock, bus, outbox, Broker(settings.amqp_url, topology, prefetch=1))


def broker_checks(broker: Broker, intake: Intake[Delivery]) -> dict[str, str]:
    """Readiness: both broker connections up (either may be reconnecting), and the consumer
    making progress."""
    checks = {name: "ok" if up else "not connected" for name, up in broker.connections().items()}
    stalled = intake.stalled()
    checks["consumer"] = "ok" if stalled is None else stalled
    return checks


def _ownership(
    settings: Settings, store: PostgresStore, broker: Broker, topology: Topology, relay: Relay
) -> PartitionOwner | None:
    """Partition ownership when there are partitions: shared with the other replicas through
    PostgreSQL."""
    if settings.partitions == 1:
        return None
    broker.consumer.split_prefetch(settings.partitions + 1)  # until it knows its share: all of them
    return PartitionOwner(
        PostgresPartitionLocks(store.dsn, settings.namespace),
        broker.consumer,
        topology.partition_queue,
        settings.partitions,
        settings.rebalance_seconds,
        replica_gone=relay.sweep_soon,
    )


def _fences(
    ownership: PartitionOwner | None, topology: Topology, partitions: int
) -> Callable[[Delivery], tuple[int, int] | None]:
    """The fence of a delivery: its partition queue's (partition, epoch taken), None for the
    queue of start events or without partitions."""
    if ownership is None:
        return lambda delivery: None
    owner = ownership
    partition_of = {topology.partition_queue(p): p for p in range(partitions)}

    def fence(delivery: Delivery) -> tuple[int, int] | None:
        partition = partition_of.get(delivery.queue)
        return None if partition is None else owner.fence(partition)

    return fence


def _pruner(settings: Settings, store: PostgresStore) -> Pruner | None:
    """The periodic prune (docs/retention.md), unless its interval is 0."""
    if settings.prune_interval_seconds <= 0:
        return None
    return Pruner(
        store.pool,
        settings.prune_interval_seconds,
        timedelta(days=settings.inbox_retention_days),
        timedelta(days=settings.dead_letter_retention_days),
        timedelta(days=settings.tombstone_retention_days),
    )


#: The longest message a log line carries, and the longest context field; past it the line says
#: how much was cut. A message may quote its input (a key, a type, a reason): it stays bounded.
MAX_MESSAGE = 2000
MAX_FIELD = 256

#: Control characters and line breaks as visible escapes: a text line stays one line, whatever a
#: REST key or an AMQP property carried (a newline in one could otherwise forge a line of its own).
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, 0x85]} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def _clip(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters, saying how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]}…({len(text) - limit} more)"


def _one_line(text: str, limit: int) -> str:
    """``text`` with its control characters escaped, cut at ``limit`` characters (escapes
    counted as they print, never split); the note says how many characters of ``text`` were cut."""
    if _CONTROL.search(text, 0, limit) is None:
        return _clip(text, limit)
    shown: list[str] = []
    used = 0
    for index, char in enumerate(text):
        piece = _ESCAPES.get(ord(char), char)
        if used + len(piece) > limit:
            return "".join(shown) + f"…({len(text) - index} more)"
        shown.append(piece)
        used += len(piece)
    return "".join(shown)


def _context(record: logging.LogRecord) -> dict[str, str]:
    return {name: str(value) for name in CONTEXT_FIELDS if (value := getattr(record, name, None)) is not None}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; a line about a message or saga carries their ids as fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": _clip(record.getMessage(), MAX_MESSAGE),
            **{name: _clip(value, MAX_FIELD) for name, value in _context(record).items()},
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)  # escapes every control character and U+2028/9


class _TextFormatter(logging.Formatter):
    """The plain line, then ``saga_id=… message_id=…`` when the line is about a message or saga.

    The line is one line: control characters in the message and the context fields print as
    escapes (``\\n``, ``\\x1b``), and a long message is cut. A traceback follows on lines of its
    own, as Python prints it: it is ours, not input."""

    def format(self, record: logging.LogRecord) -> str:
        message = _one_line(record.getMessage(), MAX_MESSAGE)
        context = "".join(f" {k}={_one_line(v, MAX_FIELD)}" for k, v in _context(record).items())
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}{context}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def log_formatter(settings: Settings) -> logging.Formatter:
    """The service's log line: JSON (ORCHESTRATOR_LOG_JSON) or plain text with context fields."""
    return _JsonFormatter() if settings.log_json else _TextFormatter()


def quiet_libraries() -> None:
    """The libraries' chatter off, so that the log is ours."""
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # reading the migrations' head at start
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line per alarm set
    logging.getLogger("transitions").setLevel(logging.WARNING)  # a line per callback of every transition
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn's own handlers would print past the formatter
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    quiet_reconnects()  # a broker restart the service rides out is no ERROR (adapters/amqp)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(settings))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    quiet_libraries()
