"""Parallel steps on the real stack (issue 28, item 1): RabbitMQ, PostgreSQL and the example
participants. Stock and payment are taken at once; whichever fails, the other is given back, once,
and the participants' own ledgers show it."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest

from orchestrator.core.engine import saga_id_for

from .conftest import Bench, migrated_database, unique

pytestmark = pytest.mark.integration

MODULE = "tests.integration.parallel_workflows"
WORKFLOW = "parallel_order"
order_ids = unique("par")


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of its own: ``verify`` of the shared one loads the bundled workflows only."""
    with migrated_database("orchestrator_parallel") as url:
        yield url


async def test_stock_and_payment_are_taken_at_once_and_given_back_when_either_fails(bench: Bench) -> None:
    await bench.serve(MODULE, hold_clock=True)
    await bench.work(
        "inventory",
        "payment",
        "shipping",
        inventory=("--out-of-stock", "GONE-1"),
        payment=("--decline-over", "5000"),
    )
    shipped, declined, missing = order_ids(), order_ids(), order_ids()
    await bench.place_order(shipped, amount_cents=1000)
    await bench.place_order(declined, amount_cents=9000)
    await bench.place_order(missing, sku="GONE-1", amount_cents=1000)

    sagas = await bench.finished(WORKFLOW, [shipped, declined, missing])
    assert {k: (s.state, s.status) for k, s in sagas.items()} == {
        shipped: ("completed", "completed"),
        declined: ("compensated", "compensated"),
        missing: ("compensated", "compensated"),
    }
    assert bench.store is not None
    for key in (shipped, declined, missing):
        first = (await bench.store.journal(saga_id_for(WORKFLOW, key)))[0]
        # one decision sent both of the group's commands
        assert [c["type"] for c in first.decision["commands"]] == [
            "inventory.ReserveStock",
            "payment.ChargePayment",
        ]

    connection = await asyncpg.connect(bench.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        ledger = await connection.fetch(
            "SELECT order_id, kind FROM payment.ledger WHERE order_id = ANY($1::text[]) ORDER BY id",
            [shipped, declined, missing],
        )
        moves = await connection.fetch(
            "SELECT order_id, sum(delta) AS held FROM inventory.stock_moves"
            " WHERE order_id = ANY($1::text[]) GROUP BY order_id",
            [shipped, declined, missing],
        )
    finally:
        await connection.close()
    kinds = [(r["order_id"], r["kind"]) for r in ledger]
    assert sorted(kinds) == sorted([(shipped, "charge"), (missing, "charge"), (missing, "refund")])
    held = {r["order_id"]: r["held"] for r in moves}
    assert held[shipped] < 0 and held.get(declined, 0) == 0 and held.get(missing, 0) == 0
    assert bench.verify("--workflows", MODULE).returncode == 0
