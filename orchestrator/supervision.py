"""Every long-running task of the service, watched: none may end unnoticed.

A task that ends while the service is not stopping (it returned, raised, or was cancelled by
something other than the stop) is logged with its traceback. A task that is safe to start
again (it holds nothing in hand: a periodic sweep, a watcher) is restarted a bounded number of
times within a window, each restart logged and counted; any other, or one past its budget, is
fatal: the supervisor records why and calls ``on_fatal``, and the service stops whole and exits
non-zero, so that systemd or Kubernetes starts a fresh process. A process that goes on firing
deadlines or relaying while its consumer or its API has died is what this prevents.

``ORCHESTRATOR_TEST_FAIL_TASK=<name>[:<seconds>]`` makes the named task raise after that many
seconds (default 1) every time it is started: the test hook that proves the above with a real
process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Restart",
    "Spawn",
    "Supervisor",
    "TaskFactory",
    "bounded",
    "lost_connection",
    "parse_injection",
    "unsupervised",
]

log = logging.getLogger("orchestrator.supervision")

TaskFactory = Callable[[], Coroutine[Any, Any, None]]
#: how a component starts a long-running task: by name, from a function that makes its coroutine
Spawn = Callable[[str, TaskFactory], "asyncio.Task[None]"]


def unsupervised(name: str, factory: TaskFactory) -> asyncio.Task[None]:
    """A component used on its own (tests, the benchmark): a plain task."""
    return asyncio.create_task(factory(), name=name)


def lost_connection(error: BaseException) -> bool:
    """Whether ``error`` is aiormq failing what waited on a connection that closed without an
    error (it does so with CancelledError), not the current task being cancelled: that is a lost
    connection to recover from, never a reason for the task to end."""
    if not isinstance(error, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is None or not task.cancelling()


async def bounded(what: str, awaitable: Awaitable[Any], timeout: float, quiet: bool = False) -> bool:
    """Await ``what`` for at most ``timeout`` seconds (it is cancelled then); True if it finished.

    For the steps of a stop, each of which must end whatever the broker and the database are
    doing: a timeout, a failure, or aiormq's CancelledError for a lost connection is logged (a
    warning, or debug when ``quiet``) and swallowed, so that the next step still runs. Only the
    current task's own cancellation goes through."""
    say = log.debug if quiet else log.warning
    try:
        await asyncio.wait_for(awaitable, max(timeout, 0.01))
        return True
    except TimeoutError:
        say("stopping: %s did not finish within %.1fs", what, timeout)
    except asyncio.CancelledError as error:
        if not lost_connection(error):
            raise
        say("stopping: %s was cut short: its connection closed", what)
    except Exception as error:
        say("stopping: %s failed: %s: %s", what, type(error).__name__, error)
    return False


@dataclass(frozen=True)
class Restart:
    """Start a task again after an unexpected end, at most ``limit`` times in ``window`` seconds."""

    limit: int = 3
    window: float = 60.0


class InjectedFailure(RuntimeError):
    """The test hook's failure: raised inside the named task, as a bug would be."""


def parse_injection(spec: str | None) -> tuple[str, float] | None:
    """``name`` or ``name:seconds``; None when unset."""
    if not spec:
        return None
    name, _, seconds = spec.partition(":")
    return name, float(seconds) if seconds else 1.0


class Supervisor:
    def __init__(
        self,
        on_fatal: Callable[[str], None],
        restarts: Counter[str] | None = None,
        inject: tuple[str, float] | None = None,
    ) -> None:
        self.on_fatal = on_fatal
        #: restarts by task name, for the metrics
        self.restarts: Counter[str] = restarts if restarts is not None else Counter()
        self.inject = inject
        #: why the service must stop, once a task failed for good
        self.fatal: str | None = None
        self.stopping = False
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._policies: dict[str, tuple[TaskFactory, Restart | None]] = {}
        self._recent: dict[str, deque[float]] = {}

    def stop_watching(self) -> None:
        """The service is stopping: a task that ends now ends for good, and stops nothing."""
        self.stopping = True

    def spawn(self, name: str, factory: TaskFactory, restart: Restart | None = None) -> asyncio.Task[None]:
        """Start ``factory()`` as the task ``name``, watched; ``restart``: safe to start again."""
        if name in self.tasks and not self.tasks[name].done():
            raise RuntimeError(f"task {name} is running already")
        self._policies[name] = (factory, restart)
        task = asyncio.create_task(self._run(name, factory), name=name)
        self.tasks[name] = task
        task.add_done_callback(lambda done: self._ended(name, done))
        return task

    async def _run(self, name: str, factory: TaskFactory) -> None:
        if self.inject is None or self.inject[0] != name:
            await factory()
            return
        work = asyncio.ensure_future(factory())
        try:
            await asyncio.wait_for(asyncio.shield(work), self.inject[1])
        except TimeoutError:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            raise InjectedFailure(f"injected failure (ORCHESTRATOR_TEST_FAIL_TASK={name})") from None

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if self.stopping:
            if not task.cancelled() and task.exception() is not None:
                error = task.exception()
                log.warning("task %s failed while stopping: %s", name, error, exc_info=error)
            return
        if task.cancelled():
            why, error = "was cancelled", None
        elif task.exception() is not None:
            error = task.exception()
            why = f"failed: {type(error).__name__}: {error}"
        else:
            why, error = "ended", None
        factory, restart = self._policies[name]
        if restart is not None and self._may_restart(name, restart):
            self.restarts[name] += 1
            used = len(self._recent[name])
            log.error(
                "task %s %s; restarting it (%d of %d in %gs)",
                name,
                why,
                used,
                restart.limit,
                restart.window,
                exc_info=error,
            )
            self.spawn(name, factory, restart)
            return
        budget = f" ({restart.limit} restarts in {restart.window:g}s used up)" if restart is not None else ""
        log.critical("task %s %s%s: stopping the service", name, why, budget, exc_info=error)
        if self.fatal is None:
            self.fatal = f"task {name} {why}{budget}"
            self.on_fatal(self.fatal)

    def _may_restart(self, name: str, restart: Restart) -> bool:
        recent = self._recent.setdefault(name, deque())
        now = time.monotonic()
        while recent and now - recent[0] > restart.window:
            recent.popleft()
        if len(recent) >= restart.limit:
            return False
        recent.append(now)
        return True

    async def cancel_all(self, timeout: float) -> list[str]:
        """Cancel every task still running and wait up to ``timeout`` for them to end; the names
        of those that did not."""
        self.stopping = True
        running = [t for t in self.tasks.values() if not t.done()]
        for task in running:
            task.cancel()
        if not running:
            return []
        _, pending = await asyncio.wait(running, timeout=max(timeout, 0.01))
        return sorted(t.get_name() for t in pending)
