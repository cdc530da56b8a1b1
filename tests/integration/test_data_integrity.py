"""A saga's data through the real broker: a reply cannot rewrite it, nor name another saga."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.core.engine import SagaSnapshot, saga_id_for

from .conftest import Bench, unique

pytestmark = pytest.mark.integration

order_ids = unique("integrity")


async def _in_state(
    bench: Bench, key: str, state: str, version: int = 0, timeout: float = 20
) -> SagaSnapshot:
    for _ in range(int(timeout / 0.05)):
        saga = await bench.saga("order", key)
        if saga is not None and saga.state == state and saga.version >= version:
            return saga
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"saga {key} never reached {state} (version {version}): {await bench.saga('order', key)}"
    )


async def test_a_reply_cannot_change_the_charge_nor_name_another_order(bench: Bench) -> None:
    await bench.serve()  # no participant: the test answers for inventory
    key, other = order_ids(), order_ids()
    body = {
        "order_id": key,
        "customer_id": "c-1",
        "lines": [{"sku": "a", "quantity": 1}],
        "amount_cents": "1000",
    }
    await bench.publish("orders.OrderPlaced", body)
    await bench.place_order(other)
    saga = await _in_state(bench, key, "reserve")
    assert saga.data["amount_cents"] == 1000  # as the schema reads it, as POST /sagas stores it
    await _in_state(bench, other, "reserve")

    # A reply correlated to this saga but naming the other order: dead-lettered, journaled here.
    await bench.reply(saga.id, "inventory.StockReserved", {"order_id": other, "reservation_id": "r-x"})
    [dead] = await bench.dead_letters(1)
    assert dead["reason"] == "key_mismatch" and other in dead["detail"]
    refused = await _in_state(bench, key, "reserve", version=saga.version + 1)
    assert refused.data == saga.data
    assert bench.store is not None
    last = (await bench.store.journal(saga.id))[-1]
    assert (last.decision["outcome"], last.decision["dead_letter"]) == ("ignored", "key_mismatch")

    # mallory's reply: its undeclared fields do not reach the charge.
    mallory = {"order_id": key, "reservation_id": "r-1", "customer_id": "mallory", "amount_cents": 1}
    await bench.reply(saga.id, "inventory.StockReserved", mallory)
    charging = await _in_state(bench, key, "charge")
    [charge] = charging.awaiting
    assert charge["type"] == "payment.ChargePayment"
    assert charge["payload"] == {"order_id": key, "customer_id": "c-1", "amount_cents": 1000}
    assert charging.data["reservation_id"] == "r-1"
    assert (await bench.saga("order", other)).data["customer_id"] == "c-1"  # type: ignore[union-attr]
    assert saga_id_for("order", key) == saga.id
    verify = bench.verify("--saga", saga.id)
    assert verify.returncode == 0, verify.stdout + verify.stderr
