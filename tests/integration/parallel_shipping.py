"""An order that charges and ships at once, after its stock is reserved (issue 28, item 7): the
shipping participant, the Node.js one included, serves a parallel group's branch with the commands
it always had. Its own module: every workflow that starts on ``orders.OrderPlaced`` starts a saga
for each order."""

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

DEADLINE = timedelta(seconds=30)  # never reached: every participant here answers


class ChargeAndShipSaga(Saga, starts_on=OrderPlaced, key="order_id", name="charge_and_ship"):
    """Reserve, then charge and ship at once: the shipping participant serves a parallel group's
    branch with the commands it always had (docs/protocol.md: nothing changes for it)."""

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

    @step(done=OrderShipped, failed=ShipmentFailed, deadline=DEADLINE)
    def ship(self, order: OrderPlaced) -> ShipOrder:
        return ShipOrder(order.order_id, order.lines)

    dispatch = parallel(charge, ship)


WORKFLOWS = [ChargeAndShipSaga.workflow]
