"""The broker goes away under running orchestrators (issue 17), on a RabbitMQ node of the test
session's own (tests/integration/private_broker.py), never the shared one: a process that loses
its broker either recovers or stops whole. Stopped or frozen, the broker never holds SIGTERM past
its bound; stopped and started under load, two processes both carry on, and nothing is lost."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import httpx
import pytest

from .conftest import Bench, Process, unique
from .private_broker import PrivateBroker
from .test_supervision import BOUND, SHUTDOWN, exited_within

pytestmark = pytest.mark.integration

order_ids = unique("broker-fault")


def accepted(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('orchestrator_messages_in_total{verdict="accepted"}'):
            return float(line.split()[-1])
    return 0.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ready(url: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=5) as api:
        return (await api.get("/readyz", headers=bearer(token))).status_code


async def wait_ready(url: str, token: str, status: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (got := await ready(url, token)) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz at {url} answers {got}, not {status}")
        await asyncio.sleep(0.2)


async def sigterm_with_the_broker_away(bench: Bench, private_broker: PrivateBroker, freeze: bool) -> None:
    env = {"ORCHESTRATOR_SHUTDOWN_SECONDS": str(SHUTDOWN)}
    orchestrator = await bench.start_orchestrator(env=env)
    await bench.work()
    keys = [order_ids() for _ in range(60)]
    for key in keys:
        await bench.place_order(key)
    await asyncio.sleep(0.3)  # under load: some finished, some in hand, some in the queue
    if freeze:
        private_broker.pause()  # connections stay open, nothing answers
    else:
        private_broker.stop_app()

    started = time.monotonic()
    orchestrator.popen.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(exited_within, orchestrator, BOUND)

    assert code == 0, orchestrator.output()
    assert time.monotonic() - started < BOUND
    assert "orchestrator stopped" in orchestrator.output()
    # Nothing is lost: with the broker back, a new process finishes every order.
    private_broker.ensure_running()
    await bench.start_orchestrator()
    sagas = await bench.finished("order", keys, timeout=120)
    assert {s.status for s in sagas.values()} == {"completed"}


async def test_sigterm_with_the_broker_stopped_under_load_exits_within_the_bound(
    private_bench: Bench, private_broker: PrivateBroker
) -> None:
    await sigterm_with_the_broker_away(private_bench, private_broker, freeze=False)


async def test_sigterm_with_the_broker_frozen_under_load_exits_within_the_bound(
    private_bench: Bench, private_broker: PrivateBroker
) -> None:
    await sigterm_with_the_broker_away(private_bench, private_broker, freeze=True)


async def test_two_processes_carry_on_through_a_broker_restart_and_neither_goes_quiet(
    private_bench: Bench, private_broker: PrivateBroker, caplog: pytest.LogCaptureFixture
) -> None:
    bench = private_bench
    processes: list[tuple[Process, str]] = []
    for _ in range(2):
        process = await bench.start_orchestrator()
        assert bench.api_url is not None
        processes.append((process, bench.api_url))
    await bench.work()
    before = [order_ids() for _ in range(40)]
    for key in before:
        await bench.place_order(key)
    await bench.finished("order", before)

    private_broker.stop_app()
    for _, url in processes:  # unready while the broker is away, and still running
        await wait_ready(url, bench.api_token, 503)
    await asyncio.sleep(1)  # away a while longer: both stay up, unready
    private_broker.start_app()
    for _, url in processes:
        await wait_ready(url, bench.api_token, 200)
    counts = []
    for _, url in processes:
        async with httpx.AsyncClient(base_url=url, timeout=5, headers=bearer(bench.api_token)) as api:
            counts.append(accepted((await api.get("/metrics")).text))

    await bench.connect()
    after = [order_ids() for _ in range(200)]
    for key in after:
        await bench.place_order(key)
    sagas = await bench.finished("order", before + after, timeout=120)

    assert {s.status for s in sagas.values()} == {"completed"}
    for (process, url), count in zip(processes, counts, strict=True):
        assert process.popen.poll() is None, process.output()
        async with httpx.AsyncClient(base_url=url, timeout=5, headers=bearer(bench.api_token)) as api:
            now = accepted((await api.get("/metrics")).text)
        assert now > count, f"{url} took nothing after the restart:\n{process.output()[-3000:]}"
    # a restart the service rides out is no ERROR and no traceback (issue 29): WARNINGs say it
    for process, _ in processes:
        logged = process.output()
        assert " ERROR " not in logged and "Traceback" not in logged, logged[-3000:]
        assert "connection lost" in logged
    # nor the participants' (the kit, in this test's process)
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info is not None]
    assert [f"{r.name}: {r.getMessage()}" for r in loud] == []
    verify = bench.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr
