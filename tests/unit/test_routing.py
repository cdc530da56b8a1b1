"""``Registry``: which saga an incoming event is for, or why it is for none."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.definitions import DEADLINE
from orchestrator.core.engine import saga_id_for
from orchestrator.core.routing import Registry, Rejected
from orchestrator.examples import WORKFLOWS, OrderSaga, escrow

REGISTRY = Registry(WORKFLOWS)

ORDER_PLACED: dict[str, Any] = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "lines": [{"sku": "sku-1", "quantity": 2}],
    "amount_cents": 1250,
}
ESCROW_OPENED: dict[str, Any] = {"escrow_id": "e-1", "buyer_id": "b-1", "seller_id": "s-1", "amount_cents": 9}


def test_a_start_event_targets_its_keyed_saga_and_may_start_it():
    (target,) = REGISTRY.route("orders.OrderPlaced", ORDER_PLACED)

    assert target.workflow.workflow.name == "order"
    assert target.starts
    assert target.saga_id == saga_id_for("order", "o-1")
    assert target.payload == ORDER_PLACED


@pytest.mark.parametrize(
    ("type_name", "payload", "workflow", "saga_id"),
    [
        (
            "inventory.StockReserved",
            {"order_id": "o-7", "reservation_id": "r"},
            "order",
            saga_id_for("order", "o-7"),
        ),
        (
            "payment.PaymentDeclined",
            {"order_id": "o-8", "reason": "no"},
            "order",
            saga_id_for("order", "o-8"),
        ),
        ("seller.SellerSigned", {"escrow_id": "e-3"}, "escrow", saga_id_for("escrow", "e-3")),
        ("bank.FundsReceived", {"escrow_id": "e-4"}, "escrow", saga_id_for("escrow", "e-4")),
    ],
)
def test_a_reply_targets_the_saga_its_key_names(type_name, payload, workflow, saga_id):
    (target,) = REGISTRY.route(type_name, payload)

    assert target.workflow.workflow.name == workflow
    assert not target.starts
    assert target.saga_id == saga_id


def test_the_key_is_compared_as_text():
    (target,) = REGISTRY.route("orders.OrderPlaced", {**ORDER_PLACED, "order_id": "42"})

    assert target.saga_id == saga_id_for("order", "42")
    assert target.saga_id != saga_id_for("escrow", "42")


def test_an_empty_key_names_no_saga():
    (target,) = REGISTRY.route("orders.OrderPlaced", {**ORDER_PLACED, "order_id": ""})

    assert target.saga_id is None
    assert target.starts


def test_a_matching_workflow_header_or_saga_workflow_is_accepted():
    (by_header,) = REGISTRY.route("escrow.EscrowOpened", ESCROW_OPENED, workflow_header="escrow")
    (by_saga,) = REGISTRY.route("buyer.BuyerSigned", {"escrow_id": "e-1"}, saga_workflow="escrow")

    assert by_header.workflow.workflow.name == by_saga.workflow.workflow.name == "escrow"


REJECTIONS: list[tuple[str, str, Any, dict[str, Any], str]] = [
    # (id, type, payload, route keywords, reason the message is dead-lettered with)
    ("unknown type", "inventory.Teleported", {"order_id": "o-1"}, {}, "no workflow takes messages of type"),
    ("deadline from the wire", DEADLINE, {"state": "reserve"}, {}, "no workflow takes messages of type"),
    ("a command is not an event", "inventory.ReserveStock", {"order_id": "o-1"}, {}, "no workflow takes"),
    (
        "unknown x-workflow",
        "orders.OrderPlaced",
        ORDER_PLACED,
        {"workflow_header": "billing"},
        "unknown workflow 'billing'",
    ),
    (
        "x-workflow that takes no such type",
        "orders.OrderPlaced",
        ORDER_PLACED,
        {"workflow_header": "escrow"},
        "workflow 'escrow' takes no 'orders.OrderPlaced'",
    ),
    (
        "saga of another workflow",
        "inventory.StockReserved",
        {"order_id": "o-1", "reservation_id": "r"},
        {"saga_workflow": "escrow"},
        "workflow 'escrow' takes no 'inventory.StockReserved'",
    ),
    ("body is a list", "orders.OrderPlaced", [ORDER_PLACED], {}, "body is not a JSON object"),
    ("body is a string", "orders.OrderPlaced", "o-1", {}, "body is not a JSON object"),
    ("body is null", "orders.OrderPlaced", None, {}, "body is not a JSON object"),
    (
        "missing field",
        "orders.OrderPlaced",
        {k: v for k, v in ORDER_PLACED.items() if k != "customer_id"},
        {},
        "orders.OrderPlaced does not fit its schema: customer_id: Field required",
    ),
    (
        "wrong type",
        "orders.OrderPlaced",
        {**ORDER_PLACED, "amount_cents": "twelve"},
        {},
        "orders.OrderPlaced does not fit its schema: amount_cents: Input should be a valid integer",
    ),
    (
        "wrong type of key",
        "inventory.StockReserved",
        {"order_id": 7, "reservation_id": "r"},
        {},
        "inventory.StockReserved does not fit its schema: order_id: Input should be a valid string",
    ),
    (
        "wrong type deep inside",
        "orders.OrderPlaced",
        {**ORDER_PLACED, "lines": [{"sku": "sku-1", "quantity": "many"}]},
        {},
        "orders.OrderPlaced does not fit its schema: lines.0.quantity: Input should be a valid integer",
    ),
    (
        "empty reply",
        "seller.SellerSigned",
        {},
        {},
        "seller.SellerSigned does not fit its schema: escrow_id: Field required",
    ),
]


@pytest.mark.parametrize(
    ("type_name", "payload", "keywords", "reason"),
    [r[1:] for r in REJECTIONS],
    ids=[r[0] for r in REJECTIONS],
)
def test_route_rejections(type_name, payload, keywords, reason):
    with pytest.raises(Rejected) as caught:
        REGISTRY.route(type_name, payload, **keywords)

    assert caught.value.detail.startswith(reason)


def test_two_workflows_with_one_name_are_refused():
    with pytest.raises(ValueError, match="two workflows are called 'escrow'"):
        Registry([escrow, escrow])


def test_command_types_lists_every_command_of_both_examples():
    assert REGISTRY.command_types() == {
        "inventory.ReserveStock",
        "inventory.ReleaseStock",
        "payment.ChargePayment",
        "payment.RefundPayment",
        "shipping.ShipOrder",
        "buyer.RequestSignature",
        "seller.RequestSignature",
        "seller.VoidDocuments",
        "bank.CollectFunds",
        "bank.ReturnFunds",
        "bank.ReleaseFunds",
    }


@pytest.mark.parametrize(
    ("workflow", "expected"),
    [
        (
            OrderSaga.workflow,
            {
                "inventory.ReserveStock",
                "inventory.ReleaseStock",
                "payment.ChargePayment",
                "payment.RefundPayment",
                "shipping.ShipOrder",
            },
        ),
        (
            escrow,
            {
                "buyer.RequestSignature",
                "seller.RequestSignature",
                "seller.VoidDocuments",
                "bank.CollectFunds",
                "bank.ReturnFunds",
                "bank.ReleaseFunds",
            },
        ),
    ],
    ids=["order", "escrow"],
)
def test_command_types_per_workflow(workflow, expected):
    assert Registry([workflow]).command_types() == expected


def test_by_type_indexes_every_event_each_workflow_takes():
    assert {name: [c.workflow.name for c in compiled] for name, compiled in REGISTRY.by_type.items()} == {
        "orders.OrderPlaced": ["order"],
        "inventory.StockReserved": ["order"],
        "inventory.OutOfStock": ["order"],
        "inventory.StockReleased": ["order"],
        "payment.PaymentCharged": ["order"],
        "payment.PaymentDeclined": ["order"],
        "payment.PaymentRefunded": ["order"],
        "shipping.OrderShipped": ["order"],
        "shipping.ShipmentFailed": ["order"],
        "escrow.EscrowOpened": ["escrow"],
        "buyer.BuyerSigned": ["escrow"],
        "buyer.BuyerRefused": ["escrow"],
        "seller.SellerSigned": ["escrow"],
        "bank.FundsReceived": ["escrow"],
        "bank.FundsDeclined": ["escrow"],
        "bank.FundsReturned": ["escrow"],
        "seller.DocumentsVoided": ["escrow"],
        # any saga may be started as a child: every workflow takes its parent's cancel
        "saga.CancelChild": ["order", "escrow"],
    }
