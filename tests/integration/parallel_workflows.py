"""An order that reserves its stock and charges its customer at once (issue 28, item 1), on the
example participants' commands: the group's two commands go out in one decision."""

from __future__ import annotations

from datetime import timedelta

from orchestrator import Saga, parallel, step
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


class ParallelOrderSaga(Saga, starts_on=OrderPlaced, key="order_id", name="parallel_order"):
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

    hold = parallel(reserve, charge)

    @step(done=OrderShipped, failed=ShipmentFailed, deadline=DEADLINE)
    def ship(self, order: OrderPlaced) -> ShipOrder:
        return ShipOrder(order.order_id, order.lines)


WORKFLOWS = [ParallelOrderSaga.workflow]
