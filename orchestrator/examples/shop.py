"""An order whose fulfilment is a saga of its own (a child saga): the shop charges the customer,
then hands the order to the warehouse's fulfilment saga (reserve the stock, ship it) and waits
for its outcome. A fulfilment that fails gives its stock back and the shop refunds the charge; a
fulfilment that completed is compensated again (its stock released) when the shop's last step,
the invoice, fails; a customer who cancels while the order is fulfilled has the fulfilment
cancelled and the charge refunded. Not in ``WORKFLOWS``: ``make demo`` loads it beside the others
(``--workflows ...,orchestrator.examples.shop``), served by the example services ``payment``,
``inventory``, ``shipping`` and ``billing``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from orchestrator import Command, Event, Saga, child, step
from orchestrator.examples.contracts import (
    ChargePayment,
    Line,
    OrderShipped,
    OutOfStock,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    ShipmentFailed,
    ShipOrder,
    StockReleased,
    StockReserved,
)

__all__ = [
    "WORKFLOWS",
    "FulfilmentRequested",
    "FulfilmentSaga",
    "ShopOrderCancelled",
    "ShopOrderPlaced",
    "ShopOrderSaga",
]


@dataclass(frozen=True)
class ShopOrderPlaced(Event):
    TYPE = "shop.OrderPlaced"
    order_id: str
    customer_id: str
    lines: list[Line]
    amount_cents: int


@dataclass(frozen=True)
class ShopOrderCancelled(Event):
    """The customer's cancellation, from the shop: it answers no command."""

    TYPE = "shop.OrderCancelled"
    order_id: str


@dataclass(frozen=True)
class FulfilmentRequested(Event):
    """The start of a fulfilment saga: sent by the shop's saga as its child, never published."""

    TYPE = "warehouse.FulfilmentRequested"
    order_id: str
    lines: list[Line]


@dataclass(frozen=True)
class SendInvoice(Command):
    TYPE = "billing.SendInvoice"
    order_id: str
    amount_cents: int


@dataclass(frozen=True)
class InvoiceSent(Event):
    TYPE = "billing.InvoiceSent"
    order_id: str


@dataclass(frozen=True)
class InvoiceRefused(Event):
    TYPE = "billing.InvoiceRefused"
    order_id: str
    reason: str


DEADLINE = timedelta(seconds=30)


class FulfilmentSaga(Saga, starts_on=FulfilmentRequested, key="order_id", name="fulfilment"):
    """The warehouse's part of an order: its stock reserved, then shipped."""

    @step(done=StockReserved, failed=OutOfStock, deadline=DEADLINE)
    def reserve(self, request: FulfilmentRequested) -> ReserveStock:
        return ReserveStock(request.order_id, request.lines)

    @reserve.compensate(done=StockReleased, deadline=DEADLINE)
    def release(self, request: FulfilmentRequested) -> ReleaseStock:
        return ReleaseStock(request.order_id)

    @step(done=OrderShipped, failed=ShipmentFailed, deadline=timedelta(minutes=5))
    def ship(self, request: FulfilmentRequested) -> ShipOrder:
        return ShipOrder(request.order_id, request.lines)


class ShopOrderSaga(
    Saga, starts_on=ShopOrderPlaced, key="order_id", name="shop_order", cancel_on=ShopOrderCancelled
):
    """The shop's order: charged, fulfilled by a child saga, invoiced; its customer may cancel it
    until it is invoiced, and a fulfilment under way is cancelled with it."""

    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=DEADLINE)
    def charge(self, order: ShopOrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)

    @charge.compensate(done=PaymentRefunded, deadline=DEADLINE)
    def refund(self, order: ShopOrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)

    # the shop waits two minutes for its order to ship, though shipping may take five: then it
    # gives up, and the fulfilment is cancelled (its stock given back) wherever it is
    @child(FulfilmentSaga, deadline=timedelta(minutes=2), undo_deadline=timedelta(minutes=1))
    def fulfil(self, order: ShopOrderPlaced) -> FulfilmentRequested:
        return FulfilmentRequested(order.order_id, order.lines)

    @step(done=InvoiceSent, failed=InvoiceRefused, deadline=DEADLINE)
    def invoice(self, order: ShopOrderPlaced) -> SendInvoice:
        return SendInvoice(order.order_id, order.amount_cents)


WORKFLOWS = [ShopOrderSaga.workflow, FulfilmentSaga.workflow]
