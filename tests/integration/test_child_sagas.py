"""Child sagas on the real stack (issue 28, item 2): RabbitMQ, PostgreSQL and the example
participants. The shop's order hands its fulfilment to a saga of its own; the child's start, its
outcome and the parent's cancel go through the outbox and the orchestrator's own queue, and the
participants' ledgers show every effect undone once."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest

from orchestrator.core.children import children_of, parent_of
from orchestrator.core.engine import saga_id_for

from .conftest import Bench, migrated_database, unique

pytestmark = pytest.mark.integration

MODULE = "orchestrator.examples.shop"
order_ids = unique("shop")


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of its own: ``verify`` of the shared one loads the bundled workflows only."""
    with migrated_database("orchestrator_children") as url:
        yield url


def shop_order(order_id: str, *, sku: str = "sku-1", amount_cents: int = 1000) -> dict[str, object]:
    return {
        "order_id": order_id,
        "customer_id": "c-1",
        "lines": [{"sku": sku, "quantity": 1}],
        "amount_cents": amount_cents,
    }


async def test_an_order_hands_its_fulfilment_to_a_child_saga_and_undoes_it_when_billing_fails(
    bench: Bench,
) -> None:
    await bench.serve(MODULE)
    await bench.work(
        "inventory",
        "payment",
        "shipping",
        "billing",
        inventory=("--out-of-stock", "GONE-1"),
        billing=("--decline-over", "4000"),
    )
    done, missing, unbilled = order_ids(), order_ids(), order_ids()
    await bench.publish("shop.OrderPlaced", shop_order(done))
    await bench.publish("shop.OrderPlaced", shop_order(missing, sku="GONE-1"))
    await bench.publish("shop.OrderPlaced", shop_order(unbilled, amount_cents=5000))

    parents = await bench.finished("shop_order", [done, missing, unbilled])
    children = await bench.finished("fulfilment", [done, missing, unbilled])
    assert {k: s.status for k, s in parents.items()} == {
        done: "completed",
        missing: "compensated",
        unbilled: "compensated",
    }
    # the child of the refused invoice completed, and was compensated from its end afterwards
    assert {k: s.status for k, s in children.items()} == {
        done: "completed",
        missing: "compensated",
        unbilled: "compensated",
    }
    for key in (done, missing, unbilled):
        parent, child = parents[key], children[key]
        assert [c["saga_id"] for c in children_of(parent.branches)] == [child.id]
        link = parent_of(child.branches)
        assert link is not None and link["saga_id"] == parent.id == saga_id_for("shop_order", key)
    assert bench.store is not None
    outcomes = [e.decision["outcome"] for e in await bench.store.journal(children[unbilled].id)]
    assert "reopened" in outcomes
    # the link both ways, over REST
    async with bench.api() as api:
        parent_view = (await api.get(f"/sagas/{parents[done].id}")).json()
        child_view = (await api.get(f"/sagas/{children[done].id}")).json()
    assert parent_view["children"] == [
        {"saga_id": children[done].id, "workflow": "fulfilment", "step": "fulfil"}
    ]
    assert parent_view["parent"] is None and parent_view["branches"] == []
    assert child_view["parent"] == parents[done].id and child_view["children"] == []

    connection = await asyncpg.connect(bench.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        ledger = await connection.fetch(
            "SELECT order_id, kind FROM payment.ledger WHERE order_id = ANY($1::text[]) ORDER BY id",
            [done, missing, unbilled],
        )
        held = await connection.fetch(
            "SELECT order_id, sum(delta) AS held FROM inventory.stock_moves"
            " WHERE order_id = ANY($1::text[]) GROUP BY order_id",
            [done, missing, unbilled],
        )
        invoices = await connection.fetch(
            "SELECT order_id FROM billing.invoices WHERE order_id = ANY($1::text[])",
            [done, missing, unbilled],
        )
    finally:
        await connection.close()
    kinds = sorted((r["order_id"], r["kind"]) for r in ledger)
    assert kinds == sorted(
        [
            (done, "charge"),
            (missing, "charge"),
            (missing, "refund"),
            (unbilled, "charge"),
            (unbilled, "refund"),
        ]
    )
    stock = {r["order_id"]: r["held"] for r in held}
    assert stock[done] < 0 and stock.get(missing, 0) == 0 and stock[unbilled] == 0
    assert [r["order_id"] for r in invoices] == [done]
    assert bench.verify("--workflows", MODULE).returncode == 0


async def test_parents_and_children_on_partitions_shared_by_two_replicas(bench: Bench) -> None:
    """A child may be decided by another replica than its parent: its start goes to the queue
    every replica takes from, its outcome and its parent's cancel too, each decided once."""
    from collections import Counter

    await bench.serve(MODULE, partitions=4, rebalance_seconds=0.5)
    await bench.serve(MODULE, partitions=4, rebalance_seconds=0.5)
    await bench.work("inventory", "payment", "shipping", "billing", billing=("--decline-over", "4000"))
    fine = [order_ids() for _ in range(6)]
    refused = [order_ids() for _ in range(4)]
    for key in fine:
        await bench.publish("shop.OrderPlaced", shop_order(key))
    for key in refused:
        await bench.publish("shop.OrderPlaced", shop_order(key, amount_cents=5000))

    parents = await bench.finished("shop_order", fine + refused, timeout=90)
    children = await bench.finished("fulfilment", fine + refused, timeout=30)
    assert {k: parents[k].status for k in fine} == dict.fromkeys(fine, "completed")
    assert {k: parents[k].status for k in refused} == dict.fromkeys(refused, "compensated")
    assert {k: children[k].status for k in fine} == dict.fromkeys(fine, "completed")
    assert {k: children[k].status for k in refused} == dict.fromkeys(refused, "compensated")
    assert bench.store is not None
    for saga in [*parents.values(), *children.values()]:
        taken = Counter(entry.message.message_id for entry in await bench.store.journal(saga.id))
        assert max(taken.values()) == 1, (saga.id, taken)
    assert await bench.dead_letters(0, timeout=0) == []
    assert bench.verify("--workflows", MODULE).returncode == 0
