"""An order that charges, then hands its fulfilment to a child saga that reserves and ships (issue
28, items 2 and 7): the shipping participant, the Node.js one included, serves the child's step
with the commands it always had. Its own module: every workflow that starts on
``orders.OrderPlaced`` starts a saga for each order."""

from __future__ import annotations

from datetime import timedelta

from orchestrator import Saga, child, step
from orchestrator.examples.contracts import (
    ChargePayment,
    OrderPlaced,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)
from orchestrator.examples.shop import FulfilmentRequested, FulfilmentSaga

DEADLINE = timedelta(seconds=30)  # never reached: every participant here answers


class ChargeThenFulfilSaga(Saga, starts_on=OrderPlaced, key="order_id", name="charge_then_fulfil"):
    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=DEADLINE)
    def charge(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)

    @charge.compensate(done=PaymentRefunded)
    def refund(self, order: OrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)

    @child(FulfilmentSaga, deadline=timedelta(minutes=2), undo_deadline=DEADLINE)
    def fulfil(self, order: OrderPlaced) -> FulfilmentRequested:
        return FulfilmentRequested(order.order_id, order.lines)


WORKFLOWS = [ChargeThenFulfilSaga.workflow, FulfilmentSaga.workflow]
