"""``decide`` on the bundled order (step sequence) and escrow (free state machine) workflows.

Every test feeds real events through the pure engine and asserts the decision as data: the
state and status reached, the commands sent (types and payloads), the deadline set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.core.definitions import DEADLINE, FAIL, RETRY, Status, Workflow
from orchestrator.core.engine import (
    Deadline,
    Decision,
    Incoming,
    Outcome,
    SagaSnapshot,
    command_message_id,
    decide,
    saga_id_for,
)
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.messages import Command, Event
from orchestrator.examples import OrderSaga, escrow
from orchestrator.examples.contracts import EscrowOpened, FundsReceived

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

ORDER = CompiledWorkflow(OrderSaga.workflow)
ESCROW = CompiledWorkflow(escrow)

ORDER_ID = "o-1"
ESCROW_ID = "e-1"

ORDER_PLACED = {
    "order_id": ORDER_ID,
    "customer_id": "c-1",
    "lines": [{"sku": "sku-1", "quantity": 2}],
    "amount_cents": 1250,
}
ESCROW_OPENED = {"escrow_id": ESCROW_ID, "buyer_id": "b-1", "seller_id": "s-1", "amount_cents": 90_000}

#: A valid payload for every event type of the two examples.
PAYLOADS: dict[str, dict[str, Any]] = {
    "orders.OrderPlaced": ORDER_PLACED,
    "inventory.StockReserved": {"order_id": ORDER_ID, "reservation_id": "r-1"},
    "inventory.OutOfStock": {"order_id": ORDER_ID, "sku": "sku-1"},
    "inventory.StockReleased": {"order_id": ORDER_ID},
    "payment.PaymentCharged": {"order_id": ORDER_ID, "charge_id": "ch-1"},
    "payment.PaymentDeclined": {"order_id": ORDER_ID, "reason": "insufficient funds"},
    "payment.PaymentRefunded": {"order_id": ORDER_ID},
    "shipping.OrderShipped": {"order_id": ORDER_ID, "tracking_id": "t-1"},
    "shipping.ShipmentFailed": {"order_id": ORDER_ID, "reason": "no courier"},
    "escrow.EscrowOpened": ESCROW_OPENED,
    "buyer.BuyerSigned": {"escrow_id": ESCROW_ID},
    "buyer.BuyerRefused": {"escrow_id": ESCROW_ID, "reason": "changed my mind"},
    "seller.SellerSigned": {"escrow_id": ESCROW_ID},
    "bank.FundsReceived": {"escrow_id": ESCROW_ID},
    "bank.FundsDeclined": {"escrow_id": ESCROW_ID, "reason": "card expired"},
    "bank.FundsReturned": {"escrow_id": ESCROW_ID},
    "seller.DocumentsVoided": {"escrow_id": ESCROW_ID},
}


def incoming(type_name: str, message_id: str | None = None, state: str = "") -> Incoming:
    """An event of ``type_name`` with its example payload; a deadline when ``type_name`` is DEADLINE."""
    if type_name == DEADLINE:
        payload = {"state": state, "due_at": NOW.isoformat()}
        return Incoming(DEADLINE, message_id or f"deadline:{state}", payload, kind="deadline")
    return Incoming(type_name, message_id or f"m-{type_name}", PAYLOADS[type_name])


def start(compiled: CompiledWorkflow) -> Decision:
    return decide(compiled, None, incoming(compiled.workflow.starts_on.TYPE), NOW)


def drive(compiled: CompiledWorkflow, events: Sequence[str]) -> SagaSnapshot:
    """Start a saga and feed it ``events`` in order; every one of them must move it."""
    saga = start(compiled).saga
    for index, type_name in enumerate(events):
        decision = decide(compiled, saga, incoming(type_name, f"m-{index}", saga.state), NOW)
        assert decision.outcome is Outcome.MOVED, (type_name, decision)
        saga = decision.saga
    return saga


def types(decision: Decision) -> list[str]:
    return [c.type for c in decision.commands]


def payloads(decision: Decision) -> list[Mapping[str, Any]]:
    return [c.payload for c in decision.commands]


# How to reach each non-final state from a fresh saga.
ORDER_PATHS = {
    "reserve": [],
    "charge": ["inventory.StockReserved"],
    "ship": ["inventory.StockReserved", "payment.PaymentCharged"],
    "compensating_reserve": ["inventory.StockReserved", "payment.PaymentDeclined"],
    "compensating_charge": [
        "inventory.StockReserved",
        "payment.PaymentCharged",
        "shipping.ShipmentFailed",
    ],
}
ESCROW_PATHS = {
    "awaiting_buyer": [],
    "awaiting_seller": ["buyer.BuyerSigned"],
    "awaiting_funds": ["buyer.BuyerSigned", "seller.SellerSigned"],
    "refused_undo_1": ["buyer.BuyerRefused"],
    "expired_undo_1": ["buyer.BuyerSigned", "seller.SellerSigned", "bank.FundsDeclined"],
    "expired_undo_2": [
        "buyer.BuyerSigned",
        "seller.SellerSigned",
        "bank.FundsDeclined",
        "bank.FundsReturned",
    ],
}


# start ---------------------------------------------------------------------------------------------
def test_order_start_creates_the_saga_in_its_first_state():
    decision = start(ORDER)

    saga = decision.saga
    assert decision.outcome is Outcome.STARTED
    assert decision.previous_state is None
    assert saga.id == saga_id_for("order", ORDER_ID)
    assert (saga.workflow, saga.key, saga.state, saga.status, saga.version) == (
        "order",
        ORDER_ID,
        "reserve",
        Status.RUNNING,
        1,
    )
    assert saga.data == ORDER_PLACED
    assert saga.parked == ()
    assert saga.last_error is None
    assert saga.created_at == saga.updated_at == NOW
    assert types(decision) == ["inventory.ReserveStock"]
    assert payloads(decision) == [{"order_id": ORDER_ID, "lines": [{"sku": "sku-1", "quantity": 2}]}]
    assert decision.commands[0].saga_id == saga.id
    assert decision.commands[0].workflow == "order"
    assert decision.deadline_changed
    assert decision.deadline == Deadline("reserve", NOW + timedelta(seconds=30))


def test_escrow_start_asks_both_parties_to_sign():
    decision = start(ESCROW)

    assert decision.outcome is Outcome.STARTED
    assert (decision.saga.state, decision.saga.status, decision.saga.version) == (
        "awaiting_buyer",
        Status.RUNNING,
        1,
    )
    assert decision.saga.id == saga_id_for("escrow", ESCROW_ID)
    assert types(decision) == ["buyer.RequestSignature", "seller.RequestSignature"]
    assert payloads(decision) == [{"escrow_id": ESCROW_ID, "amount_cents": 90_000}, {"escrow_id": ESCROW_ID}]
    assert decision.deadline == Deadline("awaiting_buyer", NOW + timedelta(days=3))


# every reply ---------------------------------------------------------------------------------------
ORDER_MOVES = [
    # (state, event type) -> (dest, status, command types)
    ("reserve", "inventory.StockReserved", "charge", Status.RUNNING, ["payment.ChargePayment"]),
    ("reserve", "inventory.OutOfStock", "compensated", Status.COMPENSATED, []),
    ("reserve", DEADLINE, "compensated", Status.COMPENSATED, []),
    ("charge", "payment.PaymentCharged", "ship", Status.RUNNING, ["shipping.ShipOrder"]),
    (
        "charge",
        "payment.PaymentDeclined",
        "compensating_reserve",
        Status.COMPENSATING,
        ["inventory.ReleaseStock"],
    ),
    ("charge", DEADLINE, "compensating_reserve", Status.COMPENSATING, ["inventory.ReleaseStock"]),
    ("ship", "shipping.OrderShipped", "completed", Status.COMPLETED, []),
    (
        "ship",
        "shipping.ShipmentFailed",
        "compensating_charge",
        Status.COMPENSATING,
        ["payment.RefundPayment"],
    ),
    ("ship", DEADLINE, "compensating_charge", Status.COMPENSATING, ["payment.RefundPayment"]),
    (
        "compensating_charge",
        "payment.PaymentRefunded",
        "compensating_reserve",
        Status.COMPENSATING,
        ["inventory.ReleaseStock"],
    ),
    ("compensating_reserve", "inventory.StockReleased", "compensated", Status.COMPENSATED, []),
]

ESCROW_MOVES = [
    ("awaiting_buyer", "buyer.BuyerSigned", "awaiting_seller", Status.RUNNING, []),
    ("awaiting_buyer", "buyer.BuyerRefused", "refused_undo_1", Status.COMPENSATING, ["seller.VoidDocuments"]),
    ("awaiting_buyer", DEADLINE, "expired_undo_1", Status.COMPENSATING, ["bank.ReturnFunds"]),
    ("awaiting_seller", "seller.SellerSigned", "awaiting_funds", Status.RUNNING, ["bank.CollectFunds"]),
    (
        "awaiting_seller",
        "buyer.BuyerRefused",
        "refused_undo_1",
        Status.COMPENSATING,
        ["seller.VoidDocuments"],
    ),
    ("awaiting_seller", DEADLINE, "expired_undo_1", Status.COMPENSATING, ["bank.ReturnFunds"]),
    ("awaiting_funds", "bank.FundsReceived", "closed", Status.COMPLETED, ["bank.ReleaseFunds"]),
    ("awaiting_funds", "bank.FundsDeclined", "expired_undo_1", Status.COMPENSATING, ["bank.ReturnFunds"]),
    ("awaiting_funds", DEADLINE, "expired_undo_1", Status.COMPENSATING, ["bank.ReturnFunds"]),
    # the final states' undos: each waits for its reply, the last one ends the escrow
    ("refused_undo_1", "seller.DocumentsVoided", "refused", Status.COMPENSATED, []),
    ("refused_undo_1", DEADLINE, "refused_failed", Status.FAILED, []),
    ("expired_undo_1", "bank.FundsReturned", "expired_undo_2", Status.COMPENSATING, ["seller.VoidDocuments"]),
    ("expired_undo_1", DEADLINE, "expired_failed", Status.FAILED, []),
    ("expired_undo_2", "seller.DocumentsVoided", "expired", Status.COMPENSATED, []),
    ("expired_undo_2", DEADLINE, "expired_failed", Status.FAILED, []),
]


def _check_move(
    compiled: CompiledWorkflow,
    paths: Mapping[str, list[str]],
    state: str,
    event: str,
    dest: str,
    status: Status,
    command_types: list[str],
) -> None:
    saga = drive(compiled, paths[state])
    assert saga.state == state

    decision = decide(compiled, saga, incoming(event, "m-reply", state), NOW)

    assert decision.outcome is Outcome.MOVED
    assert decision.previous_state == state
    assert (decision.saga.state, decision.saga.status) == (dest, status)
    assert decision.saga.version == saga.version + 1
    assert decision.saga.updated_at == NOW
    assert types(decision) == command_types
    spec = compiled.workflow.states[dest]
    expected_deadline = Deadline(dest, NOW + spec.deadline) if spec.deadline else None
    assert decision.deadline_changed
    assert decision.deadline == expected_deadline


@pytest.mark.parametrize(
    ("state", "event", "dest", "status", "command_types"),
    ORDER_MOVES,
    ids=[f"{m[0]}--{m[1]}" for m in ORDER_MOVES],
)
def test_order_moves(state, event, dest, status, command_types):
    _check_move(ORDER, ORDER_PATHS, state, event, dest, status, command_types)


@pytest.mark.parametrize(
    ("state", "event", "dest", "status", "command_types"),
    ESCROW_MOVES,
    ids=[f"{m[0]}--{m[1]}" for m in ESCROW_MOVES],
)
def test_escrow_moves(state, event, dest, status, command_types):
    _check_move(ESCROW, ESCROW_PATHS, state, event, dest, status, command_types)


def test_reply_payload_is_merged_into_the_saga_data():
    saga = drive(ORDER, ["inventory.StockReserved"])

    assert saga.data == {**ORDER_PLACED, "reservation_id": "r-1"}


def test_commands_are_built_from_the_saga_data():
    charged = decide(ORDER, drive(ORDER, []), incoming("inventory.StockReserved"), NOW)
    released = decide(
        ESCROW, drive(ESCROW, ESCROW_PATHS["awaiting_funds"]), incoming(FundsReceived.TYPE), NOW
    )

    assert payloads(charged) == [{"order_id": ORDER_ID, "customer_id": "c-1", "amount_cents": 1250}]
    assert payloads(released) == [{"escrow_id": ESCROW_ID, "seller_id": "s-1", "amount_cents": 90_000}]


# compensation ----------------------------------------------------------------------------------------
def test_charge_declined_releases_the_stock():
    saga = drive(ORDER, ["inventory.StockReserved"])

    decision = decide(ORDER, saga, incoming("payment.PaymentDeclined"), NOW)

    assert (decision.saga.state, decision.saga.status) == ("compensating_reserve", Status.COMPENSATING)
    assert types(decision) == ["inventory.ReleaseStock"]
    assert payloads(decision) == [{"order_id": ORDER_ID}]
    assert decision.deadline is None


def test_shipment_failure_compensates_newest_first_one_at_a_time():
    saga = drive(ORDER, ["inventory.StockReserved", "payment.PaymentCharged"])

    failed = decide(ORDER, saga, incoming("shipping.ShipmentFailed"), NOW)
    assert (failed.saga.state, failed.saga.status) == ("compensating_charge", Status.COMPENSATING)
    assert types(failed) == ["payment.RefundPayment"]  # the stock is not released yet

    refunded = decide(ORDER, failed.saga, incoming("payment.PaymentRefunded"), NOW)
    assert (refunded.saga.state, refunded.saga.status) == ("compensating_reserve", Status.COMPENSATING)
    assert types(refunded) == ["inventory.ReleaseStock"]

    released = decide(ORDER, refunded.saga, incoming("inventory.StockReleased"), NOW)
    assert (released.saga.state, released.saga.status) == ("compensated", Status.COMPENSATED)
    assert released.commands == ()
    assert released.saga.finished
    assert released.saga.version == saga.version + 3


def test_out_of_stock_at_the_first_step_has_nothing_to_undo():
    decision = decide(ORDER, drive(ORDER, []), incoming("inventory.OutOfStock"), NOW)

    assert decision.outcome is Outcome.MOVED
    assert (decision.saga.state, decision.saga.status) == ("compensated", Status.COMPENSATED)
    assert decision.commands == ()
    assert decision.deadline_changed
    assert decision.deadline is None


# command ids ----------------------------------------------------------------------------------------
def test_command_message_ids_are_deterministic():
    first = start(ESCROW)
    again = start(ESCROW)

    ids = [c.message_id for c in first.commands]
    assert ids == [c.message_id for c in again.commands]
    assert len(set(ids)) == 2
    assert ids == [command_message_id(first.saga.id, 1, 0), command_message_id(first.saga.id, 1, 1)]


def test_command_message_ids_differ_between_versions():
    saga = drive(ORDER, ["inventory.StockReserved"])
    later = replace(saga, version=saga.version + 5)

    now_ids = [c.message_id for c in decide(ORDER, saga, incoming("payment.PaymentDeclined"), NOW).commands]
    later_ids = [
        c.message_id for c in decide(ORDER, later, incoming("payment.PaymentDeclined"), NOW).commands
    ]

    assert len(now_ids) == len(later_ids) == 1
    assert now_ids != later_ids
    assert now_ids == [command_message_id(saga.id, saga.version + 1, 0)]


def test_command_message_ids_differ_between_sagas():
    other = {**ORDER_PLACED, "order_id": "o-2"}
    one = start(ORDER)
    two = decide(ORDER, None, Incoming("orders.OrderPlaced", "m-2", other), NOW)

    assert one.saga.id != two.saga.id
    assert one.commands[0].message_id != two.commands[0].message_id


# events that move nothing ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("compiled", "path", "final_state"),
    [
        (ORDER, ["inventory.StockReserved", "payment.PaymentCharged", "shipping.OrderShipped"], "completed"),
        (ORDER, ["inventory.OutOfStock"], "compensated"),
        (ESCROW, ["buyer.BuyerRefused", "seller.DocumentsVoided"], "refused"),
    ],
)
@pytest.mark.parametrize("event", ["inventory.StockReserved", "buyer.BuyerSigned", DEADLINE])
def test_a_finished_saga_ignores_events(compiled, path, final_state, event):
    saga = drive(compiled, path)
    assert saga.state == final_state and saga.finished

    decision = decide(compiled, saga, incoming(event, "m-late", final_state), NOW + timedelta(hours=1))

    assert decision.outcome is Outcome.IGNORED
    assert decision.saga == replace(saga, version=saga.version + 1, updated_at=NOW + timedelta(hours=1))
    assert decision.commands == ()
    assert not decision.deadline_changed
    assert decision.reason == f"saga is already {saga.status}"


@pytest.mark.parametrize(
    ("compiled", "state", "event"),
    [
        (ORDER, "charge", "inventory.StockReleased"),
        (ORDER, "charge", "shipping.OrderShipped"),
        (ORDER, "reserve", "orders.OrderPlaced"),  # the same start again
        (ORDER, "compensating_reserve", DEADLINE),  # no deadline is set there
        (ESCROW, "awaiting_buyer", "bank.FundsReceived"),
        (ESCROW, "awaiting_funds", "seller.SellerSigned"),
    ],
)
def test_unexpected_events_are_ignored_and_recorded(compiled, state, event):
    paths = ORDER_PATHS if compiled is ORDER else ESCROW_PATHS
    saga = drive(compiled, paths[state])

    decision = decide(compiled, saga, incoming(event, "m-odd", state), NOW)

    assert decision.outcome is Outcome.IGNORED
    assert decision.saga == replace(saga, version=saga.version + 1, updated_at=NOW)  # data untouched
    assert decision.commands == ()
    assert not decision.deadline_changed
    assert decision.reason == f"{event} is not expected in {state}"
    assert decision.summary() == {
        "outcome": "ignored",
        "from": state,
        "to": state,
        "status": str(saga.status),
        "commands": [],
        "deadline": None,
        "retry": None,
        "reason": decision.reason,
        "applied_parked": [],
        "dropped_parked": [],
        "merged": [],
        "operators": 4,
    }


def test_fail_policy_fails_the_saga():
    workflow = Workflow("strict", starts_on=EscrowOpened, key="escrow_id")
    workflow.state("waiting")
    workflow.state("done", final=True)
    workflow.on(FundsReceived, source="waiting", then=FAIL)
    compiled = CompiledWorkflow(workflow)
    saga = decide(compiled, None, incoming("escrow.EscrowOpened"), NOW).saga

    decision = decide(compiled, saga, incoming("bank.FundsReceived"), NOW)

    assert decision.outcome is Outcome.FAILED
    assert (decision.saga.state, decision.saga.status) == ("waiting", Status.FAILED)
    assert decision.saga.last_error == "bank.FundsReceived is not allowed in waiting"
    assert decision.commands == ()


# escrow specifics -------------------------------------------------------------------------------------
def test_seller_signing_first_is_parked_then_applied_after_the_buyer():
    opened = start(ESCROW).saga

    parked = decide(ESCROW, opened, incoming("seller.SellerSigned", "m-seller"), NOW)
    assert parked.outcome is Outcome.PARKED
    assert (parked.saga.state, parked.saga.version) == ("awaiting_buyer", 2)
    assert parked.saga.parked == (
        {
            "type": "seller.SellerSigned",
            "message_id": "m-seller",
            "payload": {"escrow_id": ESCROW_ID},
            "kind": "event",
            "actor": None,
        },
    )
    assert parked.commands == ()
    assert not parked.deadline_changed  # the buyer's deadline still runs

    later = NOW + timedelta(hours=2)
    signed = decide(ESCROW, parked.saga, incoming("buyer.BuyerSigned", "m-buyer"), later)
    assert signed.outcome is Outcome.MOVED
    assert signed.previous_state == "awaiting_buyer"
    assert (signed.saga.state, signed.saga.status, signed.saga.version) == (
        "awaiting_funds",
        Status.RUNNING,
        3,
    )
    assert signed.applied_parked == ("m-seller",)
    assert signed.saga.parked == ()
    assert types(signed) == ["bank.CollectFunds"]
    assert payloads(signed) == [{"escrow_id": ESCROW_ID, "buyer_id": "b-1", "amount_cents": 90_000}]
    assert signed.deadline == Deadline("awaiting_funds", later + timedelta(days=1))


@pytest.mark.parametrize("state", ["awaiting_seller", "awaiting_funds"])
def test_buyer_signing_twice_is_ignored(state):
    saga = drive(ESCROW, ESCROW_PATHS[state])

    decision = decide(ESCROW, saga, incoming("buyer.BuyerSigned", "m-again"), NOW)

    assert decision.outcome is Outcome.IGNORED
    assert decision.saga.state == state
    assert decision.saga.version == saga.version + 1
    assert decision.commands == ()


def test_buyer_refusing_voids_the_documents_and_waits_for_the_seller_to_confirm():
    decision = decide(ESCROW, start(ESCROW).saga, incoming("buyer.BuyerRefused"), NOW)

    assert (decision.saga.state, decision.saga.status) == ("refused_undo_1", Status.COMPENSATING)
    assert not decision.saga.finished
    assert types(decision) == ["seller.VoidDocuments"]
    assert payloads(decision) == [{"escrow_id": ESCROW_ID}]
    assert decision.deadline == Deadline("refused_undo_1", NOW + timedelta(hours=1))
    assert decision.retry == Deadline("refused_undo_1", NOW + timedelta(seconds=10), "retry")

    voided = decide(ESCROW, decision.saga, incoming("seller.DocumentsVoided", "m-voided"), NOW)

    assert (voided.saga.state, voided.saga.status) == ("refused", Status.COMPENSATED)
    assert voided.saga.finished and voided.commands == ()
    assert voided.deadline is None and voided.retry is None


def test_escrow_deadline_returns_the_funds_then_voids_each_confirmed_in_turn():
    saga = drive(ESCROW, ESCROW_PATHS["awaiting_funds"])

    decision = decide(ESCROW, saga, incoming(DEADLINE, state="awaiting_funds"), NOW + timedelta(days=1))

    assert (decision.saga.state, decision.saga.status) == ("expired_undo_1", Status.COMPENSATING)
    assert types(decision) == ["bank.ReturnFunds"]
    assert payloads(decision) == [{"escrow_id": ESCROW_ID}]
    returned = decide(ESCROW, decision.saga, incoming("bank.FundsReturned", "m-returned"), NOW)
    assert (returned.saga.state, types(returned)) == ("expired_undo_2", ["seller.VoidDocuments"])
    voided = decide(ESCROW, returned.saga, incoming("seller.DocumentsVoided", "m-voided"), NOW)
    assert (voided.saga.state, voided.saga.status) == ("expired", Status.COMPENSATED)


def test_an_undo_of_a_final_state_is_resent_with_the_same_message_id_until_confirmed():
    refused = decide(ESCROW, start(ESCROW).saga, incoming("buyer.BuyerRefused"), NOW).saga
    sent = refused.awaiting[0]["message_id"]

    again = decide(
        ESCROW,
        refused,
        Incoming(RETRY, "t-1", {"state": "refused_undo_1", "due_at": NOW.isoformat()}, kind="retry"),
        NOW,
    )

    assert [c.message_id for c in again.commands] == [sent]
    assert again.saga.state == "refused_undo_1" and again.saga.attempt == 1


def test_an_undo_confirmed_after_its_deadline_carries_the_escrow_to_its_final_state():
    refused = decide(ESCROW, start(ESCROW).saga, incoming("buyer.BuyerRefused"), NOW).saga
    later = NOW + timedelta(hours=1)
    gave_up = decide(ESCROW, refused, incoming(DEADLINE, state="refused_undo_1"), later)
    assert (gave_up.saga.state, gave_up.saga.status) == ("refused_failed", Status.FAILED)

    late = decide(ESCROW, gave_up.saga, incoming("seller.DocumentsVoided", "m-late"), later)

    assert late.outcome is Outcome.MOVED
    assert (late.saga.state, late.saga.status) == ("refused", Status.COMPENSATED)


@dataclass(frozen=True)
class DeliveryBooked(Event):
    TYPE = "delivery.DeliveryBooked"
    delivery_id: str
    state: str  # the US state delivered to: business data that happens to be called "state"


@dataclass(frozen=True)
class CancelCourier(Command):
    TYPE = "courier.CancelCourier"
    delivery_id: str
    state: str


def test_a_deadline_does_not_overwrite_the_saga_data():
    delivery = Workflow("delivery", starts_on=DeliveryBooked, key="delivery_id")
    delivery.state("waiting", deadline=timedelta(hours=1), on_deadline="cancelled")
    delivery.state("cancelled", final=True, compensate=[CancelCourier])
    compiled = CompiledWorkflow(delivery)
    booked = {"delivery_id": "d-1", "state": "CA"}
    saga = decide(compiled, None, Incoming(DeliveryBooked.TYPE, "m-1", booked), NOW).saga

    # The message fire_due_deadlines sends through the engine when the deadline falls due.
    due = NOW + timedelta(hours=1)
    fired = Incoming(DEADLINE, "deadline:1", {"state": "waiting", "due_at": due.isoformat()}, kind="deadline")
    decision = decide(compiled, saga, fired, due)

    assert decision.saga.state == "cancelled"
    assert payloads(decision) == [{"delivery_id": "d-1", "state": "CA"}]
    assert decision.saga.data == booked


# determinism ----------------------------------------------------------------------------------------
def _run(compiled: CompiledWorkflow, events: Sequence[tuple[str, timedelta]]) -> list[Decision]:
    decisions = [decide(compiled, None, incoming(compiled.workflow.starts_on.TYPE, "m-start"), NOW)]
    for index, (type_name, after) in enumerate(events):
        saga = decisions[-1].saga
        message = incoming(type_name, f"m-{index}", saga.state)
        decisions.append(decide(compiled, saga, message, NOW + after))
    return decisions


@pytest.mark.parametrize(
    ("compiled", "events"),
    [
        (
            ORDER,
            [
                ("inventory.StockReserved", timedelta(seconds=1)),
                ("inventory.StockReserved", timedelta(seconds=2)),  # ignored
                ("payment.PaymentCharged", timedelta(seconds=3)),
                ("shipping.ShipmentFailed", timedelta(seconds=4)),
                ("payment.PaymentRefunded", timedelta(seconds=5)),
                ("inventory.StockReleased", timedelta(seconds=6)),
            ],
        ),
        (
            ESCROW,
            [
                ("seller.SellerSigned", timedelta(hours=1)),  # parked
                ("buyer.BuyerSigned", timedelta(hours=2)),  # applies the parked one
                ("buyer.BuyerSigned", timedelta(hours=3)),  # ignored
                (DEADLINE, timedelta(days=1, hours=2)),
                ("bank.FundsReturned", timedelta(days=1, hours=3)),
                ("seller.DocumentsVoided", timedelta(days=1, hours=4)),
            ],
        ),
    ],
    ids=["order", "escrow"],
)
def test_the_same_sequence_gives_the_same_decisions(compiled, events):
    first = _run(compiled, events)
    second = _run(compiled, events)

    assert first == second
    assert [d.saga.version for d in first] == list(range(1, len(events) + 2))
    assert first[-1].saga.finished
