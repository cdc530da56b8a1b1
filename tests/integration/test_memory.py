"""The orchestrator's memory stays bounded under a flood of messages at the size cap.

1,000 messages of 1 MiB each (ORCHESTRATOR_MAX_MESSAGE_BYTES, the default cap) go through a real
orchestrator process: every one is received whole, parsed and checked, and the prefetch (capped
by ORCHESTRATOR_MAX_BYTES_IN_HAND, 64 MiB by default, to 64 messages of that size) is all it may
hold at once. They all carry the same message id, so the first starts one order and the other
999 are duplicates: PostgreSQL stores one of them, not a gigabyte. The process's peak resident
set (VmHWM) must stay under 300 MB, and a canary saga started afterwards must complete.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from pathlib import Path

import aio_pika
import orjson
import pytest

from orchestrator.entrypoints.settings import Settings
from tests.integration.conftest import Bench

pytestmark = pytest.mark.integration

MESSAGES = 1000
IN_FLIGHT = 64
PEAK_LIMIT = 300 * 1024 * 1024
COUNTER = re.compile(r'^orchestrator_messages_in_total\{verdict="(\w+)"\} ([0-9.e+]+)$', re.M)
IN_HAND = re.compile(r"^orchestrator_(messages|bytes)_in_hand ([0-9.e+]+)$", re.M)


def _status(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0]) * 1024  # kB
    return values


def _body_at_the_cap(order_id: str, size: int) -> bytes:
    """A valid orders.OrderPlaced of exactly ``size`` bytes: the event padded with a big field."""
    event = {
        "order_id": order_id,
        "customer_id": "c-1",
        "lines": [{"sku": "sku-1", "quantity": 1}],
        "amount_cents": 1000,
        "padding": "",
    }
    overhead = len(orjson.dumps(event))
    event["padding"] = "p" * (size - overhead)
    body = orjson.dumps(event)
    assert len(body) == size
    return body


async def _metrics(bench: Bench) -> tuple[dict[str, float], dict[str, float]]:
    """The messages counted by verdict, and the messages and bytes in hand now."""
    async with bench.api() as api:
        response = await api.get("/metrics")
    response.raise_for_status()
    counts = {verdict: float(count) for verdict, count in COUNTER.findall(response.text)}
    return counts, {what: float(value) for what, value in IN_HAND.findall(response.text)}


async def test_a_flood_of_messages_at_the_size_cap_keeps_memory_bounded(bench: Bench) -> None:
    settings = Settings()
    assert settings.max_message_bytes == 1024 * 1024
    assert settings.effective_prefetch * settings.max_message_bytes <= settings.max_bytes_in_hand
    orchestrator = await bench.start_orchestrator()
    pid = orchestrator.popen.pid
    at_start = _status(pid)

    order_id = f"big-{uuid.uuid4().hex[:8]}"
    body = _body_at_the_cap(order_id, settings.max_message_bytes)
    message_id = str(uuid.uuid4())
    assert bench.channel is not None
    exchange = await bench.channel.get_exchange(f"{bench.namespace}.events")
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def publish() -> None:
        async with slots:  # publisher confirms: each returns once the broker has the message
            await exchange.publish(
                aio_pika.Message(
                    body,
                    type="orders.OrderPlaced",
                    message_id=message_id,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="orders.OrderPlaced",
            )

    most = {"messages": 0.0, "bytes": 0.0, "queued": 0.0}
    counts: dict[str, float] = {}

    async def watch() -> None:
        """Until every message is counted, none waits and none is in hand: the most that were in
        hand, and the longest the queue got, meanwhile."""
        nonlocal counts
        assert bench.channel is not None
        while True:
            counts, in_hand = await _metrics(bench)
            queue = await bench.channel.declare_queue(f"{bench.namespace}.orchestrator.events", passive=True)
            queued = queue.declaration_result.message_count or 0
            for what, value in [*in_hand.items(), ("queued", queued)]:
                most[what] = max(most[what], value)
            if sum(counts.values()) >= MESSAGES and not queued and not in_hand["messages"]:
                return
            assert orchestrator.popen.poll() is None, orchestrator.output()[-3000:]
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    began = time.monotonic()
    await publish()  # the first, alone: it is the one taken, the others are its duplicates
    await asyncio.gather(*(publish() for _ in range(MESSAGES - 1)))
    published = time.monotonic() - began
    await asyncio.wait_for(watcher, 300)
    drained = time.monotonic() - began
    memory = _status(pid)
    report = (
        f"{MESSAGES} x {len(body)} bytes: published in {published:.1f}s, all taken after {drained:.1f}s;"
        f" VmHWM {memory['VmHWM'] / 2**20:.1f} MiB, VmRSS {memory['VmRSS'] / 2**20:.1f} MiB"
        f" (at start: VmHWM {at_start['VmHWM'] / 2**20:.1f} MiB); verdicts {counts}; at most"
        f" {most['messages']:.0f} messages ({most['bytes'] / 2**20:.0f} MiB) in hand,"
        f" {most['queued']:.0f} waiting in the queue"
    )
    print(report)
    # A broker connection dropped meanwhile (another test on the same broker may close them)
    # hands the unacked messages back: the inbox counts them as duplicates once more.
    assert counts["accepted"] == 1 and counts["dead"] == 0, report
    assert counts["duplicate"] >= MESSAGES - 1, report
    assert memory["VmHWM"] < PEAK_LIMIT, report

    saga = await bench.saga("order", order_id)
    assert saga is not None and bench.store is not None
    # The journal keeps the message whole; the saga's data only OrderPlaced's declared fields.
    [started] = await bench.store.journal(saga.id)
    padding = started.message.payload["padding"]
    assert padding == "p" * len(padding) and "padding" not in saga.data
    await bench.work()
    canary = f"canary-{uuid.uuid4().hex[:8]}"
    await bench.place_order(canary)
    sagas = await bench.finished("order", [canary], timeout=60)
    assert sagas[canary].status == "completed"
    assert orchestrator.popen.poll() is None  # the same process, still running


JUNK = 500
DURING_LIMIT = 300 * 1024 * 1024
AFTER_LIMIT = 200 * 1024 * 1024


async def test_a_burst_of_dead_letters_at_the_size_cap_gives_its_memory_back(bench: Bench) -> None:
    """Issue 27, case 5: 1,000 messages of 1 MiB of a type no workflow knows took the process to
    905 MiB, and it stayed there: each refusal kept its batch alive in a reference cycle. Here 500
    (they took it past 400 MiB): under 300 MiB during, and back under 200 MiB after."""
    orchestrator = await bench.start_orchestrator()
    pid = orchestrator.popen.pid
    assert bench.channel is not None
    exchange = await bench.channel.get_exchange(f"{bench.namespace}.events")
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def publish() -> None:
        async with slots:
            await exchange.publish(
                aio_pika.Message(os.urandom(1024 * 1024 - 64), type="x.Junk", message_id=str(uuid.uuid4())),
                routing_key="x.Junk",
            )

    await asyncio.gather(*(publish() for _ in range(JUNK)))
    deadline = time.monotonic() + 120
    while True:
        counts, in_hand = await _metrics(bench)
        if counts.get("dead", 0) >= JUNK and not in_hand["messages"]:
            break
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(0.2)
    peak = _status(pid)["VmHWM"]
    await asyncio.sleep(1)  # a moment for what was freed to go back
    after = _status(pid)["VmRSS"]

    report = (
        f"{JUNK} dead letters of 1 MiB: VmHWM {peak / 2**20:.0f} MiB, VmRSS after {after / 2**20:.0f} MiB"
    )
    print(report)
    assert peak < DURING_LIMIT, report
    assert after < AFTER_LIMIT, report
    assert orchestrator.popen.poll() is None
