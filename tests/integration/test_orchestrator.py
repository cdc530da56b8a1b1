"""The orchestrator end to end: real RabbitMQ, real PostgreSQL, the example participants; the
orchestrator and the participants in the test's event loop (tests/integration/in_process.py), as
their processes are not the subject."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from orchestrator.core.engine import saga_id_for
from orchestrator.core.replay import differences, replay
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.bootstrap import load_workflows

from .conftest import ROOT, Bench, unique

pytestmark = pytest.mark.integration

order_ids = unique("order")
escrow_ids = unique("escrow")


async def test_orders_complete_and_escrows_close(bench: Bench) -> None:
    await bench.serve()
    await bench.work()
    orders = [order_ids() for _ in range(5)]
    escrows = [escrow_ids() for _ in range(3)]
    for key in orders:
        await bench.place_order(key)
    for key in escrows:
        await bench.open_escrow(key)

    done = await bench.finished("order", orders)
    closed = await bench.finished("escrow", escrows)

    assert {(s.state, s.status) for s in done.values()} == {("completed", "completed")}
    assert {(s.state, s.status) for s in closed.values()} == {("closed", "completed")}
    saga = done[orders[0]]
    assert await bench.commands_sent(saga.id) == [
        "inventory.ReserveStock",
        "payment.ChargePayment",
        "shipping.ShipOrder",
    ]
    assert saga.data["tracking_id"] and saga.data["charge_id"] and saga.data["reservation_id"]
    assert await bench.commands_sent(closed[escrows[0]].id) == [
        "buyer.RequestSignature",
        "seller.RequestSignature",
        "bank.CollectFunds",
        "bank.ReleaseFunds",
    ]


async def test_failed_steps_are_compensated_newest_first(bench: Bench) -> None:
    await bench.serve()
    await bench.work(
        inventory=("--out-of-stock", "unobtainium"),
        payment=("--decline-over", "100000"),
        shipping=("--fail-rate", "1"),
    )
    out_of_stock, declined, unshippable = order_ids(), order_ids(), order_ids()
    await bench.place_order(out_of_stock, sku="unobtainium")
    await bench.place_order(declined, amount_cents=250_000)
    await bench.place_order(unshippable)

    sagas = await bench.finished("order", [out_of_stock, declined, unshippable])

    assert {s.status for s in sagas.values()} == {"compensated"}
    assert await bench.commands_sent(sagas[out_of_stock].id) == ["inventory.ReserveStock"]
    assert await bench.commands_sent(sagas[declined].id) == [
        "inventory.ReserveStock",
        "payment.ChargePayment",
        "inventory.ReleaseStock",
    ]
    # Shipping failed: the charge is refunded first, and only once refunded is the stock released.
    assert bench.store is not None
    journal = await bench.store.journal(sagas[unshippable].id)
    steps = [(e.message.type, e.decision["to"], [c["type"] for c in e.decision["commands"]]) for e in journal]
    assert steps[-3:] == [
        ("shipping.ShipmentFailed", "compensating_charge", ["payment.RefundPayment"]),
        ("payment.PaymentRefunded", "compensating_reserve", ["inventory.ReleaseStock"]),
        ("inventory.StockReleased", "compensated", []),
    ]


async def test_a_duplicate_changes_nothing_and_the_same_start_twice_is_one_saga(bench: Bench) -> None:
    await bench.serve()
    key = order_ids()
    body = {"order_id": key, "customer_id": "c-1", "lines": [{"sku": "a", "quantity": 1}], "amount_cents": 10}
    first = await bench.publish("orders.OrderPlaced", body)
    await bench.publish("orders.OrderPlaced", body, message_id=first)  # redelivered
    await bench.publish("orders.OrderPlaced", body)  # the same order placed again, new message id
    # No participant runs: the saga waits in its first step; give the three messages time to land.
    assert bench.store is not None
    saga_id = saga_id_for("order", key)
    for _ in range(100):
        if len(await bench.store.journal(saga_id)) == 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # and a little more, for a duplicate that would wrongly be journaled

    journal = await bench.store.journal(saga_id)
    assert [(e.message.message_id, e.decision["outcome"]) for e in journal] == [
        (first, "started"),
        (journal[1].message.message_id, "ignored"),
    ]
    saga = await bench.saga("order", key)
    assert saga is not None and saga.version == 2 and saga.state == "reserve"
    assert await bench.commands_sent(saga_id) == ["inventory.ReserveStock"]


async def test_poison_messages_are_dead_lettered_and_nothing_else_is_lost(bench: Bench) -> None:
    await bench.serve()
    await bench.work()
    good = order_ids()
    await bench.publish("orders.OrderPlaced", None, raw=b"{not json")
    await bench.publish("", {"order_id": "x"})
    await bench.publish("orders.Unheard", {"order_id": "x"})
    await bench.publish("orders.OrderPlaced", {"order_id": "x"})  # fails the schema
    await bench.publish("inventory.StockReserved", {"order_id": "nobody", "reservation_id": "r"})
    await bench.publish(
        "inventory.StockReserved", {"order_id": "n", "reservation_id": "r"}, correlation_id="no-such-saga"
    )
    await bench.publish("orders.OrderPlaced", {"order_id": "x"}, headers={"x-workflow": "payroll"})
    await bench.place_order(good)

    dead = await bench.dead_letters(7)
    reasons = sorted(str(row["detail"]) for row in dead)
    assert len(reasons) == 7, reasons
    assert sorted(row["reason"] for row in dead) == [
        "no_type",
        "not_json",
        "schema",
        "unknown_saga",
        "unknown_saga",
        "unknown_type",
        "unknown_workflow",
    ]
    expected = [
        "body is not JSON",
        "message has no type",
        "no workflow takes messages of type 'orders.Unheard'",
        "orders.OrderPlaced does not fit its schema",
        "no order saga for order_id='nobody'",
        "correlation id 'no-such-saga' names no saga",
        "unknown workflow 'payroll'",
    ]
    for text in expected:
        assert any(text in reason for reason in reasons), (text, reasons)
    assert all(row["exchange"] == f"{bench.namespace}.events" for row in dead)
    assert all(row["source"] == "orchestrator" for row in dead)
    sagas = await bench.finished("order", [good])
    assert sagas[good].status == "completed"
    [orchestrator] = bench.served
    assert orchestrator.running


async def test_every_journal_replays_to_its_row(bench: Bench) -> None:
    await bench.serve()
    await bench.work(payment=("--decline-over", "5000"), buyer=("--refuse-over", "900000"))
    orders = [order_ids() for _ in range(4)]
    escrows = [escrow_ids() for _ in range(2)]
    for index, key in enumerate(orders):
        await bench.place_order(key, amount_cents=1000 if index % 2 else 9000)
    await bench.open_escrow(escrows[0])
    await bench.open_escrow(escrows[1], amount_cents=1_000_000)
    await bench.finished("order", orders)
    closed = await bench.finished("escrow", escrows)
    assert [closed[k].state for k in escrows] == ["closed", "refused"]

    registry = Registry(load_workflows("orchestrator.examples"))
    assert bench.store is not None
    registry.use_id_key(await bench.store.id_key())  # the service's: its commands' ids are keyed
    for key, workflow in [*((k, "order") for k in orders), *((k, "escrow") for k in escrows)]:
        row = await bench.saga(workflow, key)
        rebuilt = replay(registry.workflows[workflow], await bench.store.journal(saga_id_for(workflow, key)))
        assert differences(row, rebuilt) == []

    verify = bench.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert " 0 differ" in verify.stdout


async def test_verify_reports_a_row_that_drifted_from_its_journal(bench: Bench) -> None:
    await bench.serve()
    key = order_ids()
    await bench.place_order(key)
    for _ in range(100):
        if await bench.saga("order", key) is not None:
            break
        await asyncio.sleep(0.05)
    import asyncpg

    dsn = bench.database_url.replace("postgresql+asyncpg://", "postgresql://")
    saga_id = saga_id_for("order", key)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("UPDATE sagas SET state = 'ship' WHERE id = $1", saga_id)
        verify = bench.verify("--saga", saga_id)
    finally:  # the database is shared by the session: leave it as the journal says
        await connection.execute("UPDATE sagas SET state = 'reserve' WHERE id = $1", saga_id)
        await connection.close()
    assert verify.returncode == 1
    assert "state: row has 'ship', journal gives 'reserve'" in verify.stdout


async def _placed_and_sent(bench: Bench, key: str, dsn: str) -> str:
    """The order's saga id, once the saga exists and its first command left the outbox."""
    import asyncpg

    await bench.place_order(key)
    saga_id = saga_id_for("order", key)
    connection = await asyncpg.connect(dsn)
    try:
        for _ in range(200):
            if await bench.saga("order", key) is not None and not await connection.fetchval(
                "SELECT count(*) FROM outbox WHERE saga_id = $1", saga_id
            ):
                return saga_id
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
    raise AssertionError(f"saga {saga_id} never sent its first command")


async def test_verify_reports_a_timer_or_an_outbox_row_the_journal_does_not_imply(bench: Bench) -> None:
    import asyncpg

    orchestrator = await bench.serve()
    key = order_ids()
    dsn = bench.database_url.replace("postgresql+asyncpg://", "postgresql://")
    saga_id = await _placed_and_sent(bench, key, dsn)
    await orchestrator.stop()  # no relay sends the rows forged below, no sweep fires the timer moved
    connection = await asyncpg.connect(dsn)
    try:
        clean = bench.verify("--saga", saga_id)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        [command] = json.loads(
            await connection.fetchval(
                "SELECT decision->'commands' FROM journal WHERE saga_id = $1 AND seq = 1", saga_id
            )
        )
        assert command["type"] == "inventory.ReserveStock" and command["payload"]["order_id"] == key

        due = await connection.fetchval(
            "UPDATE deadlines SET due_at = due_at + interval '1 hour'"
            " WHERE saga_id = $1 AND kind = 'deadline' RETURNING due_at",
            saga_id,
        )
        try:
            moved = bench.verify("--saga", saga_id)
        finally:
            await connection.execute(
                "UPDATE deadlines SET due_at = due_at - interval '1 hour'"
                " WHERE saga_id = $1 AND kind = 'deadline'",
                saga_id,
            )
        assert moved.returncode == 1, moved.stdout + moved.stderr
        assert (
            f"timer deadline: row has reserve due {due.isoformat()} (version 1), journal gives reserve due"
            in (moved.stdout)
        )

        forged = f"forged-{key}"
        await connection.execute(
            "INSERT INTO outbox (message_id, saga_id, workflow, message_type, payload, created_at)"
            " VALUES ($1, $2, 'order', 'payment.RefundPayment', $3::jsonb, now()),"
            " ($4, $2, 'order', $5, $6::jsonb, now())",
            forged,
            saga_id,
            f'{{"order_id": "{key}"}}',
            command["message_id"],
            command["type"],
            f'{{"order_id": "{key}", "lines": [{{"sku": "sku", "quantity": 1000}}]}}',
        )
        try:
            queued = bench.verify("--saga", saga_id)
        finally:  # the database is shared by the session: leave it as the journal says
            await connection.execute(
                "DELETE FROM outbox WHERE message_id = ANY($1::text[])", [forged, command["message_id"]]
            )
        assert queued.returncode == 1, queued.stdout + queued.stderr
        assert f"outbox {forged} payment.RefundPayment" in queued.stdout
        assert f"the journal records no command {forged}" in queued.stdout
        assert f"outbox {command['message_id']} inventory.ReserveStock" in queued.stdout
        assert "'quantity': 1000" in queued.stdout
        assert "verified 1 sagas: 1 differ from their journal" in queued.stdout

        # a journal that says another payload was sent than the workflow sends deciding it again
        set_quantity = (
            "UPDATE journal SET decision ="
            " jsonb_set(decision, '{commands,0,payload,lines,0,quantity}', $2::jsonb)"
            " WHERE saga_id = $1 AND seq = 1"
        )
        await connection.execute(set_quantity, saga_id, "1000")
        try:
            rewritten = bench.verify("--saga", saga_id)
        finally:
            await connection.execute(
                set_quantity, saga_id, json.dumps(command["payload"]["lines"][0]["quantity"])
            )
        assert rewritten.returncode == 1, rewritten.stdout + rewritten.stderr
        assert (
            f"journal #1 (orders.OrderPlaced): command {command['message_id']}:"
            " recorded inventory.ReserveStock"
        ) in rewritten.stdout
        assert "'quantity': 1000" in rewritten.stdout and "but the workflow now sends {" in rewritten.stdout
        again = bench.verify("--saga", saga_id)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        await connection.close()


async def test_verify_reports_a_saga_whose_workflow_is_not_loaded(bench: Bench) -> None:
    await bench.serve()
    key = order_ids()
    dsn = bench.database_url.replace("postgresql+asyncpg://", "postgresql://")
    saga_id = await _placed_and_sent(bench, key, dsn)

    # the same discovery as run: ORCHESTRATOR_WORKFLOWS, or --workflows, or the bundled examples
    unloaded = bench.verify("--saga", saga_id, env={"ORCHESTRATOR_WORKFLOWS": "orchestrator.examples.escrow"})
    assert unloaded.returncode == 3, unloaded.stdout + unloaded.stderr
    assert f"{saga_id}: not verified: workflow 'order' is not loaded" in unloaded.stdout
    assert "verified 0 sagas: 0 differ from their journal" in unloaded.stdout
    assert "not verified 1 sagas whose workflow is not loaded: order (1)" in unloaded.stdout
    flagged = bench.verify("--saga", saga_id, "--workflows", "orchestrator.examples.escrow")
    assert flagged.returncode == 3 and "workflow 'order' is not loaded" in flagged.stdout

    for loaded in (
        bench.verify("--saga", saga_id, env={"ORCHESTRATOR_WORKFLOWS": "orchestrator.examples.order"}),
        bench.verify("--saga", saga_id),
    ):
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        assert "verified 1 sagas: 0 differ from their journal" in loaded.stdout
        assert "not loaded" not in loaded.stdout


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        (
            "ORCHESTRATOR_DATABASE_URL",
            "postgresql+asyncpg://postgres@127.0.0.1:1/none",
            "cannot reach PostgreSQL",
        ),
        ("ORCHESTRATOR_AMQP_URL", "amqp://guest:hunter2@127.0.0.1:1/", "cannot reach RabbitMQ"),
    ],
)
def test_an_unreachable_service_is_one_clear_line(bench: Bench, variable: str, value: str, says: str) -> None:
    env = {**bench.env, variable: value}
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert says in run.stderr
    assert "Traceback" not in run.stderr and "hunter2" not in run.stderr


async def test_an_escrow_run_end_to_end_leaves_no_dead_letter(bench: Bench) -> None:
    """The reply nobody waits for (bank.FundsReleased on closing) is journaled on its saga as
    ignored, never dead-lettered; a refusal's VoidDocuments is waited for and moves the escrow to
    ``refused`` (issue 11, item 4)."""
    await bench.serve()
    await bench.work(buyer=("--refuse-over", "900000"))
    escrows = [escrow_ids() for _ in range(2)]
    await bench.open_escrow(escrows[0])
    await bench.open_escrow(escrows[1], amount_cents=1_000_000)
    closed = await bench.finished("escrow", escrows)
    assert [closed[k].state for k in escrows] == ["closed", "refused"]
    assert bench.store is not None

    late = {escrows[0]: "bank.FundsReleased", escrows[1]: "seller.DocumentsVoided"}
    deadline = asyncio.get_running_loop().time() + 30
    journaled: dict[str, list[dict[str, object]]] = {}
    while len(journaled) < len(late) and asyncio.get_running_loop().time() < deadline:
        for key, reply in late.items():
            entries = await bench.store.journal(saga_id_for("escrow", key))
            found = [e.decision for e in entries if e.message.type == reply]
            if found:
                journaled[key] = found
        await asyncio.sleep(0.1)

    assert {k: [(d["outcome"], d["to"]) for d in v] for k, v in journaled.items()} == {
        escrows[0]: [("ignored", "closed")],
        escrows[1]: [("moved", "refused")],
    }
    assert await bench.dead_letters(1, timeout=2) == []
