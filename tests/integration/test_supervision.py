"""No half-dead orchestrator (issue 17), with real processes: a part of the service that fails for
good stops the whole process, non-zero, within its bound; a part that may start again does so,
counted; SIGTERM ends the process within ``ORCHESTRATOR_SHUTDOWN_SECONDS`` + 5 s even while the
database is away, and a second SIGTERM ends it at once. Broker faults: test_broker_faults.py."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import httpx
import pytest

from .conftest import Bench, Process
from .proxy import Proxy

pytestmark = pytest.mark.integration

SHUTDOWN = 3.0
#: the documented bound past ORCHESTRATOR_SHUTDOWN_SECONDS, and slack for a loaded CI machine
BOUND = SHUTDOWN + 5 + 5


def exited_within(process: Process, seconds: float) -> int | None:
    """The exit code once the process has exited, or None if it was still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        code = process.popen.poll()
        if code is not None:
            return code
        time.sleep(0.05)
    return None


async def test_a_task_that_fails_for_good_stops_the_whole_process_non_zero(bench: Bench) -> None:
    orchestrator = await bench.start_orchestrator(
        env={"ORCHESTRATOR_TEST_FAIL_TASK": "relay:1", "ORCHESTRATOR_SHUTDOWN_SECONDS": str(SHUTDOWN)}
    )

    code = await asyncio.to_thread(exited_within, orchestrator, 1 + BOUND)

    log = orchestrator.output()
    assert code == 1, log
    assert "task relay failed: InjectedFailure: injected failure" in log
    assert "Traceback" in log  # why, with the traceback
    assert "orchestrator stopped" in log  # every part was stopped, not just the failed one
    assert "exiting non-zero: task relay failed" in log
    with pytest.raises(httpx.ConnectError):  # the API went with it
        async with bench.api() as api:
            await api.get("/healthz")


async def test_a_restartable_task_is_restarted_counted_and_past_its_budget_stops_the_process(
    bench: Bench,
) -> None:
    orchestrator = await bench.start_orchestrator(
        env={
            "ORCHESTRATOR_TEST_FAIL_TASK": "queue-watch:0.5",
            "ORCHESTRATOR_SHUTDOWN_SECONDS": str(SHUTDOWN),
        }
    )
    restarts = 0.0
    async with bench.api() as api:
        deadline = time.monotonic() + 10
        while restarts < 1 and time.monotonic() < deadline:
            metrics = (await api.get("/metrics")).text
            for line in metrics.splitlines():
                if line.startswith('orchestrator_task_restarts_total{task="queue-watch"}'):
                    restarts = float(line.split()[-1])
            await asyncio.sleep(0.1)
    assert restarts >= 1

    code = await asyncio.to_thread(exited_within, orchestrator, 4 * 0.5 + BOUND)

    log = orchestrator.output()
    assert code == 1, log
    assert "task queue-watch failed: InjectedFailure" in log
    assert "restarting it (1 of 3 in 60s)" in log and "restarting it (3 of 3 in 60s)" in log
    assert "(3 restarts in 60s used up): stopping the service" in log


async def test_sigterm_ends_the_process_within_its_bound_while_the_database_is_away(bench: Bench) -> None:
    proxy = Proxy()
    await proxy.open()
    proxied = bench.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    orchestrator = await bench.start_orchestrator(
        env={"ORCHESTRATOR_DATABASE_URL": proxied, "ORCHESTRATOR_SHUTDOWN_SECONDS": str(SHUTDOWN)}
    )
    await proxy.cut()
    await bench.place_order(f"held-{uuid.uuid4().hex[:6]}")  # a batch in hand that cannot commit
    await bench.wait_for_log(orchestrator, "cannot commit")

    started = time.monotonic()
    orchestrator.popen.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(exited_within, orchestrator, BOUND)

    log = orchestrator.output()
    assert code == 0, log
    assert time.monotonic() - started < BOUND
    assert "SIGTERM: stopping within 3s" in log
    assert "the messages in hand were not settled; the broker will redeliver them" in log
    assert "orchestrator stopped" in log


async def test_a_second_sigterm_exits_at_once(bench: Bench) -> None:
    proxy = Proxy()
    await proxy.open()
    proxied = bench.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    orchestrator = await bench.start_orchestrator(
        env={"ORCHESTRATOR_DATABASE_URL": proxied, "ORCHESTRATOR_SHUTDOWN_SECONDS": "120"}
    )
    await proxy.cut()
    await bench.place_order(f"held-{uuid.uuid4().hex[:6]}")
    await bench.wait_for_log(orchestrator, "cannot commit")
    orchestrator.popen.send_signal(signal.SIGTERM)
    await bench.wait_for_log(orchestrator, "SIGTERM: stopping within 120s")
    assert orchestrator.popen.poll() is None  # the batch in hand holds it: 120 s to go

    orchestrator.popen.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(exited_within, orchestrator, 5)

    assert code == 128 + signal.SIGTERM, orchestrator.output()
    assert "SIGTERM again while stopping: exiting at once" in orchestrator.output()
