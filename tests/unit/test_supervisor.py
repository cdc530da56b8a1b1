"""The supervisor: no task of the service ends unnoticed (issue 17). Restartable tasks start
again within their budget; any other end, or one past the budget, is fatal once; a stop is
bounded step by step."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

from orchestrator.supervision import Restart, Supervisor, bounded, lost_connection, parse_injection


class Fatal:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.called = asyncio.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.called.set()


async def failing() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("boom")


async def forever() -> None:
    await asyncio.Event().wait()


async def test_a_restartable_task_is_restarted_within_its_budget_then_the_service_stops(caplog):
    fatal, restarts = Fatal(), Counter[str]()
    supervisor = Supervisor(fatal, restarts)
    started = 0

    async def sweep() -> None:
        nonlocal started
        started += 1
        await failing()

    supervisor.spawn("outbox-sweep", sweep, Restart(limit=2, window=60))
    await asyncio.wait_for(fatal.called.wait(), 2)

    assert started == 3  # the first run and two restarts
    assert restarts == Counter({"outbox-sweep": 2})
    assert fatal.reasons == ["task outbox-sweep failed: RuntimeError: boom (2 restarts in 60s used up)"]
    restarting = [r for r in caplog.records if "restarting it" in r.getMessage()]
    assert [r.getMessage() for r in restarting] == [
        "task outbox-sweep failed: RuntimeError: boom; restarting it (1 of 2 in 60s)",
        "task outbox-sweep failed: RuntimeError: boom; restarting it (2 of 2 in 60s)",
    ]
    assert all(r.exc_info is not None for r in restarting)  # with the traceback


async def test_a_task_that_is_not_restartable_stops_the_service_when_it_fails_returns_or_is_cancelled(
    caplog,
):
    fatal = Fatal()
    supervisor = Supervisor(fatal)

    async def returns() -> None:
        return None

    supervisor.spawn("worker", failing)
    supervisor.spawn("relay", returns)
    cancelled = supervisor.spawn("api", forever)
    await asyncio.sleep(0.01)
    cancelled.cancel()  # by something other than the stop
    await asyncio.sleep(0.01)

    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert sorted(logged) == [
        "task api was cancelled: stopping the service",
        "task relay ended: stopping the service",
        "task worker failed: RuntimeError: boom: stopping the service",
    ]
    assert len(fatal.reasons) == 1  # the service is stopped once, for the first reason
    assert supervisor.fatal == fatal.reasons[0] == logged[0].removesuffix(": stopping the service")


async def test_ends_while_stopping_are_expected():
    fatal = Fatal()
    supervisor = Supervisor(fatal)
    supervisor.spawn("worker", forever)
    supervisor.spawn("relay", forever)
    await asyncio.sleep(0)

    assert await supervisor.cancel_all(1.0) == []
    assert fatal.reasons == [] and supervisor.fatal is None


async def test_cancel_all_names_the_tasks_that_would_not_end():
    supervisor = Supervisor(Fatal())
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue

    supervisor.spawn("stubborn", stubborn)
    supervisor.spawn("worker", forever)
    await asyncio.sleep(0)

    assert await supervisor.cancel_all(0.05) == ["stubborn"]
    released.set()  # let the test end
    supervisor.tasks["stubborn"].cancel()
    await asyncio.wait({supervisor.tasks["stubborn"]}, timeout=1)


async def test_the_test_hook_fails_the_named_task_every_time_it_starts():
    fatal = Fatal()
    supervisor = Supervisor(fatal, inject=parse_injection("queue-watch:0.01"))
    supervisor.spawn("queue-watch", forever, Restart(limit=1, window=60))
    supervisor.spawn("worker", forever)
    await asyncio.wait_for(fatal.called.wait(), 2)

    assert fatal.reasons == [
        "task queue-watch failed: InjectedFailure: injected failure"
        " (ORCHESTRATOR_TEST_FAIL_TASK=queue-watch) (1 restarts in 60s used up)"
    ]
    assert not supervisor.tasks["worker"].done()
    await supervisor.cancel_all(1.0)


def test_the_test_hook_is_read_as_name_and_seconds():
    assert parse_injection(None) is None
    assert parse_injection("worker") == ("worker", 1.0)
    assert parse_injection("relay:2.5") == ("relay", 2.5)


async def test_bounded_cancels_what_overruns_and_lets_the_next_step_run(caplog):
    assert await bounded("a quick step", asyncio.sleep(0), 1.0)
    assert not await bounded("a hung step", forever(), 0.05)
    assert not await bounded("a failing step", failing(), 1.0)
    assert [r.getMessage() for r in caplog.records if r.name == "orchestrator.supervision"] == [
        "stopping: a hung step did not finish within 0.1s",
        "stopping: a failing step failed: RuntimeError: boom",
    ]


async def test_bounded_swallows_a_lost_connection_but_not_its_own_cancellation():
    async def aiormq_lost_its_connection() -> None:
        raise asyncio.CancelledError  # what aiormq does to waiters on a closed connection

    assert not await bounded("an ack", aiormq_lost_its_connection(), 1.0)

    async def stopping() -> None:
        await bounded("a hung step", forever(), 10.0)

    task = asyncio.ensure_future(stopping())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_lost_connection_tells_aiormq_s_cancellation_from_the_task_s_own():
    assert lost_connection(asyncio.CancelledError())
    assert not lost_connection(RuntimeError())
    seen: list[bool] = []

    async def cancelled_itself() -> None:
        try:
            await forever()
        except asyncio.CancelledError as error:
            seen.append(lost_connection(error))
            raise

    task = asyncio.ensure_future(cancelled_itself())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert seen == [False]
