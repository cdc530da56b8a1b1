"""The REST API of a real ``orchestrator run``, with real participants: a saga started over HTTP
completes, operator actions on a parked saga go out to the broker and into the journal, refusals
are 409s, and the metrics count what happened."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from .conftest import ROOT, Bench, unique

pytestmark = pytest.mark.integration

keys = unique("rest")
ORDER = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1000}
ESCROW = {"buyer_id": "b-1", "seller_id": "s-1", "amount_cents": 5000}


async def wait_for_state(
    api: httpx.AsyncClient, saga_id: str, state: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        saga: dict[str, Any] = (await api.get(f"/sagas/{saga_id}")).json()
        if saga["state"] == state:
            return saga
        if time.monotonic() > deadline:
            raise AssertionError(f"saga never reached {state}: {saga}")
        await asyncio.sleep(0.1)


def samples(metrics: str, name: str) -> float:
    """The sum of a metric's samples in Prometheus text (all label sets)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    )


async def test_a_saga_started_over_rest_completes_and_is_counted(bench: Bench) -> None:
    orchestrator = await bench.serve()
    await bench.work()
    key = keys()

    async with bench.api(actor="checkout") as api:
        ready = await api.get("/readyz")
        started = await api.post("/sagas", json={"workflow": "order", "key": key, "data": ORDER})
        assert started.status_code == 201, started.text
        done = await wait_for_state(api, started.json()["id"], "completed")
        history = (await api.get(f"/sagas/{done['id']}/history")).json()["items"]
        metrics = (await api.get("/metrics")).text

    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "broker_publish": "ok", "consumer": "ok"},
    }
    assert (history[0]["kind"], history[0]["actor"]) == ("operator", "checkout")
    assert [e["message"]["type"] for e in history[1:]] == [
        "inventory.StockReserved",
        "payment.PaymentCharged",
        "shipping.OrderShipped",
    ]
    assert samples(metrics, 'orchestrator_messages_in_total{verdict="accepted"}') >= 3
    assert samples(metrics, "orchestrator_commands_out_total") >= 3
    assert (
        samples(metrics, "orchestrator_step_latency_seconds_count") >= 2
    )  # charge and ship followed replies
    assert samples(metrics, 'orchestrator_sagas_finished_total{status="completed",workflow="order"}') >= 1
    assert f"saga_id={done['id']}" in orchestrator.output()  # the start's log line names the saga
    await orchestrator.stop()


async def test_operator_actions_on_a_parked_saga_reach_the_broker_and_the_journal(bench: Bench) -> None:
    orchestrator = await bench.serve()
    await bench.work(bank=("--never-answer",))

    async with bench.api(actor="ops-alice") as api:
        first, second = [
            (await api.post("/sagas", json={"workflow": "escrow", "key": keys(), "data": ESCROW})).json()
            for _ in range(2)
        ]
        parked = await wait_for_state(api, first["id"], "awaiting_funds")
        await wait_for_state(api, second["id"], "awaiting_funds")
        assert parked["waiting_for"] == ["bank.FundsDeclined", "bank.FundsReceived"]
        assert [(t["kind"], t["state"]) for t in parked["timers"]] == [("deadline", "awaiting_funds")]

        retried = await api.post(f"/sagas/{first['id']}/retry", json={"reason": "bank was restarted"})
        fired = await api.post(f"/sagas/{first['id']}/fire-deadline", json={"reason": "bank lost it"})
        refused = await api.post(f"/sagas/{first['id']}/cancel", json={"reason": "too late"})
        cancelled = await api.post(f"/sagas/{second['id']}/cancel")
        anonymous = await api.post(f"/sagas/{second['id']}/retry", headers={"Authorization": ""})
        history = (await api.get(f"/sagas/{first['id']}/history")).json()["items"]

    assert retried.status_code == 200, retried.text
    assert fired.status_code == 200, fired.text
    # the bank never answers: the escrow waits in its first undo, ReturnFunds re-sent meanwhile
    assert (fired.json()["state"], fired.json()["status"]) == ("expired_undo_1", "compensating")
    assert sorted((t["kind"], t["state"]) for t in fired.json()["timers"]) == [
        ("deadline", "expired_undo_1"),
        ("retry", "expired_undo_1"),
    ]
    assert refused.status_code == 409
    assert refused.json()["detail"] == "saga is already compensating (in expired_undo_1)"
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "expired_undo_1")
    assert anonymous.status_code == 401
    operator = [e for e in history if e["kind"] == "operator"]
    assert [(e["actor"], e["message"]["type"], e["message"]["payload"].get("reason")) for e in operator] == [
        ("ops-alice", "escrow.EscrowOpened", None),
        ("ops-alice", "operator.retry", "bank was restarted"),
        ("ops-alice", "operator.fire-deadline", "bank lost it"),
    ]
    assert [c["type"] for c in operator[1]["commands"]] == ["bank.CollectFunds"]
    assert [c["type"] for c in operator[2]["commands"]] == ["bank.ReturnFunds"]
    # The relay sent what the actions decided: the outbox empties.
    deadline = time.monotonic() + 20
    async with bench.api() as api:
        while True:
            metrics = (await api.get("/metrics")).text
            if samples(metrics, "orchestrator_outbox_backlog") == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert samples(metrics, "orchestrator_outbox_backlog") == 0
    assert samples(metrics, 'orchestrator_operator_actions_total{action="fire-deadline"}') == 1
    log = orchestrator.output()
    assert "ops-alice applied fire-deadline" in log and f"saga_id={first['id']}" in log
    await orchestrator.stop()


def test_a_port_in_use_is_one_clear_line_and_exit_2(bench: Bench) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", "--port", str(port)],
            env=bench.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert run.returncode == 2
    assert run.stderr == f"orchestrator: cannot listen on 127.0.0.1:{port}: Address already in use\n"
