"""The workflow the chaos suite runs: ``orchestrator run --workflows bench.chaos.workflow``.

The bundled order saga on another clock, so that every outcome is one the checker can judge, with
its stock reserved and its payment charged at once, a parallel group (issue 28): a fault now hits
two commands of one saga in flight, a branch's compensation while another still runs, and the
late success of a branch given up on. Reserving and charging have a short deadline
(``CHAOS_DEADLINE_SECONDS``, read at import because the replicas are separate processes and the
environment is their only way in): a participant
stopped for longer times the step out within seconds, the saga compensates, and a run ends in
minutes. Shipping, the last step, has no undo, so it has no deadline either: a shipment that
succeeded after a deadline gave up on it could not be taken back, and the checker would rightly
flag it; a stopped shipping service only delays its sagas. Compensations have no deadline: they
wait for their participant to come back, so no fault makes a saga ``failed`` by design, and a
``failed`` saga is always a finding.
"""

from __future__ import annotations

import os
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

__all__ = ["DEADLINE", "SERVICES", "UNDO", "WORKFLOW", "WORKFLOWS", "ChaosOrderSaga"]

WORKFLOW = "chaos_order"
DEADLINE = timedelta(seconds=float(os.environ.get("CHAOS_DEADLINE_SECONDS", "5")))
SERVICES = ("inventory", "payment", "shipping")


class ChaosOrderSaga(Saga, starts_on=OrderPlaced, key="order_id", name=WORKFLOW):
    """Reserve and charge at once, then ship, each within ``DEADLINE``; every one of them undone on
    the way back."""

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

    @step(done=OrderShipped, failed=ShipmentFailed)
    def ship(self, order: OrderPlaced) -> ShipOrder:
        return ShipOrder(order.order_id, order.lines)


#: success reply -> (the undo command it calls for, that undo's reply), for the checker
UNDO = {
    StockReserved.TYPE: (ReleaseStock.TYPE, StockReleased.TYPE),
    PaymentCharged.TYPE: (RefundPayment.TYPE, PaymentRefunded.TYPE),
}
WORKFLOWS = [ChaosOrderSaga.workflow]
