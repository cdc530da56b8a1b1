"""The workflow the chaos suite runs: ``orchestrator run --workflows bench.chaos.workflow``.

The bundled order saga on another clock, so that every outcome is one the checker can judge, with
its stock reserved and its payment charged at once, a parallel group (issue 28): a fault now hits
two commands of one saga in flight, a branch's compensation while another still runs, and the
late success of a branch given up on. Reserving and charging have a short deadline
(``CHAOS_DEADLINE_SECONDS``, read at import because the replicas are separate processes and the
environment is their only way in): a participant
stopped for longer times the step out within seconds, the saga compensates, and a run ends in
minutes. Shipping, the last step, is a child saga of its own (``chaos_ship``, issue 28): its
start, its outcome and the compensation its failure causes cross replicas, partitions and kills
as messages the orchestrator sends itself. It has no undo, so it has no deadline either: a
shipment that succeeded after a deadline gave up on it could not be taken back, and the checker
would rightly flag it; a stopped shipping service only delays its sagas. Compensations have no deadline: they
wait for their participant to come back, so no fault makes a saga ``failed`` by design, and a
``failed`` saga is always a finding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from orchestrator import Event, Saga, child, parallel, step
from orchestrator.examples.contracts import (
    ChargePayment,
    Line,
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

__all__ = [
    "CHILD",
    "DEADLINE",
    "SERVICES",
    "UNDO",
    "WORKFLOW",
    "WORKFLOWS",
    "ChaosOrderSaga",
    "ChaosShipSaga",
    "ShipmentRequested",
]

WORKFLOW = "chaos_order"
#: the child saga every order that reserved and charged starts, under the order's key
CHILD = "chaos_ship"
DEADLINE = timedelta(seconds=float(os.environ.get("CHAOS_DEADLINE_SECONDS", "5")))
SERVICES = ("inventory", "payment", "shipping")


@dataclass(frozen=True)
class ShipmentRequested(Event):
    """The start of an order's shipping saga: sent by the order's saga, never published."""

    TYPE = "chaos.ShipmentRequested"
    order_id: str
    lines: list[Line]


class ChaosShipSaga(Saga, starts_on=ShipmentRequested, key="order_id", name=CHILD):
    """Ship: completed, the order completes; failed, the order compensates its group."""

    @step(done=OrderShipped, failed=ShipmentFailed)
    def ship(self, request: ShipmentRequested) -> ShipOrder:
        return ShipOrder(request.order_id, request.lines)


class ChaosOrderSaga(Saga, starts_on=OrderPlaced, key="order_id", name=WORKFLOW):
    """Reserve and charge at once, each within ``DEADLINE``, then ship in a child saga; every one of
    them undone on the way back."""

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

    @child(ChaosShipSaga)
    def ship(self, order: OrderPlaced) -> ShipmentRequested:
        return ShipmentRequested(order.order_id, order.lines)


#: success reply -> (the undo command it calls for, that undo's reply), for the checker
UNDO = {
    StockReserved.TYPE: (ReleaseStock.TYPE, StockReleased.TYPE),
    PaymentCharged.TYPE: (RefundPayment.TYPE, PaymentRefunded.TYPE),
}
WORKFLOWS = [ChaosOrderSaga.workflow, ChaosShipSaga.workflow]
