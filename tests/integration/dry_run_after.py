"""The new definitions the dry run's integration test checks the journals against
(``tests/integration/test_dry_run.py``), each changed from ``dry_run_before``:

* ``order``: the ``charge`` step renamed ``payment``, and ``ship`` sends no lines;
* ``gift``: started by an event of a new schema, keyed by a field the journals' events lack, so
  deciding them raises;
* ``escrow``: gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from orchestrator import Event, Saga, Workflow, step
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
from tests.integration.dry_run_before import WrapGift


class OrderSaga(Saga, starts_on=OrderPlaced, key="order_id", name="order"):
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
        return ShipOrder(order.order_id, [])


@dataclass(frozen=True)
class ShopGiftOrdered(Event):
    TYPE = "gifts.GiftOrdered"
    shop_id: str
    gift_id: str


gift = Workflow("gift", starts_on=ShopGiftOrdered, key="shop_id")
gift.state("wrapping", deadline=timedelta(hours=1), on_deadline="given", send=WrapGift)
gift.state("given", final=True)

WORKFLOWS = [OrderSaga.workflow, gift]
