"""Migrating sagas between releases (issue 13, item 3): a dry run writes nothing, ``apply`` moves
each saga with a journal entry that replay follows into the new release; a saga that cannot move
is reported and left, the others go on; a plan that fits no saga is refused up front."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.definitions import Status
from orchestrator.core.engine import saga_id_for
from orchestrator.core.messages import Message, dump
from orchestrator.core.migration import MIGRATE
from orchestrator.core.replay import verify
from orchestrator.core.routing import Registry
from orchestrator.examples import OrderSaga, escrow
from orchestrator.examples.contracts import (
    Line,
    OrderPlaced,
    PaymentCharged,
    PaymentDeclined,
    StockReleased,
    StockReserved,
)
from orchestrator.service.batch import Envelope, process_batch
from orchestrator.service.migrations import MigrationReport, migrate_sagas
from orchestrator.service.operations import BadRequest
from tests.releases.order_v2 import OrderSagaV2
from tests.replies import reply_envelope

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
LATER = NOW + timedelta(minutes=1)
V1, V2 = OrderSaga.workflow, OrderSagaV2.workflow
OLD = Registry([V1, escrow])
BOTH = Registry([V1, V2, escrow])


def envelope(message: Message, message_id: str, correlation_id: str | None = None) -> Envelope:
    return Envelope(orjson.dumps(dump(message)), message.TYPE, message_id, correlation_id)


async def parked(store: MemoryStore, key: str, *replies: Message) -> str:
    """An order of release 1, moved on by ``replies``; its saga id."""
    saga_id = saga_id_for("order", key)
    await process_batch(OLD, store, [envelope(OrderPlaced(key, "c-1", [Line("s", 1)], 100), f"p-{key}")], NOW)
    for reply in replies:
        await process_batch(OLD, store, [reply_envelope(store, reply, saga_id)], NOW)
    return saga_id


async def test_a_dry_run_writes_nothing_and_apply_moves_the_saga_on_the_new_release() -> None:
    store = MemoryStore()
    saga_id = await parked(store, "o-1", StockReserved("o-1", "r-1"))
    before = await store.records(saga_id)

    dry = await migrate_sagas(BOTH, store, "order", "1", "2", {"charge": "payment"}, actor="alice", now=LATER)
    assert (dry.applied, dry.moved, dry.refused) == (False, 1, 0)
    assert (dry.sagas[0].from_state, dry.sagas[0].to_state) == ("charge", "payment")
    assert await store.records(saga_id) == before

    done = await migrate_sagas(
        BOTH, store, "order", "1", "2", {"charge": "payment"}, actor="alice", now=LATER, apply=True
    )
    assert (done.applied, done.moved) == (True, 1)
    records = await store.records(saga_id)
    saga = records.saga
    assert saga is not None and (saga.release, saga.state, saga.status) == ("2", "payment", Status.RUNNING)
    assert saga.awaiting == before.saga.awaiting  # type: ignore[union-attr]  # nothing sent again
    entry = records.journal[-1]
    assert entry.message.type == MIGRATE and entry.message.actor == "alice"
    assert entry.decision["release"] == "2" and entry.decision["outcome"] == "migrated"
    assert [(t.kind, t.state, t.due_at) for t in records.timers] == [
        ("deadline", "payment", LATER + timedelta(minutes=2))
    ]
    assert records.outbox == before.outbox  # nothing new to send

    await process_batch(BOTH, store, [reply_envelope(store, PaymentCharged("o-1", "ch-1"), saga_id)], LATER)
    after = await store.records(saga_id)
    assert after.saga is not None and after.saga.state == "ship"
    assert verify(BOTH.workflows["order"], after, BOTH.releases_of("order")) == []
    without_old = Registry([V2, escrow])
    assert verify(without_old.workflows["order"], after, without_old.releases_of("order")) == [
        "journal not replayed: release 1 is not loaded"
    ]


async def test_a_saga_that_cannot_move_is_reported_and_the_others_move() -> None:
    store = MemoryStore()
    charging = await parked(store, "o-2", StockReserved("o-2", "r-2"))
    reserving = await parked(store, "o-3")
    report = await migrate_sagas(BOTH, store, "order", "1", "2", {}, actor="bob", now=LATER, apply=True)
    by_id = {s.saga_id: s for s in report.sagas}
    assert by_id[reserving].to_state == "reserve" and by_id[reserving].refused is None
    assert by_id[charging].refused is not None and "'charge' has no mapping" in by_id[charging].refused
    assert (await store.get_saga(charging)).release == "1"  # type: ignore[union-attr]
    assert (await store.get_saga(reserving)).release == "2"  # type: ignore[union-attr]


async def test_a_failed_saga_moves_and_stays_failed_for_an_operator() -> None:
    store = MemoryStore()
    saga_id = await parked(store, "o-4", StockReserved("o-4", "r-4"))
    saga = await store.get_saga(saga_id)
    assert saga is not None
    store.sagas[saga_id] = replace(saga, status=Status.FAILED, last_error="gone")
    report = await migrate_sagas(
        BOTH, store, "order", "1", "2", {"charge": "payment"}, actor="carol", now=LATER, apply=True
    )
    assert report.moved == 1
    moved = await store.get_saga(saga_id)
    assert moved is not None and (moved.state, moved.status, moved.release) == ("payment", Status.FAILED, "2")
    assert not (await store.records(saga_id)).timers


async def test_finished_sagas_do_not_move() -> None:
    store = MemoryStore()
    saga_id = await parked(
        store, "o-5", StockReserved("o-5", "r-5"), PaymentDeclined("o-5", "no"), StockReleased("o-5")
    )
    assert (await store.get_saga(saga_id)).status is Status.COMPENSATED  # type: ignore[union-attr]
    listed = await migrate_sagas(BOTH, store, "order", "1", "2", {}, actor="x", now=LATER, apply=True)
    assert listed.sagas == []  # not listed among the sagas to move
    named = await migrate_sagas(
        BOTH, store, "order", "1", "2", {}, actor="x", now=LATER, apply=True, saga_ids=[saga_id]
    )
    assert named.refused == 1 and "only sagas in flight or failed move" in (named.sagas[0].refused or "")
    assert (await store.get_saga(saga_id)).release == "1"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("to", "states", "message"),
    [
        ("3", {}, "release 3 of order is not loaded here"),
        ("2", {"charge": "charging"}, "'charging' is not a state of release 2"),
        ("2", {"charge": "completed"}, "'completed' is a final state"),
        ("2", {"paying": "payment"}, "'paying' is not a state of release 1"),
        ("1", {}, "the sagas are on release 1 already"),
    ],
)
async def test_a_plan_that_fits_no_saga_is_refused_before_any_saga_is_read(
    to: str, states: dict[str, str], message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        await migrate_sagas(BOTH, MemoryStore(), "order", "1", to, states, actor="x", now=LATER)


async def test_a_migration_goes_a_page_at_a_time_in_saga_id_order() -> None:
    """Issue 27: the dry run listed every saga in one answer; now at most ``limit`` a call."""
    store = MemoryStore()
    ids = sorted([await parked(store, f"o-{n}", StockReserved(f"o-{n}", "r")) for n in range(5)])

    async def page(**options: Any) -> MigrationReport:
        return await migrate_sagas(
            BOTH, store, "order", "1", "2", {"charge": "payment"}, actor="a", now=LATER, **options
        )

    first = await page(limit=2)
    second = await page(limit=2, after=first.next_after)
    last = await page(limit=2, after=second.next_after)
    applied = await page(limit=3, apply=True)
    rest = await page(limit=3, apply=True, after=applied.next_after)

    assert [s.saga_id for r in (first, second, last) for s in r.sagas] == ids
    assert (first.next_after, second.next_after, last.next_after) == (ids[1], ids[3], None)
    assert (applied.moved, applied.next_after, rest.moved, rest.next_after) == (3, ids[2], 2, None)
    assert [(await store.get_saga(i)).release for i in ids] == ["2"] * 5  # type: ignore[union-attr]
