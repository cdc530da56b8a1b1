"""Issue 28, items 3 and 4: a saga cancelled from outside by an event, and waits in a step saga
(a holding period, a time from the saga's data, an event from outside with a deadline)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.core.checks import check
from orchestrator.core.definitions import DefinitionError, Workflow
from orchestrator.core.diagrams import mermaid
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.messages import Command, Event
from orchestrator.core.steps import Saga, step, wait, wait_for
from orchestrator.examples import OrderSaga, escrow
from orchestrator.testing import Verdict, WorkflowTestKit

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@dataclass
class Placed(Event):
    TYPE = "shop.Placed"
    order_id: str


@dataclass
class Scheduled(Event):
    TYPE = "shop.Scheduled"
    order_id: str
    release_at: str


@dataclass
class OrderCancelled(Event):
    TYPE = "customer.OrderCancelled"
    order_id: str
    reason: str = ""


@dataclass
class Charge(Command):
    TYPE = "payments.Charge"
    order_id: str


@dataclass
class Charged(Event):
    TYPE = "payments.Charged"
    order_id: str


@dataclass
class Refund(Command):
    TYPE = "payments.Refund"
    order_id: str
    reason: str = ""


@dataclass
class Refunded(Event):
    TYPE = "payments.Refunded"
    order_id: str


@dataclass
class Ship(Command):
    TYPE = "shipping.Ship"
    order_id: str


@dataclass
class Shipped(Event):
    TYPE = "shipping.Shipped"
    order_id: str


@dataclass
class Approved(Event):
    TYPE = "approvals.Approved"
    order_id: str


@dataclass
class Rejected(Event):
    TYPE = "approvals.Rejected"
    order_id: str


class HeldOrderSaga(Saga, starts_on=Placed, key="order_id", name="held", cancel_on=OrderCancelled):
    """Charge, hold three days, ask a manager, ship; a customer may cancel at any time."""

    @step(done=Charged, deadline=timedelta(seconds=30))
    def charge(self, order: Placed) -> Charge:
        return Charge(order.order_id)

    @charge.compensate(done=Refunded, deadline=timedelta(minutes=5))
    def refund(self, order: Placed) -> Refund:
        return Refund(order.order_id, str(self.data.get("reason", "")))

    hold = wait(days=3)
    approve = wait_for(Approved, failed=Rejected, deadline=timedelta(days=1))

    @step(done=Shipped, deadline=timedelta(seconds=30))
    def ship(self, order: Placed) -> Ship:
        return Ship(order.order_id)


class ReleaseAtSaga(Saga, starts_on=Scheduled, key="order_id", name="release_at"):
    @step(done=Charged, deadline=timedelta(seconds=30))
    def charge(self, order: Scheduled) -> Charge:
        return Charge(order.order_id)

    hold = wait(until="release_at")

    @step(done=Shipped, deadline=timedelta(seconds=30))
    def ship(self, order: Scheduled) -> Ship:
        return Ship(order.order_id)


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    kit = WorkflowTestKit(HeldOrderSaga.workflow, ReleaseAtSaga.workflow, now=NOW)
    yield kit
    kit.close()


def _charged(kit: WorkflowTestKit, key: str = "o-1") -> None:
    kit.publish(Placed(key))
    (charge,) = kit.take_sent()
    kit.reply(charge, Charged(key))


def _outside(kit: WorkflowTestKit, event: Event) -> list[Verdict]:
    """Published as someone outside publishes it: an id of its own, no correlation id."""
    return kit.publish(event, message_id=str(uuid.uuid4())).verdicts


# -- cancellation from outside -----------------------------------------------------------------


def test_a_cancel_event_compensates_what_was_done_wherever_the_saga_is(kit: WorkflowTestKit) -> None:
    _charged(kit)
    assert kit.saga("o-1", "held").state == "hold"
    assert _outside(kit, OrderCancelled("o-1", "changed my mind")) == [Verdict.ACCEPTED]
    saga = kit.saga("o-1", "held")
    assert (saga.state, saga.status) == ("compensating_charge", "compensating")
    (refund,) = kit.take_sent()
    assert refund.type == "payments.Refund"
    assert refund.payload["reason"] == "changed my mind"  # its declared fields entered the data
    entry = kit.journal(saga)[-1]
    assert entry.decision["cancel"] == 1 and entry.decision["reason"] == "cancel by customer.OrderCancelled"
    kit.reply(refund, Refunded("o-1"))
    assert kit.saga("o-1", "held").status == "compensated"
    assert kit.replay_differences(kit.saga("o-1", "held")) == []


def test_a_cancel_event_takes_the_operators_path(kit: WorkflowTestKit) -> None:
    """The same saga cancelled by an operator and by the event: the same states, the same sends."""
    _charged(kit, "by-event")
    _charged(kit, "by-operator")
    kit.take_sent()
    _outside(kit, OrderCancelled("by-event"))
    by_event = kit.take_sent()
    kit.act(kit.saga("by-operator", "held"), "cancel")
    by_operator = kit.take_sent()
    assert [c.type for c in by_event] == [c.type for c in by_operator] == ["payments.Refund"]
    assert kit.saga("by-event", "held").state == kit.saga("by-operator", "held").state


def test_a_step_in_flight_when_cancelled_is_undone_if_it_succeeds_after_all(kit: WorkflowTestKit) -> None:
    kit.publish(Placed("o-1"))
    (charge,) = kit.take_sent()
    _outside(kit, OrderCancelled("o-1"))
    assert kit.saga("o-1", "held").status == "compensated"  # nothing was done yet
    kit.reply(charge, Charged("o-1"))
    assert kit.sent_types()[-1] == "payments.Refund"


def test_a_cancel_event_for_a_compensating_saga_is_journaled_as_ignored(kit: WorkflowTestKit) -> None:
    _charged(kit)
    _outside(kit, OrderCancelled("o-1"))
    kit.take_sent()
    before = len(kit.journal(kit.saga("o-1", "held")))
    assert _outside(kit, OrderCancelled("o-1")) == [Verdict.ACCEPTED]
    entries = kit.journal(kit.saga("o-1", "held"))
    assert len(entries) == before + 1
    assert entries[-1].decision["outcome"] == "ignored"
    assert "already compensating" in entries[-1].decision["reason"]
    assert kit.take_sent() == []


def test_a_cancel_event_for_a_finished_saga_is_acked_and_counted_not_journaled(kit: WorkflowTestKit) -> None:
    _charged(kit)
    kit.advance(timedelta(days=3, seconds=1))
    kit.publish(Approved("o-1"), message_id=str(uuid.uuid4()))
    (ship,) = kit.take_sent()
    kit.reply(ship, Shipped("o-1"))
    saga = kit.saga("o-1", "held")
    assert saga.status == "completed"
    journaled = len(kit.journal(saga))
    assert _outside(kit, OrderCancelled("o-1")) == [Verdict.ACCEPTED]
    assert len(kit.journal(saga)) == journaled
    assert kit.saga("o-1", "held").version == saga.version
    assert kit.bus.counts.cancels_after_finish == {"held": 1}


def test_a_cancel_event_is_taken_without_a_reply_id_and_nothing_else_is(kit: WorkflowTestKit) -> None:
    """The reply check exempts declared cancel events and approvals: a made-up id is refused for
    anything else."""
    _charged(kit)
    kit.advance(timedelta(days=3, seconds=1))
    assert kit.saga("o-1", "held").state == "approve"
    assert _outside(kit, Shipped("o-1")) == [Verdict.DEAD]
    assert kit.saga("o-1", "held").state == "approve"
    assert _outside(kit, Approved("o-1")) == [Verdict.ACCEPTED]
    assert kit.saga("o-1", "held").state == "ship"


def test_a_cancel_event_cannot_also_be_a_reply() -> None:
    workflow = Workflow("w", starts_on=Placed, key="order_id")
    workflow.state("charge", send=Charge, deadline=timedelta(seconds=5), on_deadline="failed")
    workflow.on(OrderCancelled, source="charge", dest="done")
    workflow.state("done", final=True)
    workflow.state("failed", final=True, status="failed")  # type: ignore[arg-type]
    workflow.cancelled_by(OrderCancelled)
    with pytest.raises(DefinitionError, match="cancels the saga"):
        CompiledWorkflow(workflow)
    (finding,) = [f for f in check(workflow) if f.severity == "error"]
    assert finding.code == "refused" and "cancels the saga" in finding.message
    with pytest.raises(DefinitionError, match="starts the saga"):
        Workflow("v", starts_on=Placed, key="order_id").cancelled_by(Placed)


# -- waits -------------------------------------------------------------------------------------


def test_a_wait_holds_the_saga_for_its_duration_then_moves_on(kit: WorkflowTestKit) -> None:
    _charged(kit)
    saga = kit.saga("o-1", "held")
    assert saga.state == "hold" and kit.take_sent() == []
    kit.advance(timedelta(days=2, hours=23))
    assert kit.saga("o-1", "held").state == "hold"
    kit.advance(timedelta(hours=1))
    saga = kit.saga("o-1", "held")
    assert saga.state == "approve" and saga.status == "running"
    assert kit.take_sent() == []  # nothing undone: a wait's end is its way on
    assert kit.replay_differences(saga) == []


def test_an_operator_ends_a_wait_early_and_a_cancel_during_it_compensates(kit: WorkflowTestKit) -> None:
    _charged(kit, "early")
    kit.act(kit.saga("early", "held"), "fire-deadline")
    assert kit.saga("early", "held").state == "approve"
    _charged(kit, "cancelled")
    kit.take_sent()
    kit.act(kit.saga("cancelled", "held"), "cancel")
    assert kit.saga("cancelled", "held").state == "compensating_charge"
    assert kit.sent_types() == ["payments.Refund"]


def test_a_wait_until_a_time_in_the_data(kit: WorkflowTestKit) -> None:
    kit.publish(Scheduled("o-1", release_at=(NOW + timedelta(hours=5)).isoformat()))
    (charge,) = kit.take_sent()
    kit.reply(charge, Charged("o-1"))
    assert kit.saga("o-1", "release_at").state == "hold"
    kit.advance(timedelta(hours=4, minutes=59))
    assert kit.saga("o-1", "release_at").state == "hold"
    kit.advance(timedelta(minutes=1))
    assert kit.saga("o-1", "release_at").state == "ship"
    # a time already passed (and one without an offset, read as UTC) ends the wait at once
    kit.publish(Scheduled("o-2", release_at="2020-01-01T00:00:00"))
    (charge,) = [c for c in kit.take_sent() if c.payload["order_id"] == "o-2"]
    kit.reply(charge, Charged("o-2"))
    kit.advance(timedelta(0))
    assert kit.saga("o-2", "release_at").state == "ship"


def test_a_wait_until_a_time_the_data_does_not_hold_fails_the_saga_saying_so(kit: WorkflowTestKit) -> None:
    kit.publish(Scheduled("o-1", release_at="next tuesday"))
    (charge,) = kit.take_sent()
    kit.reply(charge, Charged("o-1"))
    saga = kit.saga("o-1", "release_at")
    assert saga.status == "failed"
    assert "hold waits until release_at, and 'next tuesday' is no ISO 8601 time" in (saga.last_error or "")


def test_a_wait_for_an_outside_event_moves_on_or_compensates(kit: WorkflowTestKit) -> None:
    for key in ("approved", "rejected", "late"):
        _charged(kit, key)
    kit.advance(timedelta(days=3, seconds=1))
    kit.take_sent()
    _outside(kit, Approved("approved"))
    assert kit.saga("approved", "held").state == "ship"
    assert kit.sent_types() == ["shipping.Ship"]
    _outside(kit, Rejected("rejected"))
    assert kit.saga("rejected", "held").state == "compensating_charge"
    assert kit.sent_types() == ["shipping.Ship", "payments.Refund"]
    kit.take_sent()
    kit.advance(timedelta(days=1))
    assert kit.saga("late", "held").state == "compensating_charge"


def test_wait_refuses_what_is_no_wait() -> None:
    with pytest.raises(DefinitionError, match="exactly one"):
        wait()
    with pytest.raises(DefinitionError, match="exactly one"):
        wait(days=1, until="release_at")
    with pytest.raises(DefinitionError, match="not both"):
        wait(timedelta(days=1), hours=2)
    with pytest.raises(DefinitionError, match="> 0"):
        wait(timedelta(0))


# -- what reads a definition -------------------------------------------------------------------


def test_check_diagram_and_fingerprint_know_waits_and_cancel_events() -> None:
    workflow = HeldOrderSaga.workflow
    assert [f for f in check(workflow) if f.severity == "error"] == []
    assert not any(f.code == "unhandled_event" for f in check(workflow))
    diagram = mermaid(workflow, CompiledWorkflow(workflow).moves)
    assert "hold --> approve: wait 3d" in diagram
    assert "hold --> compensating_charge: cancel / customer.OrderCancelled" in diagram
    assert "approve --> compensating_charge: deadline 1d / cancel / customer.OrderCancelled" in diagram
    assert "hold --> ship: wait until release_at" in mermaid(ReleaseAtSaga.workflow)
    assert "approve --> ship: approvals.Approved" in diagram
    assert HeldOrderSaga.workflow.signals == {"approvals.Approved", "approvals.Rejected"}


def test_the_bundled_workflows_keep_their_fingerprints() -> None:
    """Definitions that use none of the constructs of issue 28 fingerprint as before it: a
    running deployment's releases stay valid."""
    assert OrderSaga.workflow.fingerprint() == "a0d8c36a24f4704e"
    assert escrow.fingerprint() == "7aa03504ce7fa989"


def test_a_cancel_event_for_a_failed_saga_is_kept_and_a_resume_cancels_it() -> None:
    class FragileSaga(Saga, starts_on=Placed, key="order_id", name="fragile", cancel_on=OrderCancelled):
        @step(done=Charged, deadline=timedelta(seconds=30))
        def charge(self, order: Placed) -> Charge:
            return Charge(order.order_id)

        @charge.compensate(done=Refunded)
        def refund(self, order: Placed) -> Refund:
            return Refund(order.order_id)

        @step(done=Shipped, deadline=timedelta(seconds=30))
        def ship(self, order: Placed) -> Ship:
            if self.data.get("broken", True):
                raise RuntimeError("the shipping builder is broken")
            return Ship(order.order_id)

    kit = WorkflowTestKit(FragileSaga.workflow, now=NOW)
    try:
        _charged(kit)
        saga = kit.saga("o-1")
        assert (saga.state, saga.status) == ("charge", "failed")  # ship's builder raised
        assert _outside(kit, OrderCancelled("o-1", "too slow")) == [Verdict.ACCEPTED]
        assert kit.journal(kit.saga("o-1"))[-1].decision["outcome"] == "parked"
        kit.act(kit.saga("o-1"), "resume", step="ship")  # the fix is deployed; the customer left
        assert kit.sent_types() == ["payments.Refund"]  # cancelled from ship: nothing shipped
        saga = kit.saga("o-1")
        assert (saga.state, saga.parked) == ("compensating_charge", ())
        assert kit.replay_differences(saga) == []
    finally:
        kit.close()


def test_an_event_from_outside_cannot_also_be_a_reply() -> None:
    with pytest.raises(DefinitionError, match="cannot also be a reply of charge"):

        class Confused(Saga, starts_on=Placed, key="order_id", name="confused"):
            @step(done=Charged)
            def charge(self, order: Placed) -> Charge:
                return Charge(order.order_id)

            approve = wait_for(Charged, deadline=timedelta(days=1))

    from orchestrator import parallel

    with pytest.raises(DefinitionError, match="cannot also be a reply"):

        class Cancelling(Saga, starts_on=Placed, key="order_id", name="cancelling", cancel_on=Charged):
            @step(done=Charged)
            def charge(self, order: Placed) -> Charge:
                return Charge(order.order_id)

            @step(done=Shipped)
            def ship(self, order: Placed) -> Ship:
                return Ship(order.order_id)

            both = parallel(charge, ship)
