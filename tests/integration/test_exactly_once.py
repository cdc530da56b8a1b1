"""Exactly-once effects in the participants' own tables while processes die (issue 15, item 3).

Orders flow through the orchestrator and the example inventory, payment and shipping services
(each on the participant kit, each with failures injected so that many orders are compensated),
while participants and the orchestrator are killed with SIGKILL at random and started again.
A kill between a participant's commit and its ack, or an orchestrator sending a command again
after its restart, delivers a command twice: only the kit's inbox stands between that and a
second charge. Afterwards the business tables are counted, order by order."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import asyncpg

from tests.integration.conftest import Bench, Process, unique

SKUS = ("apple", "pear", "plum", "fig", "kiwi")
INITIAL_STOCK = 1_000_000  # participants.inventory.INITIAL_STOCK: what a SKU starts with
FAIL_RATES = {"inventory": "0.1", "payment": "0.15", "shipping": "0.25"}
#: each participant waits this long between its commit and its reply and ack (``--delay``), so a
#: kill finds commands done but not acked: the redeliveries the inbox is there for
DELAY = "0.2"
ORDERS = 160
KILLS = 10

order_ids = unique("exactly-once")


async def test_no_order_is_charged_shipped_or_moved_twice_while_processes_are_killed(bench: Bench) -> None:
    rng = random.Random(15)
    processes: dict[str, Process] = await bench.start_participants(
        *FAIL_RATES,
        **{service: ("--fail-rate", rate, "--delay", DELAY) for service, rate in FAIL_RATES.items()},
    )
    processes["orchestrator"] = await bench.start_orchestrator()

    orders: dict[str, list[tuple[str, int]]] = {}
    for _ in range(ORDERS):
        skus = rng.sample(SKUS, rng.randint(1, 2))
        orders[order_ids()] = [(sku, rng.randint(1, 5)) for sku in sorted(skus)]

    async def place_all() -> None:
        for index, (key, lines) in enumerate(orders.items()):
            body = {
                "order_id": key,
                "customer_id": f"c-{index % 7}",
                "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
                "amount_cents": 100 * sum(quantity for _, quantity in lines),
            }
            await bench.publish("orders.OrderPlaced", body)
            if index % 10 == 0:
                await asyncio.sleep(0.05)

    placing = asyncio.create_task(place_all())
    killed: list[str] = []
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(0.2, 0.8))
        victim = rng.choice(sorted(processes))
        processes[victim].kill()  # SIGKILL: between a commit and its ack, mid-handler, anywhere
        killed.append(victim)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        if victim == "orchestrator":
            processes[victim] = await bench.start_orchestrator()
        else:
            processes[victim] = await bench.start_participant(
                victim, "--fail-rate", FAIL_RATES[victim], "--delay", DELAY
            )
    await placing
    assert set(killed) - {"orchestrator"}, f"no participant was killed: {killed}"

    sagas = await bench.finished("order", list(orders), timeout=180)
    status = {key: saga.status for key, saga in sagas.items()}
    assert set(status.values()) <= {"completed", "compensated"}, status
    assert "completed" in status.values() and "compensated" in status.values()

    connection = await asyncpg.connect(bench.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        ledger = await connection.fetch("SELECT order_id, kind, amount_cents FROM payment.ledger")
        moves = await connection.fetch("SELECT order_id, sku, delta, kind FROM inventory.stock_moves")
        shipments = await connection.fetch("SELECT order_id FROM shipping.shipments")
        stock = dict(await connection.fetch("SELECT sku, on_hand FROM inventory.stock"))
        handled = await connection.fetchval(
            "SELECT (SELECT count(*) FROM payment.participant_inbox)"
            " + (SELECT count(*) FROM inventory.participant_inbox)"
            " + (SELECT count(*) FROM shipping.participant_inbox)"
        )
        dead = await connection.fetchval(
            "SELECT count(*) FROM dead_letters WHERE starts_with(exchange, $1)", f"{bench.namespace}."
        )
    finally:
        await connection.close()

    charges: dict[str, list[int]] = defaultdict(list)
    refunds: dict[str, list[int]] = defaultdict(list)
    for row in ledger:
        (charges if row["kind"] == "charge" else refunds)[row["order_id"]].append(row["amount_cents"])
    reserved: dict[tuple[str, str], int] = defaultdict(int)
    net: dict[str, int] = defaultdict(int)
    for row in moves:
        if row["kind"] == "reserve":
            reserved[row["order_id"], row["sku"]] += 1
        net[row["order_id"]] += row["delta"]
    shipped: dict[str, int] = defaultdict(int)
    for row in shipments:
        shipped[row["order_id"]] += 1

    problems = []
    for key, lines in orders.items():
        units = sum(quantity for _, quantity in lines)
        if len(charges[key]) > 1:
            problems.append(f"{key} charged {len(charges[key])} times")
        if any(count > 1 for (order, _), count in reserved.items() if order == key):
            problems.append(f"{key} reserved a SKU twice")
        if status[key] == "completed":
            if (len(charges[key]), len(refunds[key]), shipped[key]) != (1, 0, 1):
                effects = f"{charges[key]} charged, {refunds[key]} refunded, {shipped[key]} shipped"
                problems.append(f"{key} completed with {effects}")
            if net[key] != -units:
                problems.append(f"{key} completed holding {-net[key]} units, not {units}")
        else:
            if refunds[key] != charges[key]:  # each charge refunded exactly once, for its amount
                problems.append(f"{key} compensated with {charges[key]} charged and {refunds[key]} refunded")
            if net[key] != 0 or shipped[key]:
                problems.append(f"{key} compensated holding {-net[key]} units, {shipped[key]} shipped")
    assert problems == []

    completed_units: dict[str, int] = defaultdict(int)
    for key, lines in orders.items():
        if status[key] == "completed":
            for sku, quantity in lines:
                completed_units[sku] += quantity
    assert stock == {sku: INITIAL_STOCK - completed_units[sku] for sku in stock}
    assert dead == 0
    assert handled >= ORDERS  # every order's first command at least went through an inbox
    # and the run did what it is for: commands carried out before a kill came back and were
    # answered from the inbox (without such redeliveries the counts above would prove nothing)
    repeated = sum(p.output().count("(recorded reply)") for p in bench.processes if p.name in FAIL_RATES)
    assert repeated > 0
