"""A saga cancelled from outside by an event, and a wait between steps, on the real stack
(issue 28, items 3 and 4): RabbitMQ, PostgreSQL, the example participants, the service's alarm.

The orchestrator runs in the test's event loop with its clock held: the wait ends when the test
moves the clock (tests/integration/in_process.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from orchestrator.core.engine import saga_id_for

from .conftest import Bench, migrated_database, unique

pytestmark = pytest.mark.integration

MODULE = "tests.integration.held_workflows"
WORKFLOW = "held_order"
order_ids = unique("held")


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of its own: ``verify`` of the shared one loads the bundled workflows only."""
    with migrated_database("orchestrator_held") as url:
        yield url


async def until_state(bench: Bench, key: str, state: str, timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.05)):
        saga = await bench.saga(WORKFLOW, key)
        if saga is not None and saga.state == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} never reached {state}: {await bench.saga(WORKFLOW, key)}")


async def test_a_customers_cancel_event_compensates_a_held_order_and_a_late_one_changes_nothing(
    bench: Bench,
) -> None:
    served = await bench.serve(MODULE, hold_clock=True)
    await bench.work("inventory", "payment", "shipping")
    cancelled, shipped = order_ids(), order_ids()
    for key in (cancelled, shipped):
        await bench.place_order(key)
    for key in (cancelled, shipped):
        await until_state(bench, key, "hold")  # reserved and charged: holding, nothing in flight

    # the customer cancels from outside: no correlation id, an id of the front end's own
    await bench.publish("customers.OrderCancelled", {"order_id": cancelled})
    sagas = await bench.finished(WORKFLOW, [cancelled])
    assert (sagas[cancelled].state, sagas[cancelled].status) == ("compensated", "compensated")
    sent = await bench.commands_sent(saga_id_for(WORKFLOW, cancelled))
    assert sent == [
        "inventory.ReserveStock",
        "payment.ChargePayment",
        "payment.RefundPayment",
        "inventory.ReleaseStock",
    ]

    await served.advance(1.0)  # the other order's wait ends: it ships
    sagas = await bench.finished(WORKFLOW, [shipped])
    assert sagas[shipped].status == "completed"

    # a cancel after the saga finished is acked and counted, not journaled nor dead-lettered
    assert bench.store is not None
    journal = await bench.store.journal(saga_id_for(WORKFLOW, shipped))
    await bench.publish("customers.OrderCancelled", {"order_id": shipped})
    for _ in range(200):
        if served.orchestrator.bus.counts.cancels_after_finish[WORKFLOW] == 1:
            break
        await asyncio.sleep(0.05)
    assert served.orchestrator.bus.counts.cancels_after_finish[WORKFLOW] == 1
    assert len(await bench.store.journal(saga_id_for(WORKFLOW, shipped))) == len(journal)
    assert (await bench.saga(WORKFLOW, shipped)).status == "completed"  # type: ignore[union-attr]
    assert await bench.dead_letters(0, timeout=0.5) == []
    assert bench.verify("--workflows", MODULE).returncode == 0


async def test_a_wait_falls_due_once_after_the_service_restarts(bench: Bench) -> None:
    first = await bench.serve(MODULE, hold_clock=True)
    await bench.work("inventory", "payment", "shipping")
    keys = [order_ids() for _ in range(5)]
    for key in keys:
        await bench.place_order(key)
    for key in keys:
        await until_state(bench, key, "hold")
    await first.stop()

    # started again as if two seconds later: every wait ended while nothing ran
    await bench.serve(MODULE, hold_clock=True, clock_ahead=2.0)
    sagas = await bench.finished(WORKFLOW, keys)
    assert {s.status for s in sagas.values()} == {"completed"}
    assert bench.store is not None
    for key in keys:
        journal = await bench.store.journal(saga_id_for(WORKFLOW, key))
        fired = [e.decision for e in journal if e.message.type == "saga.DeadlineExpired"]
        assert [(d["from"], d["to"]) for d in fired] == [("hold", "ship")]
