"""Operators and late confirmations (issue 11, items 5-8): a compensation confirmed after its
deadline, resume's default step, message ids and ``timed_out``, and retry's attempt count; each
checked against replay, including journals written before these rules."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from orchestrator import Command, Event, Saga, step
from orchestrator.core import engine
from orchestrator.core.definitions import Status
from orchestrator.core.engine import Decision, Outcome
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.service.operations import ActionRefused, BadRequest
from orchestrator.testing import OutgoingCommand, SagaSnapshot, WorkflowTestKit
from tests.unit.trips import BookFlight, CancelFlight, FlightBooked, FlightCancelled, TripRequested


@dataclass(frozen=True)
class FlightNotCancelled(Event):
    TYPE = "flights.FlightNotCancelled"
    trip_id: str


@dataclass(frozen=True)
class ChargeCard(Command):
    TYPE = "cards.ChargeCard"
    trip_id: str


@dataclass(frozen=True)
class CardCharged(Event):
    TYPE = "cards.CardCharged"
    trip_id: str


@dataclass(frozen=True)
class RefundCard(Command):
    TYPE = "cards.RefundCard"
    trip_id: str


class TripSaga(Saga, starts_on=TripRequested, key="trip_id"):
    @step(done=FlightBooked, deadline=timedelta(seconds=30))
    def flight(self, trip: TripRequested) -> BookFlight:
        return BookFlight(trip.trip_id)

    @flight.compensate(done=FlightCancelled, failed=FlightNotCancelled, deadline=timedelta(minutes=1))
    def cancel_flight(self, trip: TripRequested) -> CancelFlight:
        return CancelFlight(trip.trip_id)

    @step(done=CardCharged, deadline=timedelta(minutes=2))
    def charge(self, trip: TripRequested) -> ChargeCard:
        return ChargeCard(trip.trip_id)

    @charge.compensate
    def refund(self, trip: TripRequested) -> RefundCard:
        return RefundCard(trip.trip_id)


WORKFLOW = TripSaga.workflow


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    made = WorkflowTestKit(WORKFLOW)
    yield made
    made.close()


def at_charge(kit: WorkflowTestKit) -> tuple[SagaSnapshot, OutgoingCommand]:
    kit.publish(TripRequested("t-1", "Oslo"))
    (book,) = kit.take_sent()
    kit.reply(book, FlightBooked("t-1"))
    (charge,) = kit.take_sent()
    assert charge.type == "cards.ChargeCard"
    return kit.saga("t-1"), charge


def failed_on_the_cancel_deadline(
    kit: WorkflowTestKit,
) -> tuple[SagaSnapshot, OutgoingCommand, OutgoingCommand]:
    """charge times out, the flight's cancel is sent, its deadline passes: the saga failed."""
    _, charge = at_charge(kit)
    kit.advance(timedelta(minutes=2, seconds=1))
    (cancel,) = kit.take_sent()
    assert cancel.type == "flights.CancelFlight"
    kit.advance(timedelta(minutes=1, seconds=1))
    failed = kit.saga("t-1")
    assert (failed.state, failed.status) == ("failed", Status.FAILED)
    return failed, charge, cancel


def test_a_saga_failed_on_a_compensation_deadline_remembers_where_and_what_it_waited_on(kit):
    failed, _, cancel = failed_on_the_cancel_deadline(kit)

    assert failed.timed_out == ("charge", "compensating_flight")
    assert [c["message_id"] for c in failed.awaiting] == [cancel.message_id]
    assert kit.replay_differences(failed) == []


def test_resume_without_a_step_starts_where_a_compensation_deadline_failed_the_saga(kit):
    failed, _, cancel = failed_on_the_cancel_deadline(kit)

    applied = kit.act(failed, "resume", actor="carol")

    assert (applied.saga.state, applied.saga.status) == ("compensating_flight", Status.COMPENSATING)
    # the cancel again, with its message id: a participant that took it takes it as a duplicate
    assert [(c.type, c.message_id) for c in applied.commands] == [(cancel.type, cancel.message_id)]
    assert applied.saga.timed_out == ("charge",)  # a late CardCharged is still refunded
    assert kit.replay_differences(applied.saga) == []

    kit.reply(cancel, FlightCancelled("t-1"))
    assert kit.saga("t-1").status == Status.COMPENSATED


def test_resume_as_a_new_attempt_sends_the_cancel_with_a_new_message_id(kit):
    failed, _, cancel = failed_on_the_cancel_deadline(kit)

    applied = kit.act(failed, "resume", new_attempt=True)

    (again,) = applied.commands
    assert again.type == cancel.type and again.message_id != cancel.message_id
    assert kit.journal(applied.saga)[-1].message.payload == {"new_attempt": True}
    assert kit.replay_differences(applied.saga) == []


def test_a_late_confirmation_of_the_given_up_compensation_carries_the_saga_on(kit):
    _, _, cancel = failed_on_the_cancel_deadline(kit)

    kit.reply(cancel, FlightCancelled("t-1"))

    done = kit.saga("t-1")
    assert (done.state, done.status, done.last_error) == ("compensated", Status.COMPENSATED, None)
    assert done.timed_out == ("charge",)
    entry = kit.journal(done)[-1]
    assert (entry.decision["outcome"], entry.decision["from"]) == ("moved", "failed")
    assert (
        entry.decision["reason"] == "flights.FlightCancelled confirmed compensating_flight after its deadline"
    )
    assert kit.dead == []
    assert kit.replay_differences(done) == []


def test_a_late_failure_of_the_given_up_compensation_leaves_the_saga_failed(kit):
    _, _, cancel = failed_on_the_cancel_deadline(kit)

    kit.reply(cancel, FlightNotCancelled("t-1"))

    still = kit.saga("t-1")
    assert (still.state, still.status) == ("failed", Status.FAILED)
    assert kit.journal(still)[-1].decision["outcome"] == "ignored"
    assert kit.replay_differences(still) == []


def test_resume_into_a_timed_out_step_forgets_that_it_timed_out(kit):
    failed, _, _ = failed_on_the_cancel_deadline(kit)

    applied = kit.act(failed, "resume", step="charge")
    assert applied.saga.timed_out == ()
    (charge,) = kit.take_sent()
    kit.reply(charge, CardCharged("t-1"))

    done = kit.saga("t-1")
    assert (done.state, done.status) == ("completed", Status.COMPLETED)
    assert [c.type for c in kit.take_sent()] == []  # no refund of the charge it asked for
    assert kit.replay_differences(done) == []


def test_an_operator_retry_counts_as_a_resend_and_keeps_the_message_id_unless_asked(kit):
    saga, charge = at_charge(kit)

    first = kit.act(saga, "retry", reason="card service back")
    assert [c.message_id for c in first.commands] == [charge.message_id]
    assert first.saga.attempt == 1

    second = kit.act(first.saga, "retry", new_attempt=True)
    (fresh,) = second.commands
    assert fresh.message_id != charge.message_id
    assert second.saga.attempt == 2
    assert [c["message_id"] for c in second.saga.awaiting] == [fresh.message_id]
    assert kit.replay_differences(second.saga) == []


def test_new_attempt_is_only_for_retry_and_resume(kit):
    saga, _ = at_charge(kit)

    with pytest.raises(BadRequest, match="new_attempt"):
        kit.act(saga, "cancel", new_attempt=True)


def test_resume_without_a_step_is_still_refused_where_the_saga_failed_otherwise(kit):
    failed, _, cancel = failed_on_the_cancel_deadline(kit)
    kit.act(failed, "resume")
    kit.reply(cancel, FlightNotCancelled("t-1"))  # a failure in time: the failed state, no deadline
    failed = kit.saga("t-1")

    with pytest.raises(ActionRefused, match="failed is a final state"):
        kit.act(failed, "resume")


# Journals written before these rules -------------------------------------------------------------
@pytest.fixture
def before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decide and journal as the engine did before these rules: ``before_operators`` for every
    message, and no ``operators`` mark in the journal."""
    decide, summary = engine.decide, Decision.summary

    def old_decide(*args: Any, **kwargs: Any) -> Decision:
        return decide(*args, **{**kwargs, "before_operators": True})

    def old_summary(self: Decision) -> dict[str, Any]:
        return {k: v for k, v in summary(self).items() if k != "operators"}

    monkeypatch.setattr("orchestrator.service.batch.decide", old_decide)
    monkeypatch.setattr("orchestrator.service.operations.decide", old_decide)
    monkeypatch.setattr(Decision, "summary", old_summary)


def test_replay_rebuilds_a_journal_written_before_these_rules(kit, before):
    failed, charge, cancel = failed_on_the_cancel_deadline(kit)
    assert (failed.timed_out, failed.awaiting) == (("charge",), ())  # nothing remembered then
    kit.reply(cancel, FlightCancelled("t-1"))  # ignored then
    failed = kit.saga("t-1")
    resumed = kit.act(failed, "resume", step="charge")
    assert resumed.saga.timed_out == ("charge",)  # kept then
    (again,) = kit.take_sent()
    assert again.message_id not in (charge.message_id, cancel.message_id)
    kit.reply(again, CardCharged("t-1"))  # taken as the late success then: refunded
    assert kit.saga("t-1").state == "charge"
    retried = kit.act(kit.saga("t-1"), "retry")
    assert retried.saga.attempt == 0  # not counted then

    saga = kit.saga("t-1")
    assert all("operators" not in e.decision for e in kit.journal(saga))
    assert kit.replay_differences(saga) == []


def test_replay_rebuilds_a_journal_begun_before_these_rules_and_continued_after(kit, monkeypatch):
    with monkeypatch.context() as old:
        decide, summary = engine.decide, Decision.summary
        old.setattr(
            "orchestrator.service.batch.decide", lambda *a, **k: decide(*a, **{**k, "before_operators": True})
        )
        old.setattr(
            Decision, "summary", lambda self: {k: v for k, v in summary(self).items() if k != "operators"}
        )
        failed, _, cancel = failed_on_the_cancel_deadline(kit)

    # a saga failed before: nothing says where, so resume needs its step, as it did
    with pytest.raises(ActionRefused, match="failed is a final state"):
        kit.act(failed, "resume")
    resumed = kit.act(failed, "resume", step="compensating_flight")
    assert resumed.saga.timed_out == ("charge",)
    kit.reply(cancel, FlightCancelled("t-1"))  # a reply to the old id still moves it

    done = kit.saga("t-1")
    assert done.status == Status.COMPENSATED
    assert kit.replay_differences(done) == []
    assert kit.journal(done)[-1].decision["outcome"] == Outcome.MOVED


def test_skip_takes_an_outcome_of_the_compensation_the_failed_saga_gave_up_on(kit):
    failed, _, _ = failed_on_the_cancel_deadline(kit)

    with pytest.raises(ActionRefused, match="not an outcome of compensating_flight"):
        kit.act(failed, "skip", outcome="cards.CardCharged")
    applied = kit.act(failed, "skip", outcome="flights.FlightCancelled", reason="cancelled by phone")

    assert (applied.saga.state, applied.saga.status) == ("compensated", Status.COMPENSATED)
    assert kit.journal(applied.saga)[-1].decision["from"] == "failed"
    assert kit.replay_differences(applied.saga) == []


def test_after_a_late_failure_of_the_compensation_resume_sends_it_anew(kit):
    """Its reply was taken: the same message id again would bring back only a duplicate of it,
    and the saga would wait out its deadline for nothing."""
    _, _, cancel = failed_on_the_cancel_deadline(kit)
    kit.reply(cancel, FlightNotCancelled("t-1"))
    failed = kit.saga("t-1")
    assert failed.awaiting == ()

    applied = kit.act(failed, "resume", step="compensating_flight")

    (again,) = applied.commands
    assert again.type == cancel.type and again.message_id != cancel.message_id
    assert kit.replay_differences(applied.saga) == []


# a skip whose move fails leaves the saga where it failed ------------------------------------------------
@dataclass(frozen=True)
class CardRefunded(Event):
    TYPE = "cards.CardRefunded"
    trip_id: str


class BrittleTripSaga(Saga, starts_on=TripRequested, key="trip_id", name="brittle"):
    """The flight's cancel cannot be built: reached after the card's refund, the saga fails."""

    @step(done=FlightBooked)
    def flight(self, trip: TripRequested) -> BookFlight:
        return BookFlight(trip.trip_id)

    @flight.compensate(done=FlightCancelled)
    def cancel_flight(self, trip: TripRequested) -> CancelFlight:
        raise RuntimeError("the flight desk is closed")

    @step(done=CardCharged)
    def charge(self, trip: TripRequested) -> ChargeCard:
        return ChargeCard(trip.trip_id)

    @charge.compensate(done=CardRefunded, deadline=timedelta(minutes=1))
    def refund(self, trip: TripRequested) -> RefundCard:
        return RefundCard(trip.trip_id)

    @step(done=FlightBooked, deadline=timedelta(minutes=1))
    def confirm(self, trip: TripRequested) -> BookFlight:
        return BookFlight(trip.trip_id)


def test_a_skip_on_a_given_up_compensation_whose_move_fails_leaves_the_saga_where_it_was() -> None:
    kit = WorkflowTestKit(BrittleTripSaga.workflow)
    try:
        kit.publish(TripRequested("t-1", "Oslo"))
        kit.reply(kit.take_sent()[0], FlightBooked("t-1"))
        kit.reply(kit.take_sent()[0], CardCharged("t-1"))
        kit.advance(timedelta(minutes=1, seconds=1))  # confirm times out: refund is sent
        kit.advance(timedelta(minutes=1, seconds=1))  # and not confirmed: the saga failed
        failed = kit.saga("t-1")
        assert (failed.state, failed.status, failed.timed_out) == (
            "failed",
            Status.FAILED,
            ("compensating_charge",),
        )

        applied = kit.act(failed, "skip", outcome="cards.CardRefunded", reason="refunded by hand")

        after = applied.saga
        assert [d.outcome for d in applied.decisions] == [Outcome.FAILED]
        assert (after.state, after.status) == ("failed", Status.FAILED)  # not inside the compensation
        assert after.timed_out == failed.timed_out  # so resume still starts in compensating_charge
        assert after.last_error == "RuntimeError: the flight desk is closed"
        assert kit.replay_differences(after) == []
    finally:
        kit.close()


# a late success's undo reads that success's fields ------------------------------------------------------
@dataclass(frozen=True)
class SeatHeld(Event):
    TYPE = "seats.SeatHeld"
    trip_id: str
    hold_id: str


@dataclass(frozen=True)
class HoldSeat(Command):
    TYPE = "seats.HoldSeat"
    trip_id: str


@dataclass(frozen=True)
class ReleaseHold(Command):
    TYPE = "seats.ReleaseHold"
    trip_id: str
    hold_id: str


class HeldTripSaga(Saga, starts_on=TripRequested, key="trip_id", name="held_trip"):
    @step(done=SeatHeld, deadline=timedelta(seconds=30))
    def seat(self, trip: TripRequested) -> HoldSeat:
        return HoldSeat(trip.trip_id)

    @seat.compensate
    def release_hold(self, trip: TripRequested) -> ReleaseHold:
        return ReleaseHold(trip.trip_id, hold_id=self.data["hold_id"])  # SeatHeld's


def test_a_success_after_its_deadline_is_undone_with_its_own_fields() -> None:
    """The undo of a late success names what it undoes: the hold's id came with that success.
    It used to be built from the data as it was, without it, and the saga failed instead."""
    kit = WorkflowTestKit(HeldTripSaga.workflow)
    try:
        kit.publish(TripRequested("t-1", "Oslo"))
        (hold,) = kit.take_sent()
        kit.advance(timedelta(seconds=31))  # the deadline gives up on the seat: compensated
        assert kit.saga("t-1").status == Status.COMPENSATED

        kit.reply(hold, SeatHeld("t-1", "h-9"))

        (release,) = [c for c in kit.take_sent() if c.type == "seats.ReleaseHold"]
        assert dict(release.payload) == {"trip_id": "t-1", "hold_id": "h-9"}
        saga = kit.saga("t-1")
        assert (saga.status, saga.data["hold_id"]) == (Status.COMPENSATED, "h-9")
        assert kit.journal(saga)[-1].decision["merged"] == ["hold_id"]
        assert kit.replay_differences(saga) == []
    finally:
        kit.close()


def test_a_late_undo_journaled_before_that_replays_as_it_was_decided() -> None:
    kit = WorkflowTestKit(HeldTripSaga.workflow)
    try:
        kit.publish(TripRequested("t-1", "Oslo"))
        kit.advance(timedelta(seconds=31))
        saga = kit.saga("t-1")
        message = engine.Incoming(SeatHeld.TYPE, "m-late", {"trip_id": "t-1", "hold_id": "h-9"})

        compiled = CompiledWorkflow(HeldTripSaga.workflow)
        old = engine.decide(compiled, saga, message, saga.updated_at, late_merge=False)

        assert old.outcome is Outcome.FAILED  # the builder found no hold_id, as it did then
    finally:
        kit.close()
