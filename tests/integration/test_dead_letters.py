"""Dead letters an operator can work with, on the real broker and database: what the broker
dead-letters is drained into the table, and rows are listed, shown, replayed and purged over the
CLI and over REST. A replayed message goes through the same checks as any other."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest

from orchestrator.adapters.amqp.broker import services_of
from orchestrator.adapters.amqp.topology import Topology, declare
from orchestrator.core.engine import saga_id_for
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.bootstrap import load_workflows

from .conftest import ROOT, Bench, unique

pytestmark = pytest.mark.integration

keys = unique("dl")


def cli(bench: Bench, *args: str) -> subprocess.CompletedProcess[str]:
    """``orchestrator dead-letters ...``, as an operator runs it (stdin is not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "dead-letters", *args],
        env=bench.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


async def acli(bench: Bench, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, bench, *args)


async def rows_where(bench: Bench, count: int, timeout: float = 30, **match: Any) -> list[dict[str, Any]]:
    """This namespace's dead-letter rows whose columns equal ``match``, once there are ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            r for r in await bench.dead_letters(0, timeout=0) if all(r[k] == v for k, v in match.items())
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def state_changes(bench: Bench, key: str, leaving: str | None, timeout: float = 30) -> str:
    """The order saga's state once it exists and is no longer ``leaving``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        saga = await bench.saga("order", key)
        if saga is not None and saga.state != leaving:
            return saga.state
        await asyncio.sleep(0.1)
    raise AssertionError(f"saga {key} still {leaving} after {timeout}s")


#: the inventory service of these tests still moves to section 6 reply ids: its replies are let by
#: (ORCHESTRATOR_UNCHECKED_REPLIES), so one that came before its saga replays once the saga exists
INVENTORY_UNCHECKED = frozenset({"inventory"})


async def reply_too_early(bench: Bench, key: str) -> str:
    """A StockReserved for an order whose saga does not exist yet: dead-lettered unknown_saga."""
    return await bench.publish("inventory.StockReserved", {"order_id": key, "reservation_id": "r-1"})


async def not_json(bench: Bench) -> str:
    return await bench.publish("orders.OrderPlaced", None, raw=b"\xff{ not json")


async def test_a_command_a_participant_rejects_is_drained_into_the_table(bench: Bench) -> None:
    orchestrator = await bench.serve()
    await bench.work("inventory")
    assert bench.channel is not None
    commands = await bench.channel.get_exchange(f"{bench.namespace}.commands")
    message_id = str(uuid.uuid4())
    await commands.publish(  # no correlation_id: section 6 says reject it
        aio_pika.Message(b'{"order_id": "x"}', type="inventory.ReserveStock", message_id=message_id),
        routing_key="inventory.ReserveStock",
    )

    [row] = await rows_where(bench, 1, message_id=message_id)

    assert (row["source"], row["reason"]) == ("broker", "rejected")
    # the participant kit publishes it with its reason, which a plain reject would lose
    assert row["detail"] == (
        "rejected by participant inventory: invalid command: no correlation_id property:"
        " the reply could not name its saga"
    )
    assert (row["exchange"], row["routing_key"]) == (f"{bench.namespace}.commands", "inventory.ReserveStock")
    assert row["body"] == b'{"order_id": "x"}'
    assert "dead letter from the broker" in orchestrator.output()
    async with bench.api() as api:
        metrics = (await api.get("/metrics")).text
    assert 'orchestrator_dead_lettered_total{reason="rejected"} 1.0' in metrics


async def test_an_event_past_the_delivery_limit_is_drained_and_replays_into_a_saga(bench: Bench) -> None:
    # The topology as the orchestrator declares it, but nobody consuming its queue.
    assert bench.connection is not None
    services = services_of(Registry(load_workflows("orchestrator.examples")).command_types())
    setup = await bench.connection.channel()
    await declare(setup, Topology(bench.namespace), services)
    key = keys()
    message_id = await bench.place_order(key)
    queue = await setup.get_queue(f"{bench.namespace}.orchestrator.events")
    deliveries = 0
    for _ in range(50):  # handed out and returned until the queue's limit dead-letters it
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            if deliveries > 5:
                break
            await asyncio.sleep(0.1)
            continue
        deliveries += 1
        await message.nack(requeue=True)
    await setup.close()
    assert deliveries == 6

    await bench.serve()
    [row] = await rows_where(bench, 1, message_id=message_id)
    assert (row["source"], row["reason"]) == ("broker", "delivery_limit")
    assert f"in queue {bench.namespace}.orchestrator.events" in row["detail"]
    assert (row["exchange"], row["routing_key"]) == (f"{bench.namespace}.events", "orders.OrderPlaced")
    assert await bench.saga("order", key) is None

    replayed = await acli(bench, "replay", str(row["id"]), "--actor", "bob")

    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith(f"replayed {row['id']} (delivery_limit)")
    await state_changes(bench, key, None)  # the saga exists: the start event was taken
    [marked] = await rows_where(bench, 1, message_id=message_id)
    assert marked["replayed_by"] == "bob" and marked["replayed_at"] is not None


async def test_list_show_replay_and_purge_over_the_cli(bench: Bench) -> None:
    await bench.serve(unchecked_replies=INVENTORY_UNCHECKED)  # no participants: the saga waits
    key = keys()
    early = await reply_too_early(bench, key)
    bad = await not_json(bench)
    [row] = await rows_where(bench, 1, message_id=early)
    [bad_row] = await rows_where(bench, 1, message_id=bad)
    assert (row["source"], row["reason"], row["routing_key"]) == (
        "orchestrator",
        "unknown_saga",
        "inventory.StockReserved",
    )

    # the reads, side by side (each a process of its own, as an operator runs it)
    listed, table, shown, shown_json = await asyncio.gather(
        acli(bench, "list", "--reason", "unknown_saga", "--json", "--limit", "500"),
        acli(bench, "list", "--source", "orchestrator"),
        acli(bench, "show", str(row["id"])),
        acli(bench, "show", str(bad_row["id"]), "--json"),
    )
    assert listed.returncode == 0, listed.stderr
    assert row["id"] in [r["id"] for r in json.loads(listed.stdout)]
    assert table.stdout.startswith("ID ") and f"\n{row['id']} " in table.stdout
    assert shown.returncode == 0, shown.stderr
    assert "reason:         unknown_saga" in shown.stdout
    assert "replayable:     yes" in shown.stdout
    assert '{"order_id":"' + key in shown.stdout  # the body, as text
    shown_bad = json.loads(shown_json.stdout)
    assert shown_bad["body_text"] is None and shown_bad["body_base64"] == "/3sgbm90IGpzb24="

    # Fixed: the saga exists now, waiting for the stock reply that was dead-lettered.
    await bench.place_order(key)
    waiting = await state_changes(bench, key, None)
    replayed = await acli(bench, "replay", str(row["id"]))
    assert replayed.returncode == 0, replayed.stderr
    assert await state_changes(bench, key, waiting) != waiting  # the reply was taken: it moved on

    # Replayed already, refused; still bad, replayed and dead-lettered again as a new row.
    twice, again = await asyncio.gather(
        acli(bench, "replay", str(row["id"])), acli(bench, "replay", str(bad_row["id"]))
    )
    assert twice.returncode == 1
    assert f"cannot replay {row['id']}: it was replayed already" in twice.stderr
    assert again.returncode == 0, again.stderr
    rows = await rows_where(bench, 2, message_id=bad)
    assert [r["reason"] for r in rows] == ["not_json", "not_json"]
    assert rows[1]["id"] > bad_row["id"] and rows[1]["replayed_at"] is None

    bad_inputs = (
        ["show", "x"],
        ["replay"],
        ["purge", "--all", "--reason", "not_json"],
        ["list", "--since", "y"],
    )
    # refused, all of them, and nothing changed by them: side by side
    unasked, *refusals = await asyncio.gather(
        acli(bench, "purge", str(row["id"]), str(bad_row["id"])),
        *(acli(bench, *bad_input) for bad_input in bad_inputs),
    )
    assert unasked.returncode == 2 and "pass --yes" in unasked.stderr
    for refused in refusals:
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        said = refused.stderr.strip().splitlines()[-1]  # argparse's usage first, then one line
        assert said.startswith("orchestrator"), refused.stderr
    purged = await acli(bench, "purge", str(row["id"]), str(bad_row["id"]), "--yes")
    assert purged.returncode == 0 and purged.stdout.strip() == "purged 2 dead letters", purged.stderr
    gone = await acli(bench, "show", str(row["id"]))
    assert (gone.returncode, gone.stderr.strip()) == (1, f"orchestrator: no dead letter {row['id']}")


async def test_list_show_replay_and_purge_over_rest(bench: Bench) -> None:
    orchestrator = await bench.serve(unchecked_replies=INVENTORY_UNCHECKED)
    key = keys()
    early = await reply_too_early(bench, key)
    bad = await not_json(bench)
    big = await bench.publish("orders.OrderPlaced", None, raw=b'{"x": "' + b"y" * (1024 * 1024) + b'"}')
    [row] = await rows_where(bench, 1, message_id=early)
    [bad_row] = await rows_where(bench, 1, message_id=bad)
    [cut] = await rows_where(bench, 1, message_id=big)

    async with bench.api(token=False) as anonymous, bench.api(actor="alice") as api:
        assert (await anonymous.get("/dead-letters")).status_code == 401  # closed: bodies are data
        page = (await api.get("/dead-letters", params={"reason": "unknown_saga", "limit": 500})).json()
        assert row["id"] in [r["id"] for r in page["items"]]
        first = (await api.get("/dead-letters", params={"limit": 1})).json()
        second = (await api.get("/dead-letters", params={"limit": 1, "cursor": first["next_cursor"]})).json()
        assert first["items"][0]["id"] != second["items"][0]["id"]
        assert (first["items"][0]["dead_at"], first["items"][0]["id"]) >= (
            second["items"][0]["dead_at"],
            second["items"][0]["id"],
        )
        shown = (await api.get(f"/dead-letters/{row['id']}")).json()
        assert (shown["reason"], shown["source"], shown["replayable"]) == (
            "unknown_saga",
            "orchestrator",
            True,
        )
        assert orjson.loads(shown["body_text"]) == {"order_id": key, "reservation_id": "r-1"}
        assert shown["properties"]["type"] == "inventory.StockReserved"
        assert (await api.get("/dead-letters/999999999999")).status_code == 404
        assert (await api.get("/dead-letters", params={"reason": "nope"})).status_code == 422

        assert (await anonymous.post(f"/dead-letters/{row['id']}/replay")).status_code == 401
        cut_replay = await api.post(f"/dead-letters/{cut['id']}/replay")
        assert cut_replay.status_code == 409 and "its body was cut" in cut_replay.json()["detail"]

        await bench.place_order(key)
        waiting = await state_changes(bench, key, None)
        replayed = await api.post(f"/dead-letters/{row['id']}/replay")
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["replayed_by"] == "alice"
        assert await state_changes(bench, key, waiting) != waiting
        twice = await api.post(f"/dead-letters/{row['id']}/replay")
        assert twice.status_code == 409 and "replayed already" in twice.json()["detail"]

        many = await api.post("/dead-letters/replay", json={"ids": [bad_row["id"], cut["id"], 999999999999]})
        assert many.status_code == 200, many.text
        assert many.json()["replayed"] == [bad_row["id"]]
        assert {r["id"] for r in many.json()["refused"]} == {cut["id"], 999999999999}
        assert len(await rows_where(bench, 2, message_id=bad)) == 2  # dead-lettered anew
        assert (await api.post("/dead-letters/replay", json={})).status_code == 422

        assert (await api.delete(f"/dead-letters/{row['id']}")).status_code == 204
        assert (await api.delete(f"/dead-letters/{row['id']}")).status_code == 404
        ids = [r["id"] for r in await rows_where(bench, 2, message_id=bad)] + [cut["id"]]
        purged = await api.post("/dead-letters/purge", json={"ids": ids})
        assert purged.json() == {"purged": 3}
        assert (
            await api.post("/dead-letters/purge", json={"ids": [1], "reason": "not_json"})
        ).status_code == 422
    assert "alice replayed dead letter" in orchestrator.output()
    assert "alice purged 3 dead letters" in orchestrator.output()
    assert "Traceback" not in orchestrator.output()


# Replay sends only what this service may provably send (issue 27, case 1) ------------------------
ORDER = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1000}


async def as_dead_letter(bench: Bench, message: aio_pika.abc.AbstractMessage | aio_pika.Message) -> str:
    """Publish ``message`` to ``{ns}.dead`` as the participant kit dead-letters a command it
    rejects (docs/protocol.md, section 9): what anyone who may write there can send."""
    assert bench.channel is not None
    dead = await bench.channel.get_exchange(f"{bench.namespace}.dead")
    headers: dict[str, Any] = {
        "x-participant": "payment",
        "x-participant-reason": "declined by the bank",
        "x-original-exchange": f"{bench.namespace}.commands",
        "x-original-routing-key": message.type or "",
    }
    await dead.publish(
        aio_pika.Message(
            message.body,
            type=message.type,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            content_type="application/json",
            headers=headers,
        ),
        routing_key="",
    )
    assert message.message_id is not None
    return message.message_id


async def waiting_in(bench: Bench, queue: str) -> int:
    assert bench.channel is not None
    declared = await bench.channel.declare_queue(queue, passive=True)
    assert declared.declaration_result.message_count is not None
    return declared.declaration_result.message_count


async def test_a_forged_dead_letter_of_a_command_no_saga_sent_is_never_published(bench: Bench) -> None:
    await bench.serve()
    async with bench.api(actor="alice") as api:
        started = await api.post("/sagas", json={"workflow": "order", "key": keys(), "data": ORDER})
        saga = started.json()
        refund = aio_pika.Message(
            orjson.dumps({"order_id": saga["key"], "amount_cents": 100000}),
            type="payment.RefundPayment",
            message_id=str(uuid.uuid4()),
            correlation_id=saga["id"],
        )
        forged = await as_dead_letter(bench, refund)
        [row] = await rows_where(bench, 1, message_id=forged)
        before = await waiting_in(bench, f"{bench.namespace}.payment")

        shown = (await api.get(f"/dead-letters/{row['id']}")).json()
        one = await api.post(f"/dead-letters/{row['id']}/replay")
        many = await api.post("/dead-letters/replay", json={"reason": "rejected", "limit": 10000})
        by_cli = await acli(bench, "replay", str(row["id"]))

        assert (shown["replayable"], shown["exchange"]) == (False, f"{bench.namespace}.commands")
        assert "which sent no command with that id" in shown["not_replayable_because"]
        assert one.status_code == 409 and "only a command a saga sent is replayed" in one.json()["detail"]
        assert many.json()["replayed"] == [] and row["id"] in [r["id"] for r in many.json()["refused"]]
        assert by_cli.returncode == 1 and f"cannot replay {row['id']}: it claims to be" in by_cli.stderr
        assert await waiting_in(bench, f"{bench.namespace}.payment") == before  # nothing reached payment
        assert (await api.get(f"/dead-letters/{row['id']}")).json()["replayed_at"] is None


async def next_on(
    queue: aio_pika.abc.AbstractQueue, timeout: float = 10
) -> aio_pika.abc.AbstractIncomingMessage:
    """The next message on ``queue``, waited for (``get`` answers at once, empty or not)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        message = await queue.get(fail=False)
        if message is not None:
            return message
        assert asyncio.get_running_loop().time() < deadline, f"nothing on {queue.name} in {timeout} s"
        await asyncio.sleep(0.05)


async def test_a_command_its_saga_sent_replays_to_its_participant_and_a_changed_one_does_not(
    bench: Bench,
) -> None:
    await bench.serve()
    assert bench.channel is not None
    inventory = await bench.channel.declare_queue(f"{bench.namespace}.inventory", passive=True)
    async with bench.api(actor="alice") as api:
        started = await api.post("/sagas", json={"workflow": "order", "key": keys(), "data": ORDER})
        assert started.status_code == 201, started.text
        sent = await next_on(inventory)  # the saga's ReserveStock, as a participant takes it
        await sent.ack()
        real = await as_dead_letter(bench, sent)
        changed = aio_pika.Message(
            orjson.dumps({**orjson.loads(sent.body), "quantity": 1000}),
            type=sent.type,
            message_id=sent.message_id,
            correlation_id=sent.correlation_id,
        )
        renamed = aio_pika.Message(
            sent.body,
            type="inventory.ReleaseStock",
            message_id=sent.message_id,
            correlation_id=sent.correlation_id,
        )
        await as_dead_letter(bench, changed)
        await as_dead_letter(bench, renamed)
        rows = await rows_where(bench, 3, message_id=real)
        assert len(rows) == 3, rows
        by_type = {(r["message_type"], r["body"] == sent.body): r["id"] for r in rows}

        first, second = await asyncio.gather(
            api.post(f"/dead-letters/{by_type[('inventory.ReserveStock', True)]}/replay"),
            api.post(f"/dead-letters/{by_type[('inventory.ReserveStock', True)]}/replay"),
        )
        tampered = await api.post(f"/dead-letters/{by_type[('inventory.ReserveStock', False)]}/replay")
        retyped = await api.post(f"/dead-letters/{by_type[('inventory.ReleaseStock', True)]}/replay")
        again = await next_on(inventory)
        await again.ack()

    assert sorted([first.status_code, second.status_code]) == [200, 409]  # claimed once, sent once
    assert "replayed" in (first if first.status_code == 409 else second).json()["detail"]
    assert (again.message_id, again.body, again.routing_key) == (sent.message_id, sent.body, sent.type)
    assert await waiting_in(bench, f"{bench.namespace}.inventory") == 0
    assert tampered.status_code == 409 and "its body is not the payload" in tampered.json()["detail"]
    assert retyped.status_code == 409 and "sent that id as inventory.ReserveStock" in retyped.json()["detail"]


async def test_junk_naming_a_live_saga_is_dead_lettered_and_does_not_grow_its_journal(bench: Bench) -> None:
    """Issue 27, case 2: saga ids are computable, so junk can name any live saga."""
    await bench.serve()
    key = keys()
    await bench.place_order(key)
    saga_id = saga_id_for("order", key)
    while (await bench.saga("order", key)) is None:
        await asyncio.sleep(0.05)
    before = await bench.saga("order", key)
    junk = [
        await bench.publish("x.Junk", {"pad": os.urandom(30_000).hex()}, correlation_id=saga_id)
        for _ in range(100)
    ]

    rows = await rows_where(bench, 100, reason="unknown_type", correlation_id=saga_id)
    connection = await asyncpg.connect(bench.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        journal_bytes = await connection.fetchval(
            "SELECT sum(pg_column_size(j.*)) FROM journal j WHERE saga_id = $1", saga_id
        )
    finally:
        await connection.close()
    after = await bench.saga("order", key)

    assert {r["message_id"] for r in rows} == set(junk)
    assert "answers no command saga" in rows[0]["detail"]
    assert before is not None and after is not None and after.version == before.version
    assert journal_bytes < 1024 * 1024, journal_bytes


async def test_a_command_no_queue_takes_is_set_aside_and_replays_once_a_queue_is_bound(bench: Bench) -> None:
    """Issue 27: it was sent every 5 s for ever; now tried a few times, then a dead letter naming
    its saga, replayable (its saga's journal proves it) once the participant's queue is bound."""
    await bench.serve(outbox_sweep_seconds=0.2)
    assert bench.channel is not None
    commands = await bench.channel.get_exchange(f"{bench.namespace}.commands")
    inventory = await bench.channel.declare_queue(f"{bench.namespace}.inventory", passive=True)
    await inventory.unbind(commands, routing_key="inventory.#")
    key = keys()
    saga_id = saga_id_for("order", key)
    await bench.place_order(key)

    [row] = await rows_where(bench, 1, reason="unroutable", correlation_id=saga_id)
    await inventory.bind(commands, routing_key="inventory.#")
    async with bench.api(actor="alice") as api:
        replayed = await api.post(f"/dead-letters/{row['id']}/replay")
    delivered = await next_on(inventory)
    await delivered.ack()

    assert (row["message_type"], row["exchange"]) == ("inventory.ReserveStock", f"{bench.namespace}.commands")
    assert "refused 5 times: no queue is bound" in row["detail"]
    assert replayed.status_code == 200, replayed.text
    assert (delivered.message_id, delivered.correlation_id) == (row["message_id"], saga_id)
    assert bench.store is not None
    assert [c for c in await bench.store.unsent(10_000) if c.saga_id == saga_id] == []
