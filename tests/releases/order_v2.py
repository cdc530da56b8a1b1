"""Release 2 of the bundled order saga, loaded beside release 1 (the bundled one) as a team would
during a rolling change: the ``charge`` step renamed ``payment``, a ``confirm`` step added after
shipping. New sagas start on release 2; sagas in flight on release 1 finish on it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from orchestrator import Command, Event, Saga, step
from orchestrator.examples import OrderSaga, escrow
from orchestrator.examples.contracts import (
    ChargePayment,
    OrderPlaced,
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


@dataclass(frozen=True)
class ConfirmOrder(Command):
    TYPE = "notifications.ConfirmOrder"
    order_id: str


@dataclass(frozen=True)
class OrderConfirmed(Event):
    TYPE = "notifications.OrderConfirmed"
    order_id: str


class OrderSagaV2(Saga, starts_on=OrderPlaced, key="order_id", name="order", release="2", current=True):
    """Reserve stock, take the payment, ship, confirm; on failure undo what was done."""

    @step(done=StockReserved, failed=OutOfStock, deadline=timedelta(seconds=30))
    def reserve(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @reserve.compensate(done=StockReleased)
    def release(self, order: OrderPlaced) -> ReleaseStock:
        return ReleaseStock(order.order_id)

    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=timedelta(minutes=2))
    def payment(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)

    @payment.compensate(done=PaymentRefunded)
    def refund(self, order: OrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)

    @step(done=OrderShipped, failed=ShipmentFailed, deadline=timedelta(minutes=5))
    def ship(self, order: OrderPlaced) -> ShipOrder:
        return ShipOrder(order.order_id, order.lines)

    @step(done=OrderConfirmed, deadline=timedelta(minutes=5))
    def confirm(self, order: OrderPlaced) -> ConfirmOrder:
        return ConfirmOrder(order.order_id)


#: what ``--workflows tests.releases.order_v2`` loads: both releases of the order saga, the escrow
WORKFLOWS = [OrderSaga.workflow, OrderSagaV2.workflow, escrow]
