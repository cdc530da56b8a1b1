"""The order saga with deadlines short enough for a test, loaded with ``run --workflows``.

A second at most, as every deadline and retry of a test workflow (tests/unit/test_test_time.py):
a test that must not see them fall due on a slow machine holds the in-process orchestrator's
clock and moves it (tests/integration/in_process.py)."""

from __future__ import annotations

from datetime import timedelta

from orchestrator import Retry, Saga, step
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

RETRY = Retry(every=timedelta(seconds=0.25), backoff=2.0, max_every=timedelta(seconds=0.5))
DEADLINE = timedelta(seconds=1)


class FastOrderSaga(Saga, starts_on=OrderPlaced, key="order_id", name="order"):
    @step(done=StockReserved, failed=OutOfStock, deadline=DEADLINE, retry=RETRY)
    def reserve(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @reserve.compensate(done=StockReleased, retry=RETRY)
    def release(self, order: OrderPlaced) -> ReleaseStock:
        return ReleaseStock(order.order_id)

    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=DEADLINE, retry=RETRY)
    def charge(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)

    @charge.compensate(done=PaymentRefunded, retry=RETRY)
    def refund(self, order: OrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)

    @step(done=OrderShipped, failed=ShipmentFailed, deadline=DEADLINE, retry=RETRY)
    def ship(self, order: OrderPlaced) -> ShipOrder:
        return ShipOrder(order.order_id, order.lines)


WORKFLOWS = [FastOrderSaga.workflow]
