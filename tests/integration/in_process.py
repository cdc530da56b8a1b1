"""The orchestrator, and the example participants, in the test's event loop, for tests whose
subject is not the process.

It is built by the bootstrap, exactly as ``orchestrator run`` builds it (the release gate, the
broker, the relay, the deadline alarm, the REST API on a free port), and runs against the real
RabbitMQ and PostgreSQL; only the process around it is left out: no interpreter to start, no
signal handlers, no exit watchdog. A stop that hangs fails the test. Tests whose subject is the
process (signals, kill -9, exit codes, the command line, supervision) start ``orchestrator run``.

Time: the clock is the database's, as in the service, and the test may hold it and move it
forward (:class:`MovableClock`), so that deadlines and retries fall due when the test says,
instead of after a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.entrypoints.bootstrap import (
    admit_releases_of,
    build,
    log_formatter,
    quiet_libraries,
    store_of,
)
from orchestrator.entrypoints.runtime import Orchestrator
from orchestrator.entrypoints.server import listen
from orchestrator.entrypoints.settings import Settings
from orchestrator.participant import Worker
from orchestrator.service.clock import DatabaseClock
from participants.cli import parse_args

__all__ = ["LogCapture", "MovableClock", "Served", "Worked", "serve", "work"]

#: past the shutdown bound, how long a stop may take before the test fails
STOP_MARGIN = 10.0
#: how long a start, or a sweep the test asks for, may take before the test fails
STEP_SECONDS = 30.0


class MovableClock(DatabaseClock):
    """The database's clock, which a test may hold still and move forward.

    Held, "now" does not pass: a deadline a second away stays a second away however slow the
    machine is, until the test moves the clock past it. It is held from its first reading (the
    database runs on this host: the offset measured at the start is next to nothing). ``local``
    maps a due time to this host's clock as "that long from now", so that the alarm still rings
    for what moved into the past."""

    def __init__(self, read: Callable[[], Awaitable[datetime]], *, held: bool = False) -> None:
        super().__init__(read)
        self.held = held
        self.held_at: datetime | None = None
        self.shift = timedelta(0)

    def now(self) -> datetime:
        if not self.held:
            return super().now() + self.shift
        if self.held_at is None:
            self.held_at = super().now()
        return self.held_at + self.shift

    def local(self, when: datetime) -> datetime:
        return datetime.now(UTC) + (when - self.now())

    def advance(self, seconds: float) -> None:
        self.shift += timedelta(seconds=seconds)


class LogCapture(logging.Handler):
    """The log lines the process would print (every logger, INFO and up, the service's own
    format), as text. While an orchestrator is served the root logger is at INFO, as in
    ``orchestrator run``; two served at once both see every line."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(log_formatter(settings))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Served:
    """An orchestrator running in the test's event loop."""

    orchestrator: Orchestrator
    clock: MovableClock
    log: LogCapture
    api_url: str
    stopped: bool = False

    def output(self) -> str:
        return self.log.text()

    @property
    def running(self) -> bool:
        """Not stopped, and no part of it failed for good (what would have ended the process)."""
        return not self.stopped and self.orchestrator.supervisor.fatal is None

    async def advance(self, seconds: float) -> None:
        """Move the clock forward and fire what fell due, as the alarm would have."""
        self.clock.advance(seconds)
        await asyncio.wait_for(self.orchestrator.deadlines.sweep(), STEP_SECONDS)

    async def stop(self) -> None:
        """Stop as SIGTERM stops ``orchestrator run``; one that hangs fails the test."""
        if self.stopped:
            return
        self.stopped = True
        bound = self.orchestrator.settings.shutdown_seconds + STOP_MARGIN
        try:
            await asyncio.wait_for(self.orchestrator.stop(), bound)
        except TimeoutError:
            raise AssertionError(f"the orchestrator did not stop within {bound}s:\n{self.output()}") from None
        finally:
            _detach(self.log)


#: the captures attached, and the root logger's level before the first
_attached: list[LogCapture] = []
_level_before: list[int] = []


def _attach(capture: LogCapture) -> None:
    root = logging.getLogger()
    if not _attached:
        _level_before[:] = [root.level]
        root.setLevel(logging.INFO)
        quiet_libraries()
    _attached.append(capture)
    root.addHandler(capture)


def _detach(capture: LogCapture) -> None:
    root = logging.getLogger()
    root.removeHandler(capture)
    with contextlib.suppress(ValueError):
        _attached.remove(capture)
    if not _attached and _level_before:
        root.setLevel(_level_before.pop())


async def serve(
    *,
    database_url: str,
    amqp_url: str,
    namespace: str,
    api_token: str,
    workflows: str = "orchestrator.examples",
    hold_clock: bool = False,
    clock_ahead: float = 0.0,
    accept_changed: bool = False,
    fail_dropped: bool = False,
    **settings: Any,
) -> Served:
    """An orchestrator on these services, started: its API listening, its consumers consuming.
    ``settings``: any other field of :class:`Settings`. ``hold_clock``: time passes only when
    the test moves it (:meth:`Served.advance`); ``clock_ahead``: seconds the clock is ahead from
    the start, as if the service started that much later (what fell due meanwhile fires at once)."""
    config = Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        namespace=namespace,
        api_token=api_token,
        api_port=0,
        workflows=workflows,
        **settings,
    )
    store = store_of(config)
    clock = MovableClock(store.database_now, held=hold_clock)
    clock.advance(clock_ahead)
    orchestrator = build(config, listen("127.0.0.1", 0), store=store, clock=clock)
    capture = LogCapture(config)
    _attach(capture)
    try:
        await admit_releases_of(orchestrator, accept_changed=accept_changed, fail_dropped=fail_dropped)
        await asyncio.wait_for(orchestrator.start(), STEP_SECONDS)
    except BaseException:
        try:
            await asyncio.wait_for(orchestrator.stop(), config.shutdown_seconds + STOP_MARGIN)
        finally:
            _detach(capture)
        raise
    assert orchestrator.api is not None
    return Served(orchestrator, clock, capture, orchestrator.api.url)


@dataclass
class Worked:
    """An example participant served in the test's event loop by the participant kit's
    ``Worker``, for tests whose subject is neither the participant nor its process."""

    service: str
    worker: Worker
    task: asyncio.Task[int]

    async def stop(self) -> int:
        """Stop as SIGTERM stops it; the exit code its process would have. One that hangs fails
        the test."""
        self.worker.stop()
        bound = self.worker.settings.shutdown_grace + STOP_MARGIN
        try:
            return await asyncio.wait_for(asyncio.shield(self.task), bound)
        except TimeoutError:
            raise AssertionError(f"participant {self.service} did not stop within {bound}s") from None


def work(service: str, options: tuple[str, ...], environ: Mapping[str, str]) -> Worked:
    """The example ``service`` with these command-line ``options``, its settings read as
    ``python -m participants`` reads them, started (not yet consuming: wait for its queue; its
    database must be there, :func:`participants.cli.ensure_database`)."""
    participant, settings, _ = parse_args([service, *options], environ)
    worker = Worker(participant, settings)
    return Worked(service, worker, asyncio.create_task(worker.run(), name=f"participant {service}"))
