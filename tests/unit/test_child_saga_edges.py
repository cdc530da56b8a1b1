"""Child sagas at their edges (issue 28, item 2; found in review): a completed child with a
parallel group reopened, two child steps' outcomes told apart, a parent resumed or retried into
its child step, a failed child resumed, a versioned start, a start the child would refuse."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from orchestrator import Command, Event, Saga, child, parallel, step, upcaster
from orchestrator.core.children import parent_of
from orchestrator.examples.contracts import (
    Line,
    OrderShipped,
    PaymentCharged,
    PaymentRefunded,
    ShipmentFailed,
    StockReleased,
    StockReserved,
)
from orchestrator.examples.shop import (
    WORKFLOWS,
    FulfilmentRequested,
    FulfilmentSaga,
    InvoiceRefused,
    InvoiceSent,
    SendInvoice,
    ShopOrderPlaced,
)
from orchestrator.testing import OutgoingCommand, WorkflowTestKit


def last(kit: WorkflowTestKit, type_: str) -> OutgoingCommand:
    return [c for c in kit.sent if c.type == type_][-1]


@pytest.fixture
def shop() -> Iterator[WorkflowTestKit]:
    kit = WorkflowTestKit(*WORKFLOWS)
    kit.publish(ShopOrderPlaced("o-1", "c-1", [Line("sku", 1)], 100))
    kit.reply(last(kit, "payment.ChargePayment"), PaymentCharged("o-1", "ch"))
    yield kit
    kit.close()


def test_a_retry_with_new_ids_in_the_child_step_is_answered_by_the_child(shop: WorkflowTestKit) -> None:
    shop.act(shop.saga("o-1", "shop_order"), "retry", new_attempt=True)
    shop.reply(last(shop, "inventory.ReserveStock"), StockReserved("o-1", "r"))
    shop.reply(last(shop, "shipping.ShipOrder"), OrderShipped("o-1", "t"))
    assert shop.saga("o-1", "shop_order").state == "invoice"


def test_a_saga_that_exists_and_is_no_child_of_the_parent_fails_its_step() -> None:
    kit = WorkflowTestKit(*WORKFLOWS)
    kit.publish(FulfilmentRequested("o-1", [Line("sku", 1)]))  # started by someone else
    kit.publish(ShopOrderPlaced("o-1", "c-1", [Line("sku", 1)], 100))
    kit.reply(last(kit, "payment.ChargePayment"), PaymentCharged("o-1", "ch"))
    assert kit.saga("o-1", "shop_order").state == "compensating_charge"
    other = kit.saga("o-1", "fulfilment")
    assert parent_of(other.branches) is None and other.state == "reserve"  # left as it was
    assert kit.journal(kit.saga("o-1", "shop_order"))[-1].message.type == "saga.ChildFailed"


def test_a_resumed_child_answers_its_failed_parent_again(shop: WorkflowTestKit) -> None:
    shop.reply(last(shop, "inventory.ReserveStock"), StockReserved("o-1", "r"))
    shop.reply(last(shop, "shipping.ShipOrder"), OrderShipped("o-1", "t"))
    shop.reply(last(shop, "billing.SendInvoice"), InvoiceRefused("o-1", "x"))  # the child reopened
    shop.advance(timedelta(seconds=31))  # its release unconfirmed: the child fails, then the parent
    assert shop.saga("o-1", "fulfilment").status == "failed"
    assert shop.saga("o-1", "shop_order").status == "failed"
    shop.act(shop.saga("o-1", "fulfilment"), "resume")
    shop.reply(last(shop, "inventory.ReleaseStock"), StockReleased("o-1"))
    assert shop.saga("o-1", "fulfilment").status == "compensated"
    assert shop.saga("o-1", "shop_order").state == "compensating_charge"  # carried on
    shop.reply(last(shop, "payment.RefundPayment"), PaymentRefunded("o-1"))
    assert shop.saga("o-1", "shop_order").status == "compensated"


def test_a_failed_child_keeps_its_parents_cancel_for_a_forward_resume(shop: WorkflowTestKit) -> None:
    shop.reply(last(shop, "inventory.ReserveStock"), StockReserved("o-1", "r"))
    shop.reply(last(shop, "shipping.ShipOrder"), ShipmentFailed("o-1", "lost"))
    shop.advance(timedelta(seconds=31))  # release unconfirmed: the child failed, the parent refunds
    shop.reply(last(shop, "payment.RefundPayment"), PaymentRefunded("o-1"))
    assert shop.saga("o-1", "shop_order").status == "compensated"
    shop.act(shop.saga("o-1", "fulfilment"), "resume", step="ship")
    assert shop.saga("o-1", "fulfilment").state == "compensating_reserve"  # cancelled, not shipped
    assert [c.type for c in shop.sent].count("shipping.ShipOrder") == 1


BROKEN = {"invoice": True}


@dataclass(frozen=True)
class Ordered(Event):
    TYPE = "edges.Ordered"
    order_id: str
    warehouse_ref: str = ""


class BrittleSaga(Saga, starts_on=Ordered, key="order_id", name="edges_brittle"):
    @child(FulfilmentSaga, deadline=timedelta(minutes=10))
    def fulfil(self, o: Ordered) -> FulfilmentRequested:
        return FulfilmentRequested(o.warehouse_ref or o.order_id, [Line("sku", 1)])

    @step(done=InvoiceSent, failed=InvoiceRefused)
    def invoice(self, o: Ordered) -> SendInvoice:
        if BROKEN["invoice"]:
            raise RuntimeError("the billing address service is down")
        return SendInvoice(o.order_id, 1)


def test_a_parent_resumed_into_its_child_step_is_told_the_childs_outcome_again() -> None:
    kit = WorkflowTestKit(BrittleSaga.workflow, FulfilmentSaga.workflow)
    kit.publish(Ordered("o-1"))
    kit.reply(last(kit, "inventory.ReserveStock"), StockReserved("o-1", "r"))
    BROKEN["invoice"] = True
    try:
        kit.reply(last(kit, "shipping.ShipOrder"), OrderShipped("o-1", "t"))
        parent = kit.saga("o-1", "edges_brittle")
        assert (parent.state, parent.status) == ("fulfil", "failed")  # the invoice could not be built
    finally:
        BROKEN["invoice"] = False
    kit.act(parent, "resume")  # into fulfil again: its start goes to the completed child
    assert kit.saga("o-1", "edges_brittle").state == "invoice"
    assert kit.saga("o-1", "fulfilment").version == 4  # told, not run again


def test_a_start_the_child_would_refuse_fails_the_parent_at_once() -> None:
    kit = WorkflowTestKit(BrittleSaga.workflow, FulfilmentSaga.workflow)
    kit.publish(Ordered("o-2", warehouse_ref="x" * 501))
    parent = kit.saga("o-2", "edges_brittle")
    assert parent.status == "failed" and "1 to 500 characters" in str(parent.last_error)


# a child whose start event is at schema 2 -------------------------------------------------------


@dataclass(frozen=True)
class Pack(Event):
    TYPE = "edges.Pack"
    SCHEMA = 2
    order_id: str
    qty: int


@upcaster(Pack, from_schema=1)
def _pack_v1(payload: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": payload["order_id"], "qty": payload.get("count", 1) * 1000}


@dataclass(frozen=True)
class PackIt(Command):
    TYPE = "edges.PackIt"
    order_id: str


@dataclass(frozen=True)
class Packed(Event):
    TYPE = "edges.Packed"
    order_id: str


class PackSaga(Saga, starts_on=Pack, key="order_id", name="edges_pack"):
    @step(done=Packed)
    def pack(self, p: Pack) -> PackIt:
        return PackIt(p.order_id)


class PackingSaga(Saga, starts_on=Ordered, key="order_id", name="edges_packing"):
    @child(PackSaga)
    def pack(self, o: Ordered) -> Pack:
        return Pack(o.order_id, 7)


def test_a_versioned_child_start_is_read_in_its_version_and_keeps_its_parent() -> None:
    kit = WorkflowTestKit(PackingSaga.workflow, PackSaga.workflow)
    kit.publish(Ordered("o-1"))
    packing = kit.saga("o-1", "edges_pack")
    assert packing.data["qty"] == 7 and parent_of(packing.branches) is not None
    kit.reply(last(kit, PackIt.TYPE), Packed("o-1"))
    assert kit.saga("o-1", "edges_packing").status == "completed"


# a completed child whose steps ran in parallel ---------------------------------------------------


@dataclass(frozen=True)
class TripAsked(Event):
    TYPE = "edgestrip.Asked"
    order_id: str


@dataclass(frozen=True)
class BookRoom(Command):
    TYPE = "edgeshotel.BookRoom"
    order_id: str


@dataclass(frozen=True)
class RoomBooked(Event):
    TYPE = "edgeshotel.RoomBooked"
    order_id: str


@dataclass(frozen=True)
class CancelRoom(Command):
    TYPE = "edgeshotel.CancelRoom"
    order_id: str


@dataclass(frozen=True)
class RoomCancelled(Event):
    TYPE = "edgeshotel.RoomCancelled"
    order_id: str


@dataclass(frozen=True)
class BookSeat(Command):
    TYPE = "edgesflight.BookSeat"
    order_id: str


@dataclass(frozen=True)
class SeatBooked(Event):
    TYPE = "edgesflight.SeatBooked"
    order_id: str


@dataclass(frozen=True)
class CancelSeat(Command):
    TYPE = "edgesflight.CancelSeat"
    order_id: str


@dataclass(frozen=True)
class SeatCancelled(Event):
    TYPE = "edgesflight.SeatCancelled"
    order_id: str


class EdgeTripSaga(Saga, starts_on=TripAsked, key="order_id", name="edges_trip"):
    @step(done=RoomBooked)
    def room(self, t: TripAsked) -> BookRoom:
        return BookRoom(t.order_id)

    @room.compensate(done=RoomCancelled)
    def unroom(self, t: TripAsked) -> CancelRoom:
        return CancelRoom(t.order_id)

    @step(done=SeatBooked)
    def seat(self, t: TripAsked) -> BookSeat:
        return BookSeat(t.order_id)

    @seat.compensate(done=SeatCancelled)
    def unseat(self, t: TripAsked) -> CancelSeat:
        return CancelSeat(t.order_id)

    book = parallel(room, seat)


class EdgeOrderSaga(Saga, starts_on=Ordered, key="order_id", name="edges_order"):
    @child(EdgeTripSaga)
    def trip(self, o: Ordered) -> TripAsked:
        return TripAsked(o.order_id)

    @step(done=InvoiceSent, failed=InvoiceRefused)
    def invoice(self, o: Ordered) -> SendInvoice:
        return SendInvoice(o.order_id, 1)


def test_a_reopened_child_compensates_the_parallel_group_it_completed() -> None:
    kit = WorkflowTestKit(EdgeOrderSaga.workflow, EdgeTripSaga.workflow)
    kit.publish(Ordered("o-1"))
    kit.reply(last(kit, BookRoom.TYPE), RoomBooked("o-1"))
    kit.reply(last(kit, BookSeat.TYPE), SeatBooked("o-1"))
    assert kit.saga("o-1", "edges_trip").status == "completed"
    kit.reply(last(kit, "billing.SendInvoice"), InvoiceRefused("o-1", "x"))
    assert {CancelRoom.TYPE, CancelSeat.TYPE} <= set(kit.sent_types())
    kit.reply(last(kit, CancelRoom.TYPE), RoomCancelled("o-1"))
    kit.reply(last(kit, CancelSeat.TYPE), SeatCancelled("o-1"))
    assert kit.saga("o-1", "edges_trip").status == "compensated"
    assert kit.saga("o-1", "edges_order").status == "compensated"
    assert kit.replay_differences(kit.saga("o-1", "edges_trip")) == []


# two child steps: one child's outcome is never taken for the other's -----------------------------


def _child_workflow(service: str) -> tuple[type[Event], type[Saga], dict[str, type[Any]]]:
    """A child of two steps, the first compensated: its messages by name, under ``service``."""

    def message(base: type[Any], name: str) -> type[Any]:
        cls = type(name, (base,), {"TYPE": f"{service}.{name}", "__annotations__": {"order_id": str}})
        return dataclass(frozen=True)(cls)

    names = ("Start", "Do", "Done", "Undo", "Undone", "Do2", "Done2")
    m = {n: message(Command if n in ("Do", "Undo", "Do2") else Event, n) for n in names}
    start = m["Start"]

    class Child(Saga, starts_on=start, key="order_id", name=service):
        @step(done=m["Done"])
        def do(self, s: Any) -> Any:
            return m["Do"](s.order_id)

        @do.compensate(done=m["Undone"])
        def undo(self, s: Any) -> Any:
            return m["Undo"](s.order_id)

        @step(done=m["Done2"])
        def do2(self, s: Any) -> Any:
            return m["Do2"](s.order_id)

    return start, Child, m


XStart, XSaga, X = _child_workflow("edgesx")
YStart, YSaga, Y = _child_workflow("edgesy")


class TwoChildrenSaga(Saga, starts_on=Ordered, key="order_id", name="edges_two"):
    @child(XSaga, undo_deadline=timedelta(minutes=1))
    def a(self, o: Ordered) -> Any:
        return XStart(o.order_id)  # type: ignore[call-arg]

    @child(YSaga, deadline=timedelta(minutes=5))
    def b(self, o: Ordered) -> Any:
        return YStart(o.order_id)  # type: ignore[call-arg]


def test_one_childs_outcome_never_confirms_the_other_childs_compensation() -> None:
    kit = WorkflowTestKit(TwoChildrenSaga.workflow, XSaga.workflow, YSaga.workflow)
    kit.publish(Ordered("o-1"))
    kit.reply(last(kit, X["Do"].TYPE), X["Done"]("o-1"))
    kit.reply(last(kit, X["Do2"].TYPE), X["Done2"]("o-1"))  # X completed: step a done
    kit.reply(last(kit, Y["Do"].TYPE), Y["Done"]("o-1"))
    kit.advance(timedelta(minutes=5, seconds=1))  # b's deadline: Y cancelled, X reopened
    assert kit.saga("o-1", "edges_two").state == "compensating_a"
    kit.advance(timedelta(minutes=1, seconds=1))  # a's undo deadline: the parent gives up
    assert kit.saga("o-1", "edges_two").status == "failed"
    kit.reply(last(kit, Y["Undo"].TYPE), Y["Undone"]("o-1"))  # Y compensated, not X
    assert kit.saga("o-1", "edges_two").status == "failed"
    kit.reply(last(kit, X["Undo"].TYPE), X["Undone"]("o-1"))  # X's, late: the parent carries on
    assert kit.saga("o-1", "edges_two").status == "compensated"


def test_a_parent_resumed_into_the_compensation_its_child_failed_asks_the_child_anew(
    shop: WorkflowTestKit,
) -> None:
    """Resent with its first id, the cancel would be a duplicate to the child's inbox, which
    answers none (unlike a participant): a resume sends it under a new id, and is answered."""
    shop.reply(last(shop, "inventory.ReserveStock"), StockReserved("o-1", "r"))
    shop.reply(last(shop, "shipping.ShipOrder"), OrderShipped("o-1", "t"))
    shop.reply(last(shop, "billing.SendInvoice"), InvoiceRefused("o-1", "x"))  # the child reopened
    shop.advance(timedelta(seconds=31))  # its release unconfirmed: the child fails, then the parent
    parent = shop.saga("o-1", "shop_order")
    assert parent.status == "failed"
    first = [c.message_id for c in shop.sent if c.type == "saga.CancelChild"]
    shop.act(parent, "resume")  # into the compensation it gave up on
    again = [c.message_id for c in shop.sent if c.type == "saga.CancelChild"]
    assert len(again) == len(first) + 1 and again[-1] not in first
    assert shop.saga("o-1", "shop_order").status == "failed"  # the child answered: still failed
