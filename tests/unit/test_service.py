"""The service layer over the in-memory store: ``process_batch``, ``fire_due_deadlines``, and the
``WorkflowTestKit`` built on them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from orchestrator import Saga, step
from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.definitions import DEADLINE, Retry, Status
from orchestrator.core.engine import Deadline, Outcome, OutgoingCommand, reply_id_for, saga_id_for
from orchestrator.core.messages import Message, dump
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import (
    BuyerRefused,
    BuyerSigned,
    ChargePayment,
    DocumentsVoided,
    EscrowOpened,
    FundsReceived,
    FundsReturned,
    Line,
    OrderPlaced,
    OrderShipped,
    OutOfStock,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    ReleaseStock,
    ReserveStock,
    SellerSigned,
    ShipmentFailed,
    StockReleased,
    StockReserved,
)
from orchestrator.service.batch import Envelope, Verdict, fire_due_deadlines, process_batch
from orchestrator.service.store import Changes
from orchestrator.testing import WorkflowTestKit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REGISTRY = Registry(WORKFLOWS)
O1 = saga_id_for("order", "o-1")


def placed(order_id: str = "o-1") -> OrderPlaced:
    return OrderPlaced(order_id, "c-1", [Line("sku-1", 2)], 1250)


def opened(escrow_id: str = "e-1") -> EscrowOpened:
    return EscrowOpened(escrow_id, "b-1", "s-1", 90_000)


def envelope(
    message: Message, message_id: str, *, correlation_id: str | None = None, workflow: str | None = None
) -> Envelope:
    return Envelope(orjson.dumps(dump(message)), message.TYPE, message_id, correlation_id, workflow)


def answer(
    store: MemoryStore, message: Message, *, saga_id: str = O1, correlated: bool = False, index: int = 0
) -> Envelope:
    """``message`` as the participant's reply to the ``index``-th command the saga waits on: its
    message id the section 6 reply id (docs/protocol.md), correlated by id or else by its key."""
    command = store.sagas[saga_id].awaiting[index]["message_id"]
    cid = saga_id if correlated else None
    return envelope(message, reply_id_for(command, message.TYPE), correlation_id=cid)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


async def run(store: MemoryStore, *envelopes: Envelope, now: datetime = NOW) -> Any:
    return await process_batch(REGISTRY, store, envelopes, now)


# duplicates -------------------------------------------------------------------------------------------
async def test_a_duplicate_message_id_changes_nothing(store):
    first = await run(store, envelope(placed(), "m-1"))
    journal_before = list(store.journals[O1])
    saga_before = store.sagas[O1]
    outbox_before = dict(store.outbox)

    again = await run(store, envelope(placed(), "m-1"), now=NOW + timedelta(seconds=5))

    assert first.verdicts == [Verdict.ACCEPTED]
    assert again.verdicts == [Verdict.DUPLICATE]
    assert again.reasons == [None]
    assert again.decisions == [] and again.commands == []
    assert store.journals[O1] == journal_before
    assert store.sagas[O1] == saga_before
    assert store.outbox == outbox_before
    assert store.duplicate_counts == {"m-1": 1}


async def test_a_duplicate_in_the_same_batch_is_taken_once(store):
    await run(store, envelope(placed(), "m-1"))
    reserved = answer(store, StockReserved("o-1", "r-1"))

    result = await run(store, envelope(placed(), "m-1"), reserved, reserved)

    assert result.verdicts == [Verdict.DUPLICATE, Verdict.ACCEPTED, Verdict.DUPLICATE]
    assert [e.seq for e in store.journals[O1]] == [1, 2]
    assert store.sagas[O1].state == "charge"
    assert store.duplicate_counts == {"m-1": 1, reserved.message_id: 1}


async def test_the_same_start_twice_is_one_saga(store):
    first = await run(store, envelope(placed(), "m-1"))
    second = await run(store, envelope(placed(), "m-2"))

    assert first.verdicts == second.verdicts == [Verdict.ACCEPTED]
    assert list(store.sagas) == [O1]
    assert [c.type for c in first.commands] == ["inventory.ReserveStock"]
    assert second.commands == []
    journal = store.journals[O1]
    assert [(e.seq, e.message.message_id, e.decision["outcome"]) for e in journal] == [
        (1, "m-1", "started"),
        (2, "m-2", "ignored"),
    ]
    assert store.sagas[O1].state == "reserve"
    assert store.inbox == {"m-1": O1, "m-2": O1}


# poison -----------------------------------------------------------------------------------------------
def _raw(body: Any, type_name: str | None, message_id: str | None = "m-bad", **extra: Any) -> Envelope:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return Envelope(data, type_name, message_id, **extra)


POISON: list[tuple[str, Envelope, str]] = [
    ("not JSON", _raw(b"{order_id: o-9", "orders.OrderPlaced"), "body is not JSON"),
    ("not an object", _raw([1, 2], "orders.OrderPlaced"), "body is not a JSON object"),
    ("no type", _raw(dump(placed("o-9")), None), "message has no type property"),
    (
        "no message id",
        _raw(dump(placed("o-9")), "orders.OrderPlaced", None),
        "message has no message_id property",
    ),
    ("unknown type", _raw({"order_id": "o-9"}, "inventory.Teleported"), "no workflow takes messages of type"),
    (
        "unknown x-workflow",
        _raw(dump(placed("o-9")), "orders.OrderPlaced", workflow="billing"),
        "unknown workflow 'billing'",
    ),
    (
        "correlation id naming no saga",
        _raw(dump(StockReserved("o-9", "r")), "inventory.StockReserved", correlation_id="no-such-saga"),
        "correlation id 'no-such-saga' names no saga",
    ),
    (
        "key naming no saga",
        _raw(dump(StockReserved("o-9", "r")), "inventory.StockReserved"),
        "no order saga for order_id='o-9'",
    ),
    (
        "schema failure",
        _raw({"order_id": "o-9", "customer_id": "c"}, "orders.OrderPlaced"),
        "orders.OrderPlaced does not fit its schema: lines: Field required",
    ),
    (
        "start without its key",
        _raw(dump(placed("")), "orders.OrderPlaced"),
        "orders.OrderPlaced starts order but has no 'order_id'",
    ),
]


@pytest.mark.parametrize(("poison", "reason"), [p[1:] for p in POISON], ids=[p[0] for p in POISON])
async def test_poison_is_dead_lettered_and_the_rest_of_the_batch_goes_on(store, poison, reason):
    await run(store, envelope(placed(), "m-1"))
    o2 = envelope(placed("o-2"), "m-3")

    result = await run(store, o2, poison, answer(store, StockReserved("o-1", "r-1")))

    assert result.verdicts == [Verdict.ACCEPTED, Verdict.DEAD, Verdict.ACCEPTED]
    assert result.reasons[0] is None and result.reasons[2] is None
    assert result.reasons[1] is not None and result.reasons[1].startswith(reason)
    assert sorted(store.sagas) == sorted([O1, saga_id_for("order", "o-2")])
    assert store.sagas[O1].state == "charge"
    assert [c.type for c in result.commands] == ["inventory.ReserveStock", "payment.ChargePayment"]
    assert "m-bad" not in store.inbox
    assert saga_id_for("order", "o-9") not in store.journals


async def test_a_batch_of_only_poison_writes_nothing(store):
    result = await run(store, *(p[1] for p in POISON))

    assert result.verdicts == [Verdict.DEAD] * len(POISON)
    assert (store.sagas, store.journals, store.inbox, store.outbox) == ({}, {}, {}, {})


async def test_a_reply_correlated_to_a_saga_of_another_workflow_is_dead_lettered_not_journaled(store):
    """Issue 27: a message of a type the saga's workflow takes nowhere is journaled there only as
    a reply to one of its commands; this one answers none."""
    await run(store, envelope(opened(), "m-1"))
    escrow_id = saga_id_for("escrow", "e-1")

    result = await run(store, envelope(StockReserved("o-1", "r-1"), "m-2", correlation_id=escrow_id))

    assert result.verdicts == [Verdict.DEAD]
    assert result.refusals[0] is not None and result.refusals[0].reason == "not_awaited"
    assert result.refusals[0].detail.startswith(
        "inventory.StockReserved is not an event of workflow escrow; and it answers no command saga"
    )
    assert [e.seq for e in store.journals[escrow_id]] == [1]
    assert "m-2" not in store.inbox
    assert [d.reason for d in store.dead_letters] == ["not_awaited"]


# chaining ---------------------------------------------------------------------------------------------
async def test_messages_for_one_saga_in_one_batch_chain(store):
    """The escrow's buyer and seller sign in one batch: the second decision starts from the
    first's saga, and both are written."""
    e1 = saga_id_for("escrow", "e-1")
    await run(store, envelope(opened(), "m-1"))
    buyer = answer(store, BuyerSigned("e-1"), saga_id=e1, correlated=True)  # by correlation id
    seller = answer(store, SellerSigned("e-1"), saga_id=e1, index=1)  # by key

    result = await run(store, buyer, seller)

    assert result.verdicts == [Verdict.ACCEPTED] * 2
    assert [(d.previous_state, d.saga.state, d.saga.version) for d in result.decisions] == [
        ("awaiting_buyer", "awaiting_seller", 2),
        ("awaiting_seller", "awaiting_funds", 3),
    ]
    assert [c.type for c in result.commands] == ["bank.CollectFunds"]
    assert [e.seq for e in store.journals[e1]] == [1, 2, 3]
    assert store.sagas[e1] == result.decisions[-1].saga
    due = Deadline("awaiting_funds", NOW + timedelta(days=1))
    assert store.deadlines == {(e1, "deadline"): (due, 3)}
    assert store.inbox == {"m-1": e1, buyer.message_id: e1, seller.message_id: e1}


# fire_due_deadlines -------------------------------------------------------------------------------------
async def test_a_deadline_fires_only_once_due(store):
    await run(store, envelope(placed(), "m-1"))
    due = NOW + timedelta(seconds=30)

    early = await fire_due_deadlines(REGISTRY, store, due - timedelta(microseconds=1))
    assert early.decisions == []
    assert store.deadlines == {(O1, "deadline"): (Deadline("reserve", due), 1)}

    fired = await fire_due_deadlines(REGISTRY, store, due)
    (decision,) = fired.decisions
    assert decision.outcome is Outcome.MOVED
    assert (decision.saga.state, decision.saga.status) == ("compensated", Status.COMPENSATED)
    assert store.deadlines == {}
    entry = store.journals[O1][-1]
    assert (entry.seq, entry.recorded_at) == (2, due)
    assert (entry.message.type, entry.message.kind, entry.message.message_id) == (
        DEADLINE,
        "deadline",
        f"deadline:{O1}:1",
    )
    assert entry.message.payload == {"state": "reserve", "due_at": due.isoformat()}

    again = await fire_due_deadlines(REGISTRY, store, due + timedelta(hours=1))
    assert again.decisions == []


async def test_a_deadline_sends_the_compensation(store):
    await run(store, envelope(placed(), "m-1"))
    await run(store, answer(store, StockReserved("o-1", "r-1")))

    fired = await fire_due_deadlines(REGISTRY, store, NOW + timedelta(minutes=2))

    assert [(d.saga.state, d.saga.status) for d in fired.decisions] == [
        ("compensating_reserve", "compensating")
    ]
    assert [(c.type, c.payload) for c in fired.commands] == [("inventory.ReleaseStock", {"order_id": "o-1"})]
    assert fired.commands[0].message_id in store.outbox
    assert store.deadlines == {}  # compensating_reserve waits without a deadline


@pytest.mark.parametrize(
    ("replies", "stale_state"),
    [
        ([StockReserved("o-1", "r-1"), PaymentCharged("o-1", "ch-1")], "reserve"),  # moved on
        ([OutOfStock("o-1", "sku-1")], "reserve"),  # finished
    ],
    ids=["moved on", "finished"],
)
async def test_a_stale_deadline_is_dropped_without_firing(store, replies, stale_state):
    await run(store, envelope(placed(), "m-1"))
    for reply in replies:
        await run(store, answer(store, reply))
    saga_before = store.sagas[O1]
    journal_before = list(store.journals[O1])
    store.deadlines[(O1, "deadline")] = (Deadline(stale_state, NOW + timedelta(seconds=30)), 1)

    fired = await fire_due_deadlines(REGISTRY, store, NOW + timedelta(seconds=30))

    assert fired.decisions == [] and fired.commands == []
    assert store.sagas[O1] == saga_before
    assert store.journals[O1] == journal_before
    assert (O1, "deadline") not in store.deadlines


async def test_a_deadline_of_an_unknown_saga_is_dropped(store):
    store.deadlines[("ghost", "deadline")] = (Deadline("reserve", NOW), 1)

    fired = await fire_due_deadlines(REGISTRY, store, NOW)

    assert fired.decisions == []
    assert store.deadlines == {}


class LateRetryOrder(Saga, starts_on=OrderPlaced, key="order_id", name="late_retry"):
    """A charge whose retry falls due after its deadline, and a compensation that retries."""

    @step(done=StockReserved, failed=OutOfStock)
    def reserve(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @reserve.compensate(done=StockReleased, retry=Retry(every=timedelta(seconds=10)))
    def release(self, order: OrderPlaced) -> ReleaseStock:
        return ReleaseStock(order.order_id)

    @step(
        done=PaymentCharged,
        failed=PaymentDeclined,
        deadline=timedelta(seconds=20),
        retry=Retry(every=timedelta(seconds=30)),
    )
    def charge(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)


async def test_a_stale_retry_in_the_same_sweep_keeps_the_retry_its_deadline_set(store):
    """Both timers of the charge due in one sweep (the service was down): the deadline moves the
    saga to compensating_reserve and sets that state's retry; the charge's own retry row, stale
    now, must not remove it, or the release is never sent again."""
    registry = Registry([LateRetryOrder.workflow])
    saga_id = saga_id_for("late_retry", "o-1")
    await process_batch(registry, store, [envelope(placed(), "m-1")], NOW)
    reserved = answer(store, StockReserved("o-1", "r-1"), saga_id=saga_id)
    await process_batch(registry, store, [reserved], NOW)
    assert {kind: d.due_at - NOW for (_, kind), (d, _) in store.deadlines.items()} == {
        "deadline": timedelta(seconds=20),
        "retry": timedelta(seconds=30),
    }

    fired = await fire_due_deadlines(registry, store, NOW + timedelta(seconds=31))

    assert [(d.saga.state, d.outcome) for d in fired.decisions] == [("compensating_reserve", Outcome.MOVED)]
    [release] = fired.commands
    assert release.type == "inventory.ReleaseStock"
    version = store.sagas[saga_id].version
    assert store.deadlines == {
        (saga_id, "retry"): (
            Deadline("compensating_reserve", NOW + timedelta(seconds=41), "retry"),
            version,
        )
    }

    again = await fire_due_deadlines(registry, store, NOW + timedelta(seconds=41))

    assert [c.message_id for c in again.commands] == [release.message_id]  # sent again, same id
    assert store.sagas[saga_id].attempt == 1


async def test_a_timer_removal_never_takes_a_newer_timer_of_the_same_kind(store):
    """The store's half of it: removing a timer names the version it removes (or an older one)."""
    store.deadlines[(O1, "retry")] = (Deadline("compensating_reserve", NOW, "retry"), 3)
    stale = Changes()
    stale.deadlines[(O1, "retry")] = (None, 2)
    async with store.transaction() as tx:
        await tx.save(stale)
    assert (O1, "retry") in store.deadlines

    current = Changes()
    current.deadlines[(O1, "retry")] = (None, 3)
    async with store.transaction() as tx:
        await tx.save(current)
    assert store.deadlines == {}


async def test_parking_keeps_the_deadline_running(store):
    e1 = saga_id_for("escrow", "e-1")
    await run(store, envelope(opened(), "m-1"))
    await run(store, answer(store, SellerSigned("e-1"), saga_id=e1, index=1))
    assert store.sagas[e1].version == 2
    assert store.deadlines == {(e1, "deadline"): (Deadline("awaiting_buyer", NOW + timedelta(days=3)), 1)}

    fired = await fire_due_deadlines(REGISTRY, store, NOW + timedelta(days=3))

    (decision,) = fired.decisions
    assert (decision.saga.state, decision.saga.version) == ("expired_undo_1", 3)
    assert [c.type for c in fired.commands] == ["bank.ReturnFunds"]


# the test kit -----------------------------------------------------------------------------------------
@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    kit = WorkflowTestKit(*WORKFLOWS, now=NOW)
    yield kit
    kit.close()


def only(sent: list[OutgoingCommand], type_name: str) -> OutgoingCommand:
    (command,) = [c for c in sent if c.type == type_name]
    return command


def test_kit_advance_fires_a_deadline_at_its_due_time_only(kit):
    kit.publish(placed())
    assert kit.take_sent()[0].type == "inventory.ReserveStock"

    assert kit.advance(timedelta(seconds=29)) == []
    assert kit.saga("o-1").state == "reserve"
    assert kit.now == NOW + timedelta(seconds=29)

    (fired,) = kit.advance(timedelta(seconds=1))
    assert [d.saga.state for d in fired.decisions] == ["compensated"]
    assert kit.saga("o-1").status == Status.COMPENSATED
    assert kit.journal(kit.saga("o-1"))[-1].recorded_at == NOW + timedelta(seconds=30)
    assert kit.sent == []


def test_kit_advance_fires_deadlines_in_due_order_at_their_own_time(kit):
    kit.publish(placed("o-1"))
    kit.advance(timedelta(seconds=10))
    kit.publish(placed("o-2"))

    fired = kit.advance(timedelta(minutes=10))

    assert [d.saga.key for result in fired for d in result.decisions] == ["o-1", "o-2"]
    times = [kit.journal(kit.saga(k))[-1].recorded_at for k in ("o-1", "o-2")]
    assert times == [NOW + timedelta(seconds=30), NOW + timedelta(seconds=40)]
    assert kit.now == NOW + timedelta(minutes=10, seconds=10)


def test_kit_a_deadline_whose_saga_moved_on_does_not_fire(kit):
    kit.publish(placed())
    kit.advance(timedelta(seconds=20))
    kit.reply(only(kit.take_sent(), "inventory.ReserveStock"), StockReserved("o-1", "r-1"))
    assert kit.saga("o-1").state == "charge"

    assert kit.advance(timedelta(seconds=15)) == []  # the reserve deadline (t+30s) is gone
    assert kit.saga("o-1").state == "charge"
    assert len(kit.journal(kit.saga("o-1"))) == 2

    assert kit.advance(timedelta(seconds=104)) == []  # the charge deadline is due at t+140s
    (fired,) = kit.advance(timedelta(seconds=1))
    assert [d.saga.state for d in fired.decisions] == ["compensating_reserve"]
    assert [c.type for c in kit.sent] == ["payment.ChargePayment", "inventory.ReleaseStock"]


def test_kit_records_dead_letters(kit):
    result = kit.publish(StockReserved("o-404", "r-1"))

    assert result.verdicts == [Verdict.DEAD]
    assert [reason for _, reason in kit.dead] == ["no order saga for order_id='o-404'"]
    with pytest.raises(KeyError):
        kit.saga("o-404")


def test_kit_replay_gives_back_every_saga_after_a_mixed_scenario(kit):
    for order_id in ("o-1", "o-2", "o-3", "o-4", "o-5"):
        kit.publish(placed(order_id))
    for escrow_id in ("e-1", "e-2", "e-3", "e-4"):
        kit.publish(opened(escrow_id), workflow="escrow")

    def sent(type_name: str, key: str) -> OutgoingCommand:
        saga_id = kit.saga(key, "order" if key.startswith("o") else "escrow").id
        (command,) = [c for c in kit.sent if c.type == type_name and c.saga_id == saga_id]
        return command

    # o-1 completes; a reply arrives twice (same id) and a stale one arrives late.
    kit.reply(sent("inventory.ReserveStock", "o-1"), StockReserved("o-1", "r-1"))
    kit.reply(sent("inventory.ReserveStock", "o-1"), StockReserved("o-1", "r-1"))
    kit.reply(sent("payment.ChargePayment", "o-1"), PaymentCharged("o-1", "ch-1"))
    kit.reply(sent("shipping.ShipOrder", "o-1"), OrderShipped("o-1", "t-1"))
    kit.publish(StockReleased("o-1"))  # ignored: o-1 is finished
    # o-2: payment declined, stock released.
    kit.publish(StockReserved("o-2", "r-2"))
    kit.publish(PaymentDeclined("o-2", "insufficient funds"))
    kit.reply(sent("inventory.ReleaseStock", "o-2"), StockReleased("o-2"))
    # o-4: shipment fails, refunded, released.
    kit.publish(StockReserved("o-4", "r-4"))
    kit.publish(PaymentCharged("o-4", "ch-4"))
    kit.publish(ShipmentFailed("o-4", "no courier"))
    kit.publish(PaymentRefunded("o-4"))
    kit.publish(StockReleased("o-4"))
    # o-5: reserved, then the charge deadline passes below.
    kit.publish(StockReserved("o-5", "r-5"))
    kit.publish(OrderShipped("o-5", "t-5"))  # unexpected in charge: ignored
    # e-1: seller first (parked), then buyer, then funds.
    kit.publish(SellerSigned("e-1"))
    kit.publish(BuyerSigned("e-1"))
    kit.publish(BuyerSigned("e-1"))  # signed twice: ignored
    kit.publish(FundsReceived("e-1"))
    # e-2: buyer signs, the seller never does. e-3: seller signs early, the buyer never does.
    kit.publish(BuyerSigned("e-2"))
    kit.publish(SellerSigned("e-3"))
    # e-4: the buyer refuses.
    kit.publish(BuyerRefused("e-4", "no"))
    kit.publish(DocumentsVoided("e-4"))
    # poison on the way
    kit.publish(StockReserved("o-404", "r"))
    kit.deliver(Envelope(b"not json", "orders.OrderPlaced", "m-garbage"))

    kit.advance(timedelta(days=3, minutes=1))  # o-3 reserve, o-5 charge, e-2 and e-3 deadlines
    for escrow_id in ("e-2", "e-3"):  # each undo confirmed in turn
        kit.publish(FundsReturned(escrow_id))
        kit.publish(DocumentsVoided(escrow_id))
    kit.advance(timedelta(days=1))
    kit.publish(StockReleased("o-5"))

    outcomes = {
        (s.workflow, s.key): (s.state, str(s.status), len(s.parked)) for s in kit.store.sagas.values()
    }
    assert outcomes == {
        ("order", "o-1"): ("completed", "completed", 0),
        ("order", "o-2"): ("compensated", "compensated", 0),
        ("order", "o-3"): ("compensated", "compensated", 0),
        ("order", "o-4"): ("compensated", "compensated", 0),
        ("order", "o-5"): ("compensated", "compensated", 0),
        ("escrow", "e-1"): ("closed", "completed", 0),
        ("escrow", "e-2"): ("expired", "compensated", 0),
        ("escrow", "e-3"): ("expired", "compensated", 0),  # its early signature dropped on closing
        ("escrow", "e-4"): ("refused", "compensated", 0),
    }
    assert len(kit.dead) == 2
    [closing] = [e for e in kit.journal(kit.saga("e-3", "escrow")) if e.decision["dropped_parked"]]
    assert (closing.message.kind, closing.decision["to"]) == ("event", "expired")  # the last undo confirmed
    journal_kinds = {e.message.kind for s in kit.store.sagas.values() for e in kit.journal(s)}
    assert journal_kinds == {"event", "deadline", "retry"}  # the undos were re-sent meanwhile
    outcomes_seen = {e.decision["outcome"] for s in kit.store.sagas.values() for e in kit.journal(s)}
    assert outcomes_seen == {"started", "moved", "parked", "ignored", "retried"}

    for saga in kit.store.sagas.values():
        assert kit.replay_differences(saga) == [], saga.key
        assert [e.seq for e in kit.journal(saga)] == list(range(1, saga.version + 1))


def test_kit_replay_notices_a_row_that_differs_from_its_journal(kit):
    kit.publish(placed())
    saga = kit.saga("o-1")

    tampered = replace(saga, state="ship", data={**saga.data, "amount_cents": 1})

    assert kit.replay_differences(saga) == []
    assert [d.split(":")[0] for d in kit.replay_differences(tampered)] == ["state", "data"]
