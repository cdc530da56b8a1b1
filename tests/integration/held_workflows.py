"""An order that a customer may cancel from outside and that holds the goods a while before it
ships (issue 28, items 3 and 4), on the example participants' commands. Loaded with
``serve("tests.integration.held_workflows", hold_clock=True)``: the wait ends when the test
moves the clock, never because the machine was slow."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from orchestrator import Event, Saga, step, wait
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

DEADLINE = timedelta(seconds=1)


@dataclass
class OrderCancelled(Event):
    """The customer's cancellation: published by the shop's front end, answering no command."""

    TYPE = "customers.OrderCancelled"
    order_id: str


class HeldOrderSaga(Saga, starts_on=OrderPlaced, key="order_id", name="held_order", cancel_on=OrderCancelled):
    @step(done=StockReserved, failed=OutOfStock, deadline=DEADLINE)
    def reserve(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @reserve.compensate(done=StockReleased)
    def release(self, order: OrderPlaced) -> ReleaseStock:
        return ReleaseStock(order.order_id)

    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=DEADLINE)
    def charge(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)

    @charge.compensate(done=PaymentRefunded)
    def refund(self, order: OrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)

    hold = wait(seconds=1)  # the customer's cooling-off period

    @step(done=OrderShipped, failed=ShipmentFailed, deadline=DEADLINE)
    def ship(self, order: OrderPlaced) -> ShipOrder:
        return ShipOrder(order.order_id, order.lines)


WORKFLOWS = [HeldOrderSaga.workflow]
