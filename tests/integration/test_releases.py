"""A rolling change of the bundled order saga with real processes, RabbitMQ and PostgreSQL (issue
13, item 1): sagas parked in every state of release 1 finish on it while new ones start on release
2 (a step renamed, a step added); an old process beside a new one leaves release 2's messages to
it; ``run`` refuses to drop a release sagas still need, or to run a changed one, unless told."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg

from orchestrator.core.definitions import Status
from orchestrator.core.engine import saga_id_for
from orchestrator.core.messages import Message, dump
from orchestrator.examples.contracts import (
    OrderShipped,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    ShipmentFailed,
    StockReleased,
    StockReserved,
)
from tests.integration.conftest import ROOT, Bench, delete_namespace
from tests.releases.order_v2 import OrderConfirmed

BOTH = ("--workflows", "tests.releases.order_v2")


async def reply(bench: Bench, key: str, event: Message) -> None:
    await bench.reply(saga_id_for("order", key), event.TYPE, dump(event))


async def reach(bench: Bench, states: dict[str, str], timeout: float = 20) -> None:
    """Wait until each saga (by key) is in its state."""
    for _ in range(int(timeout / 0.1)):
        now = {key: await bench.saga("order", key) for key in states}
        if all(s is not None and s.state == states[k] for k, s in now.items()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached {states}: { {k: s and s.state for k, s in now.items()} }")


def dry_run(bench: Bench, module: str) -> subprocess.CompletedProcess[str]:
    """``orchestrator check --journals`` of the sagas in flight against ``module``."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "check", "--workflows", module, "--journals", "--jobs", "1"],
        env=bench.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_refused(bench: Bench, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--port", "0", *args],
        env=bench.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def park_in_every_state(bench: Bench, run: str) -> dict[str, str]:
    """Orders of release 1 waiting in each of its states; the state by key."""
    keys = {f"{run}-{name}": name for name in ("reserve", "charge", "ship", "comp-reserve", "comp-charge")}
    for key in keys:
        await bench.place_order(key)
    expected = {key: "reserve" for key in keys}
    await reach(bench, expected)
    for key, name in keys.items():
        if name != "reserve":
            await reply(bench, key, StockReserved(key, f"res-{key}"))
    parked = {
        f"{run}-reserve": "reserve",
        f"{run}-charge": "charge",
        f"{run}-ship": "charge",
        f"{run}-comp-reserve": "charge",
        f"{run}-comp-charge": "charge",
    }
    await reach(bench, parked)
    await reply(bench, f"{run}-ship", PaymentCharged(f"{run}-ship", "ch-1"))
    await reply(bench, f"{run}-comp-charge", PaymentCharged(f"{run}-comp-charge", "ch-2"))
    await reply(bench, f"{run}-comp-reserve", PaymentDeclined(f"{run}-comp-reserve", "card"))
    parked |= {
        f"{run}-ship": "ship",
        f"{run}-comp-charge": "ship",
        f"{run}-comp-reserve": "compensating_reserve",
    }
    await reach(bench, parked)
    await reply(bench, f"{run}-comp-charge", ShipmentFailed(f"{run}-comp-charge", "lost"))
    parked[f"{run}-comp-charge"] = "compensating_charge"
    await reach(bench, parked)
    return parked


async def test_a_rolling_change_of_the_order_saga_runs_both_releases_until_the_old_sagas_finish(
    bench: Bench,
) -> None:
    old = await bench.start_orchestrator()
    parked = await park_in_every_state(bench, "r")
    assert old.stop() == 0

    # The dry run first: release 2 beside release 1 changes nothing in flight; the same change
    # made in place (no new release) would strand the sagas in charge; dropping release 1 would
    # leave every one of them without a definition.
    kept = dry_run(bench, "tests.releases.order_v2")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "5 unchanged" in kept.stdout, kept.stdout
    in_place = dry_run(bench, "tests.releases.order_renamed_in_place")
    assert in_place.returncode == 1, in_place.stdout
    charge_lines = [line for line in in_place.stdout.splitlines() if "r-charge" in line]
    assert charge_lines and "[gone_state]" in in_place.stdout, in_place.stdout
    dropped = dry_run(bench, "tests.releases.order_v2_only")
    assert dropped.returncode == 1 and dropped.stdout.count("[no_definition]") == 5, dropped.stdout

    new = await bench.start_orchestrator(*BOTH)
    new_api = bench.api_url
    old_again = await bench.start_orchestrator()  # an old process restarted mid-deploy
    bench.api_url = new_api
    assert "newer than any loaded here" not in old_again.output()  # no release 2 saga yet
    try:
        async with bench.api() as api:
            for key in ("n-1", "n-2", "n-3"):
                started = await api.post(
                    "/sagas", json={"workflow": "order", "key": key, "data": _order(key)}
                )
                assert started.status_code in (200, 201), started.text
            detail = (await api.get("/workflows/order")).json()
        releases = {r["release"]: r for r in detail["releases"]}
        assert releases["2"]["current"] and releases["2"]["loaded"] and not releases["1"]["current"]
        assert releases["1"]["in_flight"] == 5 and releases["2"]["in_flight"] == 3
        assert releases["1"]["states"] == {
            "charge": 1,
            "compensating_charge": 1,
            "compensating_reserve": 1,
            "reserve": 1,
            "ship": 1,
        }
        assert releases["2"]["states"] == {"reserve": 3}

        # Release 1's sagas go on by release 1's states; release 2's by its own, whichever
        # process takes a message first (the old one leaves release 2's to the new one).
        for key in ("n-1", "n-2", "n-3"):
            await reply(bench, key, StockReserved(key, f"res-{key}"))
        await reply(bench, "r-reserve", StockReserved("r-reserve", "res-r"))
        await reach(bench, {"n-1": "payment", "n-2": "payment", "n-3": "payment", "r-reserve": "charge"})
        for key in ("n-1", "n-2", "n-3"):
            await reply(bench, key, PaymentCharged(key, f"ch-{key}"))
        await reach(bench, {"n-1": "ship", "n-2": "ship", "n-3": "ship"})
        for key in ("n-1", "n-2", "n-3"):
            await reply(bench, key, OrderShipped(key, f"t-{key}"))
        await reach(bench, {"n-1": "confirm", "n-2": "confirm", "n-3": "confirm"})
        for key in ("n-1", "n-2", "n-3"):
            await reply(bench, key, OrderConfirmed(key))
        for key in ("r-reserve", "r-charge"):
            await reply(bench, key, PaymentCharged(key, f"ch-{key}"))
        await reach(bench, {"r-reserve": "ship", "r-charge": "ship"})
        for key in ("r-reserve", "r-charge", "r-ship"):
            await reply(bench, key, OrderShipped(key, f"t-{key}"))
        await reply(bench, "r-comp-reserve", StockReleased("r-comp-reserve"))
        await reply(bench, "r-comp-charge", PaymentRefunded("r-comp-charge"))
        await reach(bench, {"r-comp-charge": "compensating_reserve"})
        await reply(bench, "r-comp-charge", StockReleased("r-comp-charge"))

        done = await bench.finished("order", [*parked, "n-1", "n-2", "n-3"], timeout=30)
        for key in parked:
            assert done[key].release == "1", key
        for key in ("r-reserve", "r-charge", "r-ship"):
            assert done[key].status is Status.COMPLETED, key
        for key in ("r-comp-reserve", "r-comp-charge"):
            assert done[key].status is Status.COMPENSATED, key
        for key in ("n-1", "n-2", "n-3"):
            assert done[key].release == "2" and done[key].status is Status.COMPLETED
            assert "confirm" in [e.decision["from"] for e in await bench.store.journal(done[key].id)]  # type: ignore[union-attr]
        assert "charge" in [
            e.decision["to"]
            for e in await bench.store.journal(done["r-reserve"].id)  # type: ignore[union-attr]
        ]
        verified = bench.verify(*BOTH)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "verified 8 sagas: 0 differ" in verified.stdout
    finally:
        assert new.stop() == 0 and old_again.stop() == 0
        await delete_namespace(bench.namespace, ("notifications",))
    # the broker spreads the replies over both processes: the old one gave release 2's back
    assert "for sagas on a release this process does not load" in old_again.output()


def _order(key: str) -> dict[str, Any]:
    return {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1000}


async def test_run_refuses_to_drop_a_release_sagas_need_and_fails_them_only_when_told(bench: Bench) -> None:
    old = await bench.start_orchestrator()
    await park_in_every_state(bench, "d")
    assert old.stop() == 0

    refused = run_refused(bench, "--workflows", "tests.releases.order_v2_only")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert lines[-1].startswith("orchestrator: sagas in flight need release 1 of order (5 sagas)"), (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr

    changed = run_refused(bench, "--workflows", "tests.integration.workflows")  # another "order" 1
    assert changed.returncode == 1
    assert "release 1 of workflow order has changed since it first ran" in changed.stderr

    told = await bench.start_orchestrator(
        "--workflows", "tests.releases.order_v2_only", "--fail-dropped-releases"
    )
    try:
        await bench.wait_for_log(told, "failed 5 sagas in flight on dropped release 1 of order")
        saga = await bench.saga("order", "d-charge")
        assert saga is not None and saga.status is Status.FAILED and saga.release == "1"
        assert saga.last_error and "release 1 of order was dropped" in saga.last_error
        last = (await bench.store.journal(saga.id))[-1]  # type: ignore[union-attr]
        assert last.message.type == "operator.release-dropped" and last.decision["status"] == "failed"
        dsn = bench.database_url.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(dsn)
        try:
            timers = await connection.fetchval("SELECT count(*) FROM deadlines")
        finally:
            await connection.close()
        assert timers == 0  # failed sagas wait for an operator, not for a deadline
        # what the gate wrote in SQL is what replaying the journal gives (core/migration.py)
        verified = bench.verify(*BOTH)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "verified 5 sagas: 0 differ" in verified.stdout
    finally:
        assert told.stop() == 0
        await delete_namespace(bench.namespace, ("notifications",))


async def test_a_migration_dry_run_then_applied_over_rest_and_the_journal_verifies(bench: Bench) -> None:
    old = await bench.start_orchestrator()
    await bench.place_order("m-1")
    await reach(bench, {"m-1": "reserve"})
    await reply(bench, "m-1", StockReserved("m-1", "res-m"))
    await reach(bench, {"m-1": "charge"})
    assert old.stop() == 0
    before_migration = datetime.now(UTC)

    new = await bench.start_orchestrator(*BOTH)
    try:
        cli = ["sagas", "migrate", "--workflow", "order", "--from", "1", "--to", "2", *BOTH]
        dry = subprocess.run(
            [sys.executable, "-m", "orchestrator", *cli, "--state", "charge=payment"],
            env=bench.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "m-1: charge -> payment (running)" in dry.stdout
        assert "would move 1 sagas of order from release 1 to 2, 0 cannot move; a dry run" in dry.stdout
        unmapped = subprocess.run(
            [sys.executable, "-m", "orchestrator", *cli],
            env=bench.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert unmapped.returncode == 1 and "cannot move: state 'charge' has no mapping" in unmapped.stdout
        saga = await bench.saga("order", "m-1")
        assert saga is not None and (saga.release, saga.state) == ("1", "charge")  # nothing written

        async with bench.api(actor="alice") as api:
            # a dry run takes no lock: it answers while an operator's session holds the saga's row
            locker = await asyncpg.connect(bench.database_url.replace("postgresql+asyncpg", "postgresql"))
            try:
                async with locker.transaction():
                    await locker.execute("SELECT 1 FROM sagas WHERE id = $1 FOR UPDATE", saga.id)
                    planned = await asyncio.wait_for(
                        api.post(
                            "/workflows/order/migrations",
                            json={"from_release": "1", "to_release": "2", "states": {"charge": "payment"}},
                        ),
                        4,  # under the 5 s lock timeout a locking read would wait for
                    )
            finally:
                await locker.close()
            assert planned.status_code == 200, planned.text
            assert (planned.json()["moved"], planned.json()["next_after"]) == (1, None)
            bad = await api.post(
                "/workflows/order/migrations",
                json={"from_release": "1", "to_release": "2", "states": {"charge": "nowhere"}, "apply": True},
            )
            assert bad.status_code == 422 and "'nowhere' is not a state of release 2" in bad.text
            applied = await api.post(
                "/workflows/order/migrations",
                json={"from_release": "1", "to_release": "2", "states": {"charge": "payment"}, "apply": True},
            )
            assert applied.status_code == 200, applied.text
            assert applied.json()["moved"] == 1 and applied.json()["applied"] is True
            saga = await bench.saga("order", "m-1")
            assert saga is not None and (saga.release, saga.state) == ("2", "payment")

            await reply(bench, "m-1", PaymentCharged("m-1", "ch-m"))
            await reach(bench, {"m-1": "ship"})
            await reply(bench, "m-1", OrderShipped("m-1", "t-m"))
            await reach(bench, {"m-1": "confirm"})
            await reply(bench, "m-1", OrderConfirmed("m-1"))
            await bench.finished("order", ["m-1"])

            then = await api.get(f"/sagas/{saga.id}/state", params={"at": before_migration.isoformat()})
            assert then.status_code == 200, then.text
            assert (then.json()["release"], then.json()["state"]) == ("1", "charge")
            now = await api.get(f"/sagas/{saga.id}/state", params={"at": datetime.now(UTC).isoformat()})
            assert (now.json()["release"], now.json()["state"], now.json()["status"]) == (
                "2",
                "completed",
                "completed",
            )
        history = [e.message.type for e in await bench.store.journal(saga.id)]  # type: ignore[union-attr]
        assert "operator.migrate" in history
        verified = bench.verify(*BOTH)
        assert verified.returncode == 0 and "verified 1 sagas: 0 differ" in verified.stdout, verified.stdout
    finally:
        assert new.stop() == 0
        await delete_namespace(bench.namespace, ("notifications",))
