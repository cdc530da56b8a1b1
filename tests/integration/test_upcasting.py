"""Event schema versions on the real stack (issue 13, item 4): the running service takes a
version 1 event (no header) and a version 2 one, dead-letters what it cannot read with the
reason, and ``orchestrator verify`` replays the journal clean after the workflow moved to schema 3
with a new upcaster: an upcaster exercised by a replay, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from orchestrator.core.engine import SagaSnapshot, saga_id_for

from .conftest import ROOT, Bench, unique

pytestmark = pytest.mark.integration

V2 = "tests.integration.upcast_shop_v2"
V3 = "tests.integration.upcast_shop_v3"
keys = unique("upshop")


async def in_state(bench: Bench, key: str, state: str, timeout: float = 30) -> SagaSnapshot:
    deadline = time.monotonic() + timeout
    while True:
        saga = await bench.saga("upshop", key)
        if saga is not None and saga.state == state:
            return saga
        if time.monotonic() > deadline:
            logs = "\n".join(p.output()[-3000:] for p in [*bench.processes, *bench.served])
            raise AssertionError(f"upshop {key} is {saga and saga.state}, not {state}:\n{logs}")
        await asyncio.sleep(0.05)


async def test_versions_1_and_2_are_taken_and_the_journal_verifies_clean_at_version_3(bench: Bench) -> None:
    orchestrator = await bench.serve(V2)
    v1, v2, lower, too_new, boom = (keys() for _ in range(5))
    await bench.publish("upshop.OrderPlaced", {"order_id": v1, "total": "12.50"})  # no header: 1
    await bench.publish(
        "upshop.OrderPlaced",
        {"order_id": v2, "amount_cents": 990, "currency": "USD"},
        headers={"x-schema-version": 2},
    )
    await bench.publish(
        "upshop.OrderPlaced",
        {"order_id": lower, "amount_cents": 5, "currency": "gbp"},  # version 3 will read it otherwise
        headers={"x-schema-version": 2},
    )
    newer = await bench.publish(
        "upshop.OrderPlaced",
        {"order_id": too_new, "amount_cents": 1, "currency": "EUR"},
        headers={"x-schema-version": 3},
    )
    failing = await bench.publish("upshop.OrderPlaced", {"order_id": boom, "total": "boom"})

    one = await in_state(bench, v1, "charging")
    two = await in_state(bench, v2, "charging")
    await in_state(bench, lower, "charging")
    assert one.data == {"order_id": v1, "amount_cents": 1250, "currency": "EUR"}
    assert two.data == {"order_id": v2, "amount_cents": 990, "currency": "USD"}
    await bench.reply(one.id, "uppay.Paid", {"order_id": v1})
    await in_state(bench, v1, "paid")

    # the refused ones: dead-lettered with their reason, the service going on
    dead = {row["message_id"]: row for row in await bench.dead_letters(2)}
    assert dead[newer]["reason"] == "schema_version"
    assert (
        "upshop.OrderPlaced of schema 3 is newer than this orchestrator reads (schema 2)"
        in dead[newer]["detail"]
    )
    assert dead[failing]["reason"] == "upcast_failed"
    assert "ValueError: cannot read a total of boom" in dead[failing]["detail"]
    assert await bench.saga("upshop", too_new) is None and await bench.saga("upshop", boom) is None
    assert orchestrator.running

    # the journal keeps each as it came, with its version
    assert bench.store is not None
    [start] = (await bench.store.journal(one.id))[:1]
    assert start.message.payload == {"order_id": v1, "total": "12.50"} and start.message.schema == 1
    assert (await bench.store.journal(two.id))[0].message.schema == 2

    await orchestrator.stop()
    for key in (v1, v2, lower):
        at_v2 = bench.verify("--saga", saga_id_for("upshop", key), "--workflows", V2)
        assert at_v2.returncode == 0, at_v2.stdout + at_v2.stderr
    # the next release: schema 3, an upcaster from 2; old entries replayed through 1 -> 2 -> 3
    for key in (v1, v2):
        at_v3 = bench.verify("--saga", saga_id_for("upshop", key), "--workflows", V3)
        assert at_v3.returncode == 0, at_v3.stdout + at_v3.stderr
        assert "verified 1 sagas: 0 differ from their journal" in at_v3.stdout
    # and the one whose data version 3 reads otherwise ("gbp" is "GBP" now) is reported, not hidden
    changed = bench.verify("--saga", saga_id_for("upshop", lower), "--workflows", V3)
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "data: row has" in changed.stdout and "'GBP'" in changed.stdout

    # the next release runs on the same journal: it takes version 3, and the version 3 message
    # dead-lettered before is taken once replayed from the table
    await bench.serve(V3)
    replay = subprocess.run(
        [sys.executable, "-m", "orchestrator", "dead-letters", "replay", str(dead[newer]["id"])],
        env=bench.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    taken = await in_state(bench, too_new, "charging")
    assert taken.data["currency"] == "EUR"
    await bench.reply(two.id, "uppay.Paid", {"order_id": v2})
    await in_state(bench, v2, "paid")

    # POST /sagas says its version in the request, with the same rules
    rest = keys()
    async with bench.api(actor="checkout") as api:
        history = (await api.get(f"/sagas/{one.id}/history")).json()["items"]
        assert history[0]["message"]["schema_version"] == 1
        history = (await api.get(f"/sagas/{two.id}/history")).json()["items"]
        assert history[0]["message"]["schema_version"] == 2
        started = await api.post("/sagas", json={"workflow": "upshop", "key": rest, "data": {"total": "3"}})
        assert started.status_code == 201, started.text
        assert started.json()["data"] == {"order_id": rest, "amount_cents": 300, "currency": "EUR"}
        refused = await api.post(
            "/sagas",
            json={"workflow": "upshop", "key": keys(), "data": {"total": "3"}, "schema_version": 4},
        )
        assert refused.status_code == 422
        assert (
            "upshop.OrderPlaced of schema 4 is newer than this orchestrator reads (schema 3)" in refused.text
        )

    for key in (v1, v2, too_new, rest):
        again = bench.verify("--saga", saga_id_for("upshop", key), "--workflows", V3)
        assert again.returncode == 0, again.stdout + again.stderr
