"""Deadlines, retries and late replies on the real stack: the scenario the product exists for.

The orchestrator runs in the test's event loop with its clock held (tests/integration/in_process.py):
the fast order saga's retries and one-second deadlines fall due when the test moves the clock,
never because the machine was slow, and no test waits for them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from orchestrator.core.engine import saga_id_for

from .conftest import Bench, migrated_database, unique
from .test_recovery import assert_each_decided_once

pytestmark = pytest.mark.integration

FAST_MODULE = "tests.integration.workflows"
FAST = ("--workflows", FAST_MODULE)
order_ids = unique("order")


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of its own: these sagas ran the fast order workflow, which sends retries the
    bundled one does not. ``verify`` of the shared database (the bundled workflows loaded) would
    report them, rightly, as journals whose commands the workflow does not send."""
    with migrated_database("orchestrator_deadlines") as url:
        yield url


async def start_all_but_inventory(bench: Bench) -> None:
    await bench.work("payment", "shipping")


async def wait_until_started(bench: Bench, keys: list[str]) -> None:
    for _ in range(200):
        if all([await bench.saga("order", k) for k in keys]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not every order started")


async def test_inventory_back_within_the_deadline_every_order_completes(bench: Bench) -> None:
    served = await bench.serve(FAST_MODULE, hold_clock=True)
    await start_all_but_inventory(bench)
    inventory = await bench.start_participant("inventory")
    inventory.stop()  # the inventory service goes down while orders keep coming
    keys = [order_ids() for _ in range(30)]
    for key in keys:
        await bench.place_order(key)
    await wait_until_started(bench, keys)
    for _ in range(3):  # retries pile up in its durable queue, same message ids; no deadline passes
        await served.advance(0.25)
    await bench.start_participant("inventory")

    sagas = await bench.finished("order", keys, timeout=60)

    assert {s.status for s in sagas.values()} == {"completed"}
    await assert_each_decided_once(bench, keys, *FAST)
    assert bench.store is not None
    journal = await bench.store.journal(saga_id_for("order", keys[0]))
    assert "retried" in [e.decision["outcome"] for e in journal]


async def test_inventory_away_past_the_deadline_orders_compensate_and_late_stock_is_released(
    bench: Bench,
) -> None:
    served = await bench.serve(FAST_MODULE, hold_clock=True)
    await start_all_but_inventory(bench)
    keys = [order_ids() for _ in range(10)]
    for key in keys:
        await bench.place_order(key)
    await wait_until_started(bench, keys)
    await served.advance(1.5)  # past the reserve deadline

    sagas = await bench.finished("order", keys, timeout=30)
    assert {(s.state, s.status) for s in sagas.values()} == {("compensated", "compensated")}
    assert {s.timed_out for s in sagas.values()} == {("reserve",)}

    await bench.start_participant("inventory")  # it comes back and reserves what waited for it
    assert bench.store is not None
    deadline = time.monotonic() + 30
    late: dict[str, list[str]] = {}
    while time.monotonic() < deadline and len(late) < len(keys):
        for key in keys:
            journal = await bench.store.journal(saga_id_for("order", key))
            undone = [
                c["type"]
                for e in journal
                if e.decision["outcome"] == "late_undone"
                for c in e.decision["commands"]
            ]
            if undone:
                late[key] = undone
        await asyncio.sleep(0.2)
    assert late == {key: ["inventory.ReleaseStock"] for key in keys}
    # each release is awaited (issue 28, 2b): the saga is compensated again once it is confirmed
    sagas = await bench.finished("order", keys, timeout=30)
    for key, saga in sagas.items():
        assert (saga.status, saga.timed_out, saga.branches) == ("compensated", (), ()), key
        journal = await bench.store.journal(saga.id)
        assert [
            e.message.type for e in journal if "confirmed the undo of reserve" in (e.decision["reason"] or "")
        ] == ["inventory.StockReleased"]
    await assert_each_decided_once(bench, keys, *FAST)


async def test_deadlines_that_fell_due_while_the_service_was_down_fire_at_start(bench: Bench) -> None:
    first = await bench.serve(FAST_MODULE, hold_clock=True)
    keys = [order_ids() for _ in range(10)]
    for key in keys:
        await bench.place_order(key)
    await wait_until_started(bench, keys)
    await first.stop()

    # started again as if two seconds later: every reserve deadline fell due while nothing ran
    started = time.monotonic()
    await bench.serve(FAST_MODULE, hold_clock=True, clock_ahead=2.0)
    sagas = await bench.finished("order", keys, timeout=30)
    assert time.monotonic() - started < 10
    assert {s.status for s in sagas.values()} == {"compensated"}
    assert bench.store is not None
    for key in keys:
        journal = await bench.store.journal(saga_id_for("order", key))
        assert [e.message.type for e in journal].count("saga.DeadlineExpired") == 1
