"""Retention against real PostgreSQL: the archive round trip, tombstones on the hot path and over
REST, and the pruning of inbox rows, dead letters and tombstones by age (docs/retention.md)."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from orchestrator.adapters.metrics import Metrics
from orchestrator.adapters.postgres.queries import Queries
from orchestrator.adapters.postgres.retention import Pruner, prune
from orchestrator.adapters.postgres.store import PostgresStore
from orchestrator.core.engine import saga_id_for
from orchestrator.core.messages import Message, dump
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.api.app import ApiContext, create_app
from orchestrator.entrypoints.bootstrap import _pruner
from orchestrator.entrypoints.settings import Settings
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import (
    Line,
    OrderPlaced,
    OrderShipped,
    OutOfStock,
    PaymentCharged,
    StockReserved,
)
from orchestrator.service.batch import Envelope, Verdict, fire_due_deadlines, process_batch
from tests import replies
from tests.integration.conftest import ROOT, Bench, migrated_database

pytestmark = pytest.mark.integration

REGISTRY = Registry(WORKFLOWS)
FINISHED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def retention_database() -> Iterator[str]:
    """A database of its own: an archive takes every finished saga, whoever finished it."""
    with migrated_database("orchestrator_retention") as url:
        yield url


@pytest_asyncio.fixture
async def store(retention_database: str) -> AsyncIterator[PostgresStore]:
    made = PostgresStore.from_url(retention_database, pool_size=2)
    yield made
    await made.close()


def _event(message: Message, saga_id: str | None = None) -> Envelope:
    return Envelope(orjson.dumps(dump(message)), message.TYPE, f"m-{uuid.uuid4()}", saga_id)


def _placed(key: str) -> Envelope:
    return _event(OrderPlaced(key, "c-1", [Line("sku-1", 1)], 1000))


async def _take(store: PostgresStore, *envelopes: Envelope, now: datetime = FINISHED_AT) -> list[Verdict]:
    result = await process_batch(REGISTRY, store, list(envelopes), now)
    return result.verdicts


async def _completed_order(store: PostgresStore, key: str) -> str:
    saga_id = saga_id_for("order", key)
    await _take(store, _placed(key))
    await _take(store, await replies.answer(store, StockReserved(key, "r-1"), saga_id))
    await _take(store, await replies.answer(store, PaymentCharged(key, "ch-1"), saga_id))
    await _take(store, await replies.answer(store, OrderShipped(key, "t-1"), saga_id))
    return saga_id


async def _compensated_order(store: PostgresStore, key: str) -> str:
    saga_id = saga_id_for("order", key)
    await _take(store, _placed(key))
    await _take(store, await replies.answer(store, OutOfStock(key, "sku-1"), saga_id))
    return saga_id


async def _send_everything(store: PostgresStore) -> None:
    """The relay's part: every command confirmed, so its outbox row is gone."""
    await store.mark_sent([c.message_id for c in await store.unsent(10_000)])


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCHESTRATOR_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _count(store: PostgresStore, sql: str, *args: object) -> int:
    pool = await store.pool()
    value: int = await pool.fetchval(sql, *args)
    return value


async def test_an_archive_round_trip(store: PostgresStore, retention_database: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    completed = [await _completed_order(store, f"done-{run}-{i}") for i in range(3)]
    compensated = await _compensated_order(store, f"out-{run}")
    await _send_everything(store)
    in_flight_key = f"busy-{run}"
    await _take(store, _placed(in_flight_key))  # running, its command unsent: neither is archived
    unsent_key = f"unsent-{run}"
    unsent = await _compensated_order(store, unsent_key)  # finished, but ReleaseStock? no: none sent
    pool = await store.pool()
    await pool.execute(
        "INSERT INTO outbox (message_id, saga_id, workflow, message_type, payload, created_at)"
        " VALUES ($1, $2, 'order', 'inventory.ReleaseStock', '{}'::jsonb, $3)",
        f"held-{run}",
        unsent,
        FINISHED_AT,
    )
    archived = [*completed, compensated]
    journal_before = await _count(store, "SELECT count(*) FROM journal WHERE saga_id = ANY($1)", archived)

    target = tmp_path / "sagas.jsonl.gz"
    done = _cli(retention_database, "archive", "--finished-before", "2026-03-02", "--to", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        f"archived 4 sagas (1 compensated, 3 completed) with {journal_before} journal"
    )

    for table, column in (
        ("sagas", "id"),
        ("journal", "saga_id"),
        ("inbox", "saga_id"),
        ("deadlines", "saga_id"),
    ):
        assert await _count(store, f"SELECT count(*) FROM {table} WHERE {column} = ANY($1)", archived) == 0
    stones = await pool.fetch("SELECT * FROM tombstones WHERE saga_id = ANY($1) ORDER BY status", archived)
    assert [(s["status"], s["workflow"]) for s in stones] == [("compensated", "order")] + [
        ("completed", "order")
    ] * 3
    assert all(s["finished_at"] == FINISHED_AT and s["state"] in ("completed", "compensated") for s in stones)
    still = saga_id_for("order", in_flight_key)
    assert await _count(store, "SELECT count(*) FROM sagas WHERE id = ANY($1)", [still, unsent]) == 2
    assert await _count(store, "SELECT count(*) FROM inbox WHERE saga_id = $1", still) == 1

    # the archive holds every saga with its journal, and replays clean
    lines = [orjson.loads(line) for line in gzip.decompress(target.read_bytes()).splitlines()]
    assert lines[0]["format"] == "orchestrator-archive" and lines[-1] == {
        "end": True,
        "sagas": 4,
        "journal_entries": journal_before,
    }
    assert sorted(line["saga"]["id"] for line in lines[1:-1]) == sorted(archived)
    assert sum(len(line["journal"]) for line in lines[1:-1]) == journal_before
    verified = _cli(retention_database, "verify", "--archive", str(target))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified 4 archived sagas: 0 differ" in verified.stdout

    # with the workflow not loaded, nothing differs but nothing is verified either: exit 3
    other = _cli(
        retention_database, "verify", "--archive", str(target), "--workflows", "tests.unit.user_workflow"
    )
    assert other.returncode == 3, other.stdout + other.stderr
    assert "not verified 4 sagas whose workflow is not loaded: order (4)" in other.stdout

    # a line tampered with is reported, with its saga
    tampered_lines = list(lines)
    first = tampered_lines[1]
    tampered_lines[1] = {**first, "saga": {**first["saga"], "state": "shipping"}}
    tampered = tmp_path / "tampered.jsonl.gz"
    tampered.write_bytes(gzip.compress(b"".join(orjson.dumps(x) + b"\n" for x in tampered_lines)))
    found = _cli(retention_database, "verify", "--archive", str(tampered))
    assert found.returncode == 1
    assert f"{first['saga']['id']} (order {first['saga']['key']}), line 2:" in found.stdout
    assert "state" in found.stdout and "shipping" in found.stdout
    assert "verified 4 archived sagas: 1 differ" in found.stdout

    # a run cut short (no end record) and a file that exists already are said in one line
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b"".join(orjson.dumps(x) + b"\n" for x in lines[:-1])))
    assert "no end record" in _cli(retention_database, "verify", "--archive", str(cut)).stdout
    again = _cli(retention_database, "archive", "--finished-before", "2026-03-02", "--to", str(target))
    assert again.returncode == 1
    assert (
        again.stderr.strip()
        == f"orchestrator: archive: {target} exists already; an archive is never overwritten"
    )
    nowhere = tmp_path / "no-such-folder" / "a.gz"
    refused = _cli(retention_database, "archive", "--finished-before", "2026-03-02", "--to", str(nowhere))
    assert (refused.returncode, refused.stderr.strip()) == (
        1,
        f"orchestrator: archive: cannot write {nowhere}: No such file or directory",
    )


async def test_a_start_for_an_archived_saga_starts_nothing(
    store: PostgresStore, retention_database: str, tmp_path: Path
) -> None:
    key = f"late-{uuid.uuid4().hex[:8]}"
    saga_id = await _completed_order(store, key)
    await _send_everything(store)
    done = _cli(
        retention_database, "archive", "--finished-before", "2026-03-02", "--to", str(tmp_path / "a.gz")
    )
    assert done.returncode == 0, done.stderr

    # the start event again (a new message id, as a participant that sent it twice would), through the batch
    later = FINISHED_AT + timedelta(days=30)
    result = await process_batch(REGISTRY, store, [_placed(key)], later)
    assert result.verdicts == [Verdict.DUPLICATE]
    assert result.decisions == [] and result.commands == []
    assert await store.get_saga(saga_id) is None
    assert await _count(store, "SELECT count(*) FROM journal WHERE saga_id = $1", saga_id) == 0

    # a reply correlated to it is dead-lettered unknown_saga, saying it was archived
    result = await process_batch(REGISTRY, store, [_event(StockReserved(key, "r-2"), saga_id)], later)
    assert result.verdicts == [Verdict.DEAD]
    refusal = result.refusals[0]
    assert refusal is not None and refusal.reason == "unknown_saga"
    assert f"order saga {saga_id} (key {key!r}) finished completed and was archived at" in refusal.detail

    # POST /sagas for the key answers as for a saga that exists (200), saying it was archived
    context = ApiContext(
        REGISTRY, store, Queries(store.engine), replace(Settings(), api_token="t"), Metrics(process=False)
    )
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as api:
        answer = await api.post(
            "/sagas",
            headers={"Authorization": "Bearer t"},
            json={
                "workflow": "order",
                "key": key,
                "data": {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1},
            },
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["id"], body["status"], body["state"], body["timers"]) == (
        saga_id,
        "completed",
        "completed",
        [],
    )
    assert body["note"].startswith("archived at ") and "in the archive" in body["note"]
    assert await store.get_saga(saga_id) is None


async def test_prune_takes_what_outlived_its_lifetime_and_nothing_else(store: PostgresStore) -> None:
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    old = await _completed_order(store, f"old-{run}")  # finished at FINISHED_AT, long ago
    recent_key = f"recent-{run}"
    recent = saga_id_for("order", recent_key)
    await _take(store, _placed(recent_key), now=now - timedelta(days=1))
    await _take(
        store,
        await replies.answer(store, OutOfStock(recent_key, "sku-1"), recent),
        now=now - timedelta(days=1),
    )
    busy_key = f"busy-{run}"
    busy = saga_id_for("order", busy_key)
    await _take(store, _placed(busy_key), now=FINISHED_AT)  # in flight since long ago
    pool = await store.pool()
    for days, reason in ((40, "not_json"), (20, "no_type")):
        await pool.execute(
            "INSERT INTO dead_letters (dead_at, source, reason, detail, exchange, routing_key, properties,"
            " body, body_size) VALUES ($1, 'orchestrator', $2, $3, 'x', 'y', '{}'::jsonb, ''::bytea, 0)",
            now - timedelta(days=days),
            reason,
            f"prune-{run}",
        )
    for days, name in ((500, "ancient"), (100, "young")):
        await pool.execute(
            "INSERT INTO tombstones (saga_id, workflow, key, release, state, status, version,"
            " created_at, finished_at, archived_at)"
            " VALUES ($1, 'order', $2, '1', 'completed', 'completed', 4, $3, $3, $3)",
            f"{name}-{run}",
            name,
            now - timedelta(days=days),
        )
    inbox = "SELECT count(*) FROM inbox WHERE saga_id = $1"
    assert await _count(store, inbox, old) == 4

    report = await prune(
        pool,
        now,
        inbox_after=timedelta(days=7),
        dead_letters_after=timedelta(days=30),
        tombstones_after=timedelta(days=400),
    )

    assert await _count(store, inbox, old) == 0  # finished long ago
    assert await _count(store, inbox, recent) == 2  # finished yesterday: within the window
    assert await _count(store, inbox, busy) == 1  # in flight, however old: never
    assert report.inbox >= 4
    left = await pool.fetch("SELECT reason FROM dead_letters WHERE detail = $1", f"prune-{run}")
    assert [r["reason"] for r in left] == ["no_type"]
    stones = await pool.fetch("SELECT saga_id FROM tombstones WHERE saga_id LIKE $1", f"%-{run}")
    assert [s["saga_id"] for s in stones] == [f"young-{run}"]
    assert report.dead_letters >= 1 and report.tombstones >= 1
    assert await store.get_saga(old) is not None  # pruning the inbox leaves the saga and its journal


async def test_the_service_prunes_in_rounds_each_from_where_the_last_ended(store: PostgresStore) -> None:
    run = uuid.uuid4().hex[:8]
    first = await _completed_order(store, f"round1-{run}")
    pruner = Pruner(store.pool, 3600, timedelta(days=7), timedelta(days=30), timedelta(days=400))
    inbox = "SELECT count(*) FROM inbox WHERE saga_id = $1"

    await pruner.once(FINISHED_AT + timedelta(days=8))  # the saga finished 8 days before
    assert await _count(store, inbox, first) == 0
    assert pruner.inbox_until == FINISHED_AT + timedelta(days=1)

    # a saga that finished before the last round's limit is not read again: the next round starts there
    second = await _completed_order(store, f"round2-{run}")
    later = await _compensated_order(store, f"round2b-{run}")
    pool = await store.pool()
    await pool.execute(
        "UPDATE sagas SET updated_at = $2 WHERE id = $1", later, FINISHED_AT + timedelta(days=2)
    )
    await pruner.once(FINISHED_AT + timedelta(days=10))
    assert await _count(store, inbox, second) == 4  # behind the mark: left for `orchestrator prune`
    assert await _count(store, inbox, later) == 0
    assert pruner.rounds == 2

    service = _pruner(replace(Settings(), prune_interval_seconds=60), store)
    assert service is not None and service.interval == 60
    assert service.lifetimes == (timedelta(days=7), timedelta(days=30), timedelta(days=400))
    assert _pruner(replace(Settings(), prune_interval_seconds=0), store) is None


async def test_a_late_start_over_amqp_and_rest_for_an_archived_saga_starts_nothing(
    retention_database: str, tmp_path: Path
) -> None:
    """The real service: an order completes through the participants, is archived, and then its
    start event comes again (a producer's retry, a new message id) and POST /sagas names its key."""
    setup = Bench(f"test-{uuid.uuid4().hex[:8]}", retention_database, tmp_path)
    await setup.connect()
    setup.store = PostgresStore.from_url(retention_database, pool_size=2)
    try:
        await setup.serve()
        await setup.work("inventory", "payment", "shipping")
        key = f"amqp-{uuid.uuid4().hex[:8]}"
        await setup.place_order(key)
        saga = (await setup.finished("order", [key]))[key]
        assert saga.status == "completed"
        for _ in range(100):  # the relay deletes the last command's outbox row on its confirm
            if await _count(setup.store, "SELECT count(*) FROM outbox WHERE saga_id = $1", saga.id) == 0:
                break
            await asyncio.sleep(0.1)
        soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        # in a thread: the orchestrator in this event loop goes on meanwhile
        done = await asyncio.to_thread(
            _cli, retention_database, "archive", "--finished-before", soon, "--to", str(tmp_path / "a.gz")
        )
        assert done.returncode == 0, done.stderr
        assert await setup.saga("order", key) is None

        async with setup.api() as api:
            before = _duplicates((await api.get("/metrics")).text)
            await setup.place_order(key)
            for _ in range(100):
                if _duplicates((await api.get("/metrics")).text) > before:
                    break
                await asyncio.sleep(0.1)
            assert _duplicates((await api.get("/metrics")).text) == before + 1
            answer = await api.post(
                "/sagas",
                json={
                    "workflow": "order",
                    "key": key,
                    "data": {
                        "customer_id": "c-1",
                        "lines": [{"sku": "sku-1", "quantity": 1}],
                        "amount_cents": 5,
                    },
                },
            )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["id"], answer.json()["status"]) == (saga.id, "completed")
        assert answer.json()["note"].startswith("archived at ")
        assert await setup.saga("order", key) is None  # nothing started, by either
        assert await _count(setup.store, "SELECT count(*) FROM journal WHERE saga_id = $1", saga.id) == 0
    finally:
        await setup.cleanup()


def _duplicates(metrics: str) -> float:
    line = next(
        x for x in metrics.splitlines() if x.startswith('orchestrator_messages_in_total{verdict="duplicate"}')
    )
    return float(line.rsplit(" ", 1)[1])


async def test_a_failed_saga_is_archived_only_when_asked(
    store: PostgresStore, retention_database: str, tmp_path: Path
) -> None:
    key = f"failed-{uuid.uuid4().hex[:8]}"
    saga_id = await _compensated_order(store, key)
    await _send_everything(store)
    pool = await store.pool()
    await pool.execute("UPDATE sagas SET status = 'failed' WHERE id = $1", saga_id)  # as if for an operator
    finished_before = ["--finished-before", "2026-03-02"]

    kept = _cli(retention_database, "archive", *finished_before, "--to", str(tmp_path / "a.gz"))
    assert kept.returncode == 0, kept.stderr
    assert await store.get_saga(saga_id) is not None

    asked = _cli(
        retention_database, "archive", *finished_before, "--include-failed", "--to", str(tmp_path / "b.gz")
    )
    assert asked.returncode == 0, asked.stderr
    assert "1 failed" in asked.stdout
    assert await store.get_saga(saga_id) is None
    assert await pool.fetchval("SELECT status FROM tombstones WHERE saga_id = $1", saga_id) == "failed"


async def _timed_out_order(store: PostgresStore, key: str, placed_at: datetime) -> str:
    """An order whose stock never answered: its reservation given up on at its deadline, the saga
    compensated, with ``reserve`` timed out: a late StockReserved must still be undone."""
    saga_id = saga_id_for("order", key)
    await _take(store, _placed(key), now=placed_at)
    fired = await fire_due_deadlines(REGISTRY, store, placed_at + timedelta(seconds=31))
    assert saga_id in {d.saga.id for d in fired.decisions}
    saga = await store.get_saga(saga_id)
    assert saga is not None and saga.status == "compensated" and saga.timed_out == ("reserve",)
    return saga_id


async def test_a_saga_that_may_still_undo_a_late_success_is_archived_only_after_the_window(
    store: PostgresStore, retention_database: str, tmp_path: Path
) -> None:
    """Issue 27: archived at once, the late success would be dead-lettered unknown_saga, never undone."""
    now = datetime.now(UTC)
    key = f"late-{uuid.uuid4().hex[:8]}"
    recent = await _timed_out_order(store, key, now - timedelta(days=2))
    old = await _timed_out_order(store, f"late-{uuid.uuid4().hex[:8]}", now - timedelta(days=40))
    await _send_everything(store)

    archived = _cli(
        retention_database,
        "archive",
        "--finished-before",
        (now - timedelta(days=1)).isoformat(),
        "--to",
        str(tmp_path / "late.gz"),
    )

    assert archived.returncode == 0, archived.stderr
    assert await store.get_saga(recent) is not None  # within 30 days of its finish: kept
    assert await store.get_saga(old) is None
    late = await process_batch(
        REGISTRY, store, [await replies.answer(store, StockReserved(key, "r-1"), recent)], now
    )
    assert late.verdicts == [Verdict.ACCEPTED]  # its late success is still the saga's to undo
    assert [c.type for c in late.commands] == ["inventory.ReleaseStock"]


async def _taken_between_sagas(registry: Registry, store: PostgresStore, envelope: Envelope) -> list[Any]:
    """Take one message; what it sends to another saga (the test delivers it, as the queue would)."""
    result = await process_batch(registry, store, [envelope], FINISHED_AT)
    assert result.verdicts == [Verdict.ACCEPTED], result.reasons
    return [c for c in result.commands if c.route is not None]


def internal(command: Any, **routing: Any) -> Envelope:
    """A message between sagas as the orchestrator's queue hands it over."""
    return Envelope(orjson.dumps(command.payload), command.type, command.message_id, **routing)


async def _child_reserved(store: PostgresStore, registry: Registry, key: str) -> None:
    """A shop order charged, its fulfilment (a child saga) started and its stock reserved."""
    from orchestrator.examples import shop
    from orchestrator.examples.contracts import StockReserved

    parent, child = saga_id_for("shop_order", key), saga_id_for("fulfilment", key)
    await _taken_between_sagas(
        registry, store, _event(shop.ShopOrderPlaced(key, "c-1", [Line("sku-1", 1)], 1000))
    )
    charged = await replies.answer(store, PaymentCharged(key, "ch-1"), parent)
    (start,) = await _taken_between_sagas(registry, store, charged)
    await _taken_between_sagas(registry, store, internal(start, workflow="fulfilment", parent=parent))
    await _taken_between_sagas(registry, store, await replies.answer(store, StockReserved(key, "r-1"), child))


async def test_a_child_saga_is_archived_only_after_its_parent(
    store: PostgresStore, retention_database: str, tmp_path: Path
) -> None:
    """A parent may compensate (reopen) its completed child as long as it exists: the child is
    kept while its parent is, finished or not."""
    from orchestrator.examples import shop
    from orchestrator.examples.contracts import OrderShipped

    registry = Registry(shop.WORKFLOWS)
    key = f"child-{uuid.uuid4().hex[:8]}"
    parent, child = saga_id_for("shop_order", key), saga_id_for("fulfilment", key)

    async def take(envelope: Envelope) -> list[Any]:
        return await _taken_between_sagas(registry, store, envelope)

    await _child_reserved(store, registry, key)
    (told,) = await take(await replies.answer(store, OrderShipped(key, "t-1"), child))
    await take(internal(told, correlation_id=parent))
    await _send_everything(store)
    assert (await store.get_saga(child)).status == "completed"  # type: ignore[union-attr]
    assert (await store.get_saga(parent)).state == "invoice"  # type: ignore[union-attr]

    before = (FINISHED_AT + timedelta(days=1)).isoformat()
    first = _cli(retention_database, "archive", "--finished-before", before, "--to", str(tmp_path / "1.gz"))
    assert first.returncode == 0, first.stderr
    assert await store.get_saga(child) is not None  # its parent may still compensate it
    await take(await replies.answer(store, shop.InvoiceSent(key), parent))
    await _send_everything(store)
    second = _cli(retention_database, "archive", "--finished-before", before, "--to", str(tmp_path / "2.gz"))
    assert second.returncode == 0, second.stderr
    assert await store.get_saga(parent) is None and await store.get_saga(child) is None


async def test_a_parent_is_kept_while_its_child_compensates(
    store: PostgresStore, retention_database: str, tmp_path: Path
) -> None:
    """A child's outcome is for its parent: a parent compensated before its child is kept until
    the child is done, then both go."""
    from orchestrator.examples import shop
    from orchestrator.examples.contracts import PaymentRefunded, StockReleased

    registry = Registry(shop.WORKFLOWS)
    key = f"kept-{uuid.uuid4().hex[:8]}"
    parent, child = saga_id_for("shop_order", key), saga_id_for("fulfilment", key)

    async def take(envelope: Envelope) -> list[Any]:
        return await _taken_between_sagas(registry, store, envelope)

    await _child_reserved(store, registry, key)
    (cancel,) = await take(_event(shop.ShopOrderCancelled(key)))  # the customer's, mid-fulfilment
    await take(internal(cancel, correlation_id=child))
    await take(await replies.answer(store, PaymentRefunded(key), parent))
    await _send_everything(store)
    assert (await store.get_saga(parent)).status == "compensated"  # type: ignore[union-attr]
    assert (await store.get_saga(child)).status == "compensating"  # type: ignore[union-attr]

    before = (FINISHED_AT + timedelta(days=1)).isoformat()
    first = _cli(retention_database, "archive", "--finished-before", before, "--to", str(tmp_path / "k1.gz"))
    assert first.returncode == 0, first.stderr
    assert await store.get_saga(parent) is not None  # its child still compensates
    (told,) = await take(await replies.answer(store, StockReleased(key), child))
    await take(internal(told, correlation_id=parent))
    await _send_everything(store)
    second = _cli(retention_database, "archive", "--finished-before", before, "--to", str(tmp_path / "k2.gz"))
    assert second.returncode == 0, second.stderr
    assert await store.get_saga(parent) is None and await store.get_saga(child) is None
