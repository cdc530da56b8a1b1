"""Issue 28, item 2b: the undo of a late success is a compensation like any other: awaited on a
branch of the saga, retried, bounded by its deadline, confirmed by its reply id alone, and a
saga whose undo is refused or never confirmed is failed for an operator; journals decided
before replay as they were."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from orchestrator import Command, Event, Retry, Saga, step
from orchestrator.core import engine
from orchestrator.core.engine import Outcome
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.testing import OutgoingCommand, SagaSnapshot, Verdict, WorkflowTestKit
from tests.unit.trips import BookFlight, CancelFlight, FlightBooked, FlightCancelled, TripRequested


@dataclass(frozen=True)
class ChargeCard(Command):
    TYPE = "cards.ChargeCard"
    trip_id: str


@dataclass(frozen=True)
class CardCharged(Event):
    TYPE = "cards.CardCharged"
    trip_id: str
    charge_id: str = ""


@dataclass(frozen=True)
class RefundCard(Command):
    TYPE = "cards.RefundCard"
    trip_id: str
    charge_id: str


@dataclass(frozen=True)
class CardRefunded(Event):
    TYPE = "cards.CardRefunded"
    trip_id: str


@dataclass(frozen=True)
class RefundRefused(Event):
    TYPE = "cards.RefundRefused"
    trip_id: str


class TripSaga(Saga, starts_on=TripRequested, key="trip_id"):
    @step(done=FlightBooked, deadline=timedelta(seconds=30))
    def flight(self, trip: TripRequested) -> BookFlight:
        return BookFlight(trip.trip_id)

    @flight.compensate(done=FlightCancelled, deadline=timedelta(minutes=1))
    def cancel_flight(self, trip: TripRequested) -> CancelFlight:
        return CancelFlight(trip.trip_id)

    @step(done=CardCharged, deadline=timedelta(minutes=2))
    def charge(self, trip: TripRequested) -> ChargeCard:
        return ChargeCard(trip.trip_id)

    @charge.compensate(
        done=CardRefunded,
        failed=RefundRefused,
        deadline=timedelta(hours=1),
        retry=Retry(every=timedelta(minutes=5), backoff=1.0),
    )
    def refund(self, trip: TripRequested) -> RefundCard:
        return RefundCard(trip.trip_id, str(self.data["charge_id"]))


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    made = WorkflowTestKit(TripSaga.workflow)
    yield made
    made.close()


def charge_given_up(kit: WorkflowTestKit) -> OutgoingCommand:
    """The charge's deadline passed and the flight was cancelled: the saga is compensated."""
    kit.publish(TripRequested("t-1", "Oslo"))
    (book,) = kit.take_sent()
    kit.reply(book, FlightBooked("t-1"))
    (charge,) = kit.take_sent()
    kit.advance(timedelta(minutes=2))
    (cancel,) = kit.take_sent()
    kit.reply(cancel, FlightCancelled("t-1"))
    assert kit.saga("t-1").status == "compensated"
    return charge


def late_refund(kit: WorkflowTestKit) -> OutgoingCommand:
    charge = charge_given_up(kit)
    kit.reply(charge, CardCharged("t-1", "ch-7"))
    (refund,) = kit.take_sent()
    assert (refund.type, refund.payload["charge_id"]) == ("cards.RefundCard", "ch-7")
    return refund


def branch(saga: SagaSnapshot) -> dict[str, object]:
    (only,) = saga.branches
    return dict(only)


def test_the_undo_of_a_late_success_is_awaited_and_its_confirmation_closes_the_saga_again(
    kit: WorkflowTestKit,
) -> None:
    refund = late_refund(kit)
    saga = kit.saga("t-1")
    assert (saga.state, saga.status) == ("compensated", "compensating")  # open until confirmed
    assert branch(saga)["name"] == f"undo:charge:{refund.message_id}"
    assert kit.replay_differences(saga) == []  # its timers too: the journal gives them
    assert kit.journal(saga)[-1].decision["outcome"] == "late_undone"

    kit.advance(timedelta(minutes=5))  # its retry: the same command, the same message id
    assert [c.message_id for c in kit.take_sent()] == [refund.message_id]
    assert branch(kit.saga("t-1"))["attempt"] == 1

    kit.reply(refund, CardRefunded("t-1"))
    saga = kit.saga("t-1")
    assert (saga.state, saga.status, saga.branches) == ("compensated", "compensated", ())
    assert kit.journal(saga)[-1].decision["outcome"] == "moved"  # counted finished before: not "settled"
    kit.advance(timedelta(hours=2))  # its timers went with it: nothing more is sent or failed
    assert kit.take_sent() == [] and kit.saga("t-1").status == "compensated"
    assert kit.bus.counts.sagas_finished[("trip", "compensated")] == 1  # finished once
    assert kit.replay_differences(kit.saga("t-1")) == []


def test_a_refused_undo_fails_the_saga_for_an_operator_who_retries_it(kit: WorkflowTestKit) -> None:
    refund = late_refund(kit)
    kit.reply(refund, RefundRefused("t-1"))
    saga = kit.saga("t-1")
    assert saga.status == "failed" and branch(saga)["refused"] is True
    assert "the undo of charge's late success was refused" in (saga.last_error or "")
    kit.act(saga, "retry", branch=str(branch(saga)["name"]))  # sent anew: the refusal was an answer
    (again,) = kit.take_sent()
    assert again.type == "cards.RefundCard" and again.message_id != refund.message_id
    kit.publish(CardRefunded("t-1"))  # the kit gives it the branch's reply id
    saga = kit.saga("t-1")
    assert (saga.status, saga.last_error, saga.branches) == ("compensated", None, ())
    assert kit.replay_differences(saga) == []


def test_a_refused_undo_while_the_saga_compensates_loses_none_of_its_replies(kit: WorkflowTestKit) -> None:
    kit.publish(TripRequested("t-1", "Oslo"))
    (book,) = kit.take_sent()
    kit.reply(book, FlightBooked("t-1"))
    (charge,) = kit.take_sent()
    kit.advance(timedelta(minutes=2))
    (cancel,) = kit.take_sent()
    kit.reply(charge, CardCharged("t-1", "ch-7"))
    (refund,) = kit.take_sent()
    kit.reply(refund, RefundRefused("t-1"))
    assert kit.saga("t-1").status == "compensating"  # it goes on undoing the flight
    kit.reply(cancel, FlightCancelled("t-1"))  # taken, not lost to a failed status
    saga = kit.saga("t-1")
    assert (saga.state, saga.status) == ("compensated", "failed")  # for an operator, at its end
    assert kit.take_sent() == []
    assert kit.replay_differences(saga) == []


def test_an_undo_unconfirmed_by_its_deadline_fails_the_saga_and_a_late_confirmation_settles_it(
    kit: WorkflowTestKit,
) -> None:
    refund = late_refund(kit)
    kit.advance(timedelta(hours=1))
    saga = kit.saga("t-1")
    assert saga.status == "failed"
    assert "no cards.CardRefunded for cards.RefundCard" in (saga.last_error or "")
    assert branch(saga)["given_up"] is True
    kit.take_sent()
    kit.advance(timedelta(hours=1))
    assert kit.take_sent() == []  # given up: no more resends

    kit.reply(refund, CardRefunded("t-1"))
    saga = kit.saga("t-1")
    assert (saga.status, saga.last_error, saga.branches) == ("compensated", None, ())
    assert kit.replay_differences(saga) == []


def test_a_late_success_while_the_saga_compensates_waits_beside_it(kit: WorkflowTestKit) -> None:
    kit.publish(TripRequested("t-1", "Oslo"))
    (book,) = kit.take_sent()
    kit.reply(book, FlightBooked("t-1"))
    (charge,) = kit.take_sent()
    kit.advance(timedelta(minutes=2))
    (cancel,) = kit.take_sent()
    kit.reply(charge, CardCharged("t-1", "ch-7"))  # while the flight is being cancelled
    (refund,) = kit.take_sent()
    assert kit.saga("t-1").state == "compensating_flight"
    kit.reply(cancel, FlightCancelled("t-1"))
    saga = kit.saga("t-1")
    assert (saga.state, saga.status) == ("compensated", "compensating")  # the refund still waits
    assert kit.bus.counts.sagas_finished == {}
    kit.reply(refund, CardRefunded("t-1"))
    saga = kit.saga("t-1")
    assert saga.status == "compensated" and kit.journal(saga)[-1].decision["outcome"] == "settled"
    assert kit.bus.counts.sagas_finished[("trip", "compensated")] == 1
    assert kit.replay_differences(kit.saga("t-1")) == []


def test_an_undo_is_confirmed_by_its_reply_id_never_by_its_type(kit: WorkflowTestKit) -> None:
    late_refund(kit)
    result = kit.publish(CardRefunded("t-1"), message_id=str(uuid.uuid4()))
    assert result.verdicts == [Verdict.DEAD]
    assert kit.saga("t-1").status == "compensating"


def test_a_late_undo_decided_before_it_was_awaited_replays_as_it_was() -> None:
    kit = WorkflowTestKit(TripSaga.workflow)
    try:
        charge = charge_given_up(kit)
        saga = kit.saga("t-1")
        reply = engine.reply_id_for(charge.message_id, CardCharged.TYPE)
        message = engine.Incoming(CardCharged.TYPE, reply, {"trip_id": "t-1", "charge_id": "ch-7"})
        compiled = CompiledWorkflow(TripSaga.workflow)
        old = engine.decide(compiled, saga, message, saga.updated_at or kit.now, awaited_undo=False)
        assert old.outcome is Outcome.LATE_UNDONE
        assert (old.saga.status, old.saga.branches, old.timers) == ("compensated", (), ())
        new = engine.decide(compiled, saga, message, saga.updated_at or kit.now)
        assert (new.saga.status, len(new.saga.branches)) == ("compensating", 1)
        assert new.summary()["operators"] == 4
    finally:
        kit.close()
