"""Issue 28, item 1: parallel steps. A group's commands go out in one decision; the saga moves
on when every branch is done; a failing or timed-out branch compensates the branches done (all
at once, or newest first), waits for those in flight and undoes a success that still comes;
replies are matched to branches by their reply id, never by type."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from orchestrator import Command, Event, Saga, parallel, step
from orchestrator.core.checks import check
from orchestrator.core.engine import Incoming, Outcome, decide
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.service.operations import BadRequest
from orchestrator.testing import ActionRefused, OutgoingCommand, Verdict, WorkflowTestKit
from tests.unit.trips import BookFlight, CancelFlight, FlightBooked, FlightCancelled, TripRequested


@dataclass(frozen=True)
class FlightFull(Event):
    TYPE = "flights.FlightFull"
    trip_id: str


@dataclass(frozen=True)
class BookRoom(Command):
    TYPE = "hotels.BookRoom"
    trip_id: str
    night: int


@dataclass(frozen=True)
class RoomBooked(Event):
    TYPE = "hotels.RoomBooked"
    trip_id: str


@dataclass(frozen=True)
class CancelRoom(Command):
    TYPE = "hotels.CancelRoom"
    trip_id: str
    night: int


@dataclass(frozen=True)
class RoomCancelled(Event):
    TYPE = "hotels.RoomCancelled"
    trip_id: str


@dataclass(frozen=True)
class RoomNotCancelled(Event):
    TYPE = "hotels.RoomNotCancelled"
    trip_id: str


@dataclass(frozen=True)
class RentCar(Command):
    TYPE = "cars.RentCar"
    trip_id: str


@dataclass(frozen=True)
class CarRented(Event):
    TYPE = "cars.CarRented"
    trip_id: str


@dataclass(frozen=True)
class ReturnCar(Command):
    TYPE = "cars.ReturnCar"
    trip_id: str


@dataclass(frozen=True)
class CarReturned(Event):
    TYPE = "cars.CarReturned"
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
class CardDeclined(Event):
    TYPE = "cards.CardDeclined"
    trip_id: str


class TripSaga(Saga, starts_on=TripRequested, key="trip_id", name="trip"):
    """Book a flight, two nights (the same reply type for both) and a car at once, then charge."""

    @step(done=FlightBooked, failed=FlightFull, deadline=timedelta(seconds=30))
    def flight(self, trip: TripRequested) -> BookFlight:
        return BookFlight(trip.trip_id)

    @flight.compensate(done=FlightCancelled, deadline=timedelta(minutes=5))
    def cancel_flight(self, trip: TripRequested) -> CancelFlight:
        return CancelFlight(trip.trip_id)

    @step(done=RoomBooked, deadline=timedelta(seconds=30))
    def first_night(self, trip: TripRequested) -> BookRoom:
        return BookRoom(trip.trip_id, 1)

    @first_night.compensate(done=RoomCancelled, failed=RoomNotCancelled, deadline=timedelta(minutes=5))
    def cancel_first_night(self, trip: TripRequested) -> CancelRoom:
        return CancelRoom(trip.trip_id, 1)

    @step(done=RoomBooked, deadline=timedelta(seconds=30))
    def second_night(self, trip: TripRequested) -> BookRoom:
        return BookRoom(trip.trip_id, 2)

    @second_night.compensate(done=RoomCancelled, deadline=timedelta(minutes=5))
    def cancel_second_night(self, trip: TripRequested) -> CancelRoom:
        return CancelRoom(trip.trip_id, 2)

    @step(done=CarRented, deadline=timedelta(seconds=60))
    def car(self, trip: TripRequested) -> RentCar:
        return RentCar(trip.trip_id)

    @car.compensate(done=CarReturned, deadline=timedelta(minutes=5))
    def return_car(self, trip: TripRequested) -> ReturnCar:
        return ReturnCar(trip.trip_id)

    book = parallel(flight, first_night, second_night, car)

    @step(done=CardCharged, failed=CardDeclined, deadline=timedelta(minutes=2))
    def charge(self, trip: TripRequested) -> ChargeCard:
        return ChargeCard(trip.trip_id)


class CarefulTripSaga(Saga, starts_on=TripRequested, key="trip_id", name="careful_trip"):
    """The same bookings, compensated one at a time, the latest done first."""

    flight = TripSaga.flight
    first_night = TripSaga.first_night
    car = TripSaga.car
    book = parallel(flight, first_night, car, newest_first=True)


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    made = WorkflowTestKit(TripSaga.workflow)
    yield made
    made.close()


def by_type(commands: list[OutgoingCommand]) -> dict[str, OutgoingCommand]:
    return {f"{c.type}:{c.payload.get('night', '')}": c for c in commands}


def started(kit: WorkflowTestKit) -> dict[str, OutgoingCommand]:
    result = kit.publish(TripRequested("t-1", "Oslo"))
    assert len(result.decisions) == 1  # one decision sends every command of the group
    sent = by_type(kit.take_sent())
    assert sorted(sent) == ["cars.RentCar:", "flights.BookFlight:", "hotels.BookRoom:1", "hotels.BookRoom:2"]
    saga = kit.saga("t-1")
    assert (saga.state, saga.status, saga.awaiting) == ("book", "running", ())
    assert sorted(b["name"] for b in saga.branches) == [
        "book.car",
        "book.first_night",
        "book.flight",
        "book.second_night",
    ]
    assert kit.replay_differences(saga) == []  # the branches' timers too
    return sent


def test_the_saga_moves_on_when_every_branch_is_done_whatever_the_order(kit: WorkflowTestKit) -> None:
    sent = started(kit)
    kit.reply(sent["cars.RentCar:"], CarRented("t-1"))
    kit.reply(sent["hotels.BookRoom:2"], RoomBooked("t-1"))
    kit.reply(sent["flights.BookFlight:"], FlightBooked("t-1"))
    assert kit.saga("t-1").state == "book" and kit.take_sent() == []
    kit.reply(sent["hotels.BookRoom:1"], RoomBooked("t-1"))
    saga = kit.saga("t-1")
    assert saga.state == "charge" and kit.sent_types() == ["cards.ChargeCard"]
    (charge,) = kit.take_sent()
    kit.reply(charge, CardCharged("t-1"))
    saga = kit.saga("t-1")
    assert (saga.status, saga.branches) == ("completed", ())
    assert kit.replay_differences(saga) == []


def test_two_branches_awaiting_one_reply_type_are_told_apart_by_reply_id(kit: WorkflowTestKit) -> None:
    sent = started(kit)
    kit.reply(sent["hotels.BookRoom:2"], RoomBooked("t-1"))
    phases = {b["step"]: b["phase"] for b in kit.saga("t-1").branches}
    assert (phases["first_night"], phases["second_night"]) == ("running", "done")
    kit.reply(sent["hotels.BookRoom:2"], RoomBooked("t-1"))  # the same reply again: a duplicate
    assert {b["step"]: b["phase"] for b in kit.saga("t-1").branches}["first_night"] == "running"
    # by type alone, from outside: refused
    assert kit.publish(RoomBooked("t-1"), message_id=str(uuid.uuid4())).verdicts == [Verdict.DEAD]


def test_a_failed_branch_undoes_those_done_and_waits_for_those_in_flight(kit: WorkflowTestKit) -> None:
    sent = started(kit)
    kit.reply(sent["hotels.BookRoom:1"], RoomBooked("t-1"))
    kit.reply(sent["hotels.BookRoom:2"], RoomBooked("t-1"))
    kit.reply(sent["flights.BookFlight:"], FlightFull("t-1"))
    saga = kit.saga("t-1")
    assert (saga.state, saga.status) == ("compensating_book", "compensating")
    undos = by_type(kit.take_sent())
    assert sorted(undos) == ["hotels.CancelRoom:1", "hotels.CancelRoom:2"]  # at once
    kit.reply(undos["hotels.CancelRoom:1"], RoomCancelled("t-1"))
    kit.reply(undos["hotels.CancelRoom:2"], RoomCancelled("t-1"))
    assert kit.saga("t-1").state == "compensating_book"  # the car is still in flight
    kit.reply(sent["cars.RentCar:"], CarRented("t-1"))  # it went through: undone, awaited
    (give_back,) = kit.take_sent()
    assert give_back.type == "cars.ReturnCar"
    kit.reply(give_back, CarReturned("t-1"))
    saga = kit.saga("t-1")
    assert (saga.state, saga.status, saga.branches) == ("compensated", "compensated", ())
    assert kit.replay_differences(saga) == []


def test_a_branch_in_flight_is_waited_for_until_its_deadline_then_its_late_success_is_undone(
    kit: WorkflowTestKit,
) -> None:
    sent = started(kit)
    kit.reply(sent["hotels.BookRoom:1"], RoomBooked("t-1"))
    kit.reply(sent["hotels.BookRoom:2"], RoomBooked("t-1"))
    kit.reply(sent["cars.RentCar:"], CarRented("t-1"))
    kit.advance(timedelta(seconds=30))  # the flight times out
    undos = by_type(kit.take_sent())
    assert sorted(undos) == ["cars.ReturnCar:", "hotels.CancelRoom:1", "hotels.CancelRoom:2"]
    for undo, reply in (
        (undos["cars.ReturnCar:"], CarReturned("t-1")),
        (undos["hotels.CancelRoom:1"], RoomCancelled("t-1")),
        (undos["hotels.CancelRoom:2"], RoomCancelled("t-1")),
    ):
        kit.reply(undo, reply)
    saga = kit.saga("t-1")
    assert (saga.status, saga.timed_out) == ("compensated", ("flight",))
    kit.reply(sent["flights.BookFlight:"], FlightBooked("t-1"))  # after its deadline: undone
    (cancel,) = kit.take_sent()
    assert cancel.type == "flights.CancelFlight" and kit.saga("t-1").status == "compensating"
    kit.reply(cancel, FlightCancelled("t-1"))
    assert kit.saga("t-1").status == "compensated"
    assert kit.replay_differences(kit.saga("t-1")) == []


def test_a_later_step_failing_undoes_the_whole_group(kit: WorkflowTestKit) -> None:
    sent = started(kit)
    for key, reply in (
        ("flights.BookFlight:", FlightBooked("t-1")),
        ("hotels.BookRoom:1", RoomBooked("t-1")),
        ("hotels.BookRoom:2", RoomBooked("t-1")),
        ("cars.RentCar:", CarRented("t-1")),
    ):
        kit.reply(sent[key], reply)
    (charge,) = kit.take_sent()
    kit.reply(charge, CardDeclined("t-1"))
    assert kit.saga("t-1").state == "compensating_book"
    assert sorted(c.type for c in kit.take_sent()) == [
        "cars.ReturnCar",
        "flights.CancelFlight",
        "hotels.CancelRoom",
        "hotels.CancelRoom",
    ]


def test_a_refused_compensation_fails_the_saga_for_an_operator(kit: WorkflowTestKit) -> None:
    sent = started(kit)
    kit.reply(sent["hotels.BookRoom:1"], RoomBooked("t-1"))
    kit.act(kit.saga("t-1"), "cancel")  # from outside, as a failing branch would
    undos = by_type(kit.take_sent())
    kit.reply(undos["hotels.CancelRoom:1"], RoomNotCancelled("t-1"))
    for _ in range(3):
        kit.advance(timedelta(seconds=60))  # the others time out, never having answered
    saga = kit.saga("t-1")
    assert (saga.state, saga.status) == ("failed", "failed")
    assert "first_night in book was refused or not confirmed" in (saga.last_error or "")
    assert kit.replay_differences(saga) == []


def test_newest_first_undoes_one_branch_at_a_time_the_latest_done_first() -> None:
    kit = WorkflowTestKit(CarefulTripSaga.workflow)
    try:
        kit.publish(TripRequested("t-1", "Oslo"))
        sent = by_type(kit.take_sent())
        kit.reply(sent["hotels.BookRoom:1"], RoomBooked("t-1"))
        kit.reply(sent["flights.BookFlight:"], FlightBooked("t-1"))
        kit.advance(timedelta(seconds=60))  # the car times out
        (first,) = kit.take_sent()
        assert first.type == "flights.CancelFlight"  # done last, undone first
        kit.reply(first, FlightCancelled("t-1"))
        (second,) = kit.take_sent()
        assert second.type == "hotels.CancelRoom"
        kit.reply(second, RoomCancelled("t-1"))
        assert kit.saga("t-1").status == "compensated"
        assert kit.replay_differences(kit.saga("t-1")) == []
    finally:
        kit.close()


def test_check_passes_a_group_and_its_fingerprint_covers_it() -> None:
    assert [f.line() for f in check(TripSaga.workflow) if f.severity == "error"] == []
    assert TripSaga.workflow.fingerprint() != CarefulTripSaga.workflow.fingerprint()
    assert "book" in TripSaga.workflow.groups and "flight" not in TripSaga.workflow.states


def test_operator_actions_name_a_branch(kit: WorkflowTestKit) -> None:
    sent = started(kit)
    saga = kit.saga("t-1")
    retried = kit.act(saga, "retry", branch="book.car")
    assert [c.message_id for c in kit.take_sent()] == [sent["cars.RentCar:"].message_id]
    assert {b["name"]: b["attempt"] for b in retried.saga.branches}["book.car"] == 1
    kit.act(kit.saga("t-1"), "skip", branch="book.first_night", outcome="hotels.RoomBooked")
    assert {b["step"]: b["phase"] for b in kit.saga("t-1").branches}["first_night"] == "done"
    with pytest.raises(
        ActionRefused, match=r"not an outcome of book\.flight; it takes flights\.FlightBooked"
    ):
        kit.act(kit.saga("t-1"), "skip", branch="book.flight", outcome="cars.CarRented")
    with pytest.raises(ActionRefused, match="is no branch of this saga"):
        kit.act(kit.saga("t-1"), "retry", branch="book.boat")
    kit.act(kit.saga("t-1"), "fire-deadline", branch="book.flight")  # as if its deadline passed
    saga = kit.saga("t-1")
    assert saga.state == "compensating_book" and "flight" in saga.timed_out
    assert kit.sent_types() == ["hotels.CancelRoom"]
    assert kit.replay_differences(saga) == []


def test_resume_into_a_group_restarts_only_its_unfinished_branches(kit: WorkflowTestKit) -> None:
    sent = started(kit)
    kit.reply(sent["hotels.BookRoom:1"], RoomBooked("t-1"))
    kit.act(kit.saga("t-1"), "cancel")
    (undo,) = kit.take_sent()
    kit.reply(undo, RoomNotCancelled("t-1"))
    kit.advance(timedelta(seconds=60))
    assert kit.saga("t-1").status == "failed"
    kit.take_sent()
    kit.act(kit.saga("t-1"), "resume", step="book")
    assert sorted(kit.sent_types()) == [
        "cars.RentCar",
        "flights.BookFlight",
        "hotels.BookRoom",
        "hotels.BookRoom",
    ]
    assert kit.saga("t-1").state == "book"


# -- what a review found (each failed before its fix) ------------------------------------------


@dataclass(frozen=True)
class IssueTicket(Command):
    TYPE = "tickets.IssueTicket"
    trip_id: str


@dataclass(frozen=True)
class TicketIssued(Event):
    TYPE = "tickets.TicketIssued"
    trip_id: str


@dataclass(frozen=True)
class TicketRefused(Event):
    TYPE = "tickets.TicketRefused"
    trip_id: str


@dataclass(frozen=True)
class RefundCard(Command):
    TYPE = "cards.RefundCard"
    trip_id: str


@dataclass(frozen=True)
class CardRefunded(Event):
    TYPE = "cards.CardRefunded"
    trip_id: str


class LongTripSaga(Saga, starts_on=TripRequested, key="trip_id", name="long_trip"):
    flight = TripSaga.flight
    car = TripSaga.car
    book = parallel(flight, car)

    @step(done=CardCharged, deadline=timedelta(minutes=2))
    def charge(self, trip: TripRequested) -> ChargeCard:
        return ChargeCard(trip.trip_id)

    @charge.compensate(done=CardRefunded, deadline=timedelta(minutes=5))
    def refund(self, trip: TripRequested) -> RefundCard:
        return RefundCard(trip.trip_id)

    @step(done=TicketIssued, failed=TicketRefused, deadline=timedelta(minutes=2))
    def ticket(self, trip: TripRequested) -> IssueTicket:
        if trip.city == "Atlantis":
            raise ValueError("no tickets to Atlantis")
        return IssueTicket(trip.trip_id)


def booked(kit: WorkflowTestKit, city: str = "Oslo") -> None:
    kit.publish(TripRequested("t-1", city))
    sent = by_type(kit.take_sent())
    kit.reply(sent["flights.BookFlight:"], FlightBooked("t-1"))
    kit.reply(sent["cars.RentCar:"], CarRented("t-1"))


def test_a_done_group_survives_the_saga_failing_and_is_undone_when_it_carries_on() -> None:
    kit = WorkflowTestKit(LongTripSaga.workflow)
    try:
        booked(kit)
        (charge,) = kit.take_sent()
        kit.reply(charge, CardCharged("t-1"))
        (ticket,) = kit.take_sent()
        kit.reply(ticket, TicketRefused("t-1"))
        (refund,) = kit.take_sent()
        kit.advance(timedelta(minutes=5))  # the refund is not confirmed in time: failed
        assert kit.saga("t-1").status == "failed"
        kit.reply(refund, CardRefunded("t-1"))  # it was, after all: on to the group's undoing
        assert sorted(kit.sent_types()) == ["cars.ReturnCar", "flights.CancelFlight"]
        assert kit.saga("t-1").state == "compensating_book"
        assert kit.replay_differences(kit.saga("t-1")) == []
    finally:
        kit.close()


class ExplodingTripSaga(Saga, starts_on=TripRequested, key="trip_id", name="exploding_trip"):
    flight = TripSaga.flight
    car = TripSaga.car
    book = parallel(flight, car)

    @step(done=TicketIssued, deadline=timedelta(minutes=2))
    def ticket(self, trip: TripRequested) -> IssueTicket:
        raise ValueError(f"no tickets to {trip.city}")


def test_a_failing_builder_after_the_group_halts_its_branches_and_their_timers() -> None:
    """The last branch's reply completes the group and the next step's builder raises: the saga
    fails as it was before that reply, with that branch still in flight. Its timers must not
    carry the failed saga on without an operator."""
    kit = WorkflowTestKit(ExplodingTripSaga.workflow)
    try:
        kit.publish(TripRequested("t-1", "Atlantis"))
        sent = by_type(kit.take_sent())
        kit.reply(sent["flights.BookFlight:"], FlightBooked("t-1"))
        kit.reply(sent["cars.RentCar:"], CarRented("t-1"))
        saga = kit.saga("t-1")
        assert saga.status == "failed" and "no tickets to Atlantis" in (saga.last_error or "")
        kit.advance(timedelta(hours=1))  # the car's deadline would have passed
        saga = kit.saga("t-1")
        assert (saga.state, saga.status) == ("book", "failed") and kit.take_sent() == []
        assert kit.replay_differences(saga) == []
    finally:
        kit.close()


def test_late_successes_of_two_branches_awaiting_one_type_undo_each_its_own(kit: WorkflowTestKit) -> None:
    sent = started(kit)
    kit.reply(sent["flights.BookFlight:"], FlightFull("t-1"))  # compensating: the rest in flight
    kit.advance(timedelta(seconds=60))  # both nights and the car time out
    saga = kit.saga("t-1")
    assert saga.status == "compensated"
    assert sorted(b["name"].rsplit(":", 1)[0] for b in saga.branches) == [
        "late:car",
        "late:first_night",
        "late:second_night",
    ]
    kit.reply(sent["hotels.BookRoom:2"], RoomBooked("t-1"))  # the second night, after all
    (cancel,) = kit.take_sent()
    assert (cancel.type, cancel.payload["night"]) == ("hotels.CancelRoom", 2)
    kit.reply(sent["hotels.BookRoom:1"], RoomBooked("t-1"))
    (other,) = kit.take_sent()
    assert other.payload["night"] == 1
    kit.advance(timedelta(minutes=5))  # neither cancellation confirmed: failed, for an operator
    assert kit.saga("t-1").status == "failed"
    kit.reply(other, RoomCancelled("t-1"))
    assert kit.saga("t-1").status == "failed"  # the other one is still unconfirmed
    kit.reply(cancel, RoomCancelled("t-1"))
    saga = kit.saga("t-1")
    assert (saga.status, saga.last_error) == ("compensated", None)
    assert kit.replay_differences(saga) == []


def test_resume_sends_a_group_compensation_again_that_timed_out_with_its_ids(kit: WorkflowTestKit) -> None:
    sent = started(kit)
    kit.reply(sent["cars.RentCar:"], CarRented("t-1"))
    kit.reply(sent["flights.BookFlight:"], FlightFull("t-1"))
    (give_back,) = kit.take_sent()
    kit.advance(timedelta(seconds=30))  # the nights time out
    kit.advance(timedelta(minutes=5))  # the car's return is not confirmed
    saga = kit.saga("t-1")
    assert (saga.state, saga.status) == ("failed", "failed")
    kit.take_sent()
    kit.act(saga, "resume", step="compensating_book")
    assert [c.message_id for c in kit.take_sent()] == [give_back.message_id]
    kit.reply(give_back, CarReturned("t-1"))
    assert kit.saga("t-1").status == "compensated"
    assert kit.replay_differences(kit.saga("t-1")) == []


def test_skip_refuses_the_groups_own_triggers(kit: WorkflowTestKit) -> None:
    saga = started(kit) and kit.saga("t-1")
    with pytest.raises(BadRequest, match=r"no event type 'saga\.GroupDone'"):  # the service's check
        kit.act(saga, "skip", outcome="saga.GroupDone")
    compiled = CompiledWorkflow(TripSaga.workflow)  # and the engine's, for any other way in
    action = Incoming("operator.skip", "op-1", {"outcome": "saga.GroupDone"}, kind="operator")
    decision = decide(compiled, saga, action, kit.now)
    assert decision.outcome is Outcome.REFUSED and "the group's own" in (decision.reason or "")


# -- what a second review found ----------------------------------------------------------------


class ChargedTripSaga(Saga, starts_on=TripRequested, key="trip_id", name="charged_trip"):
    @step(done=CardCharged, deadline=timedelta(seconds=30))
    def charge(self, trip: TripRequested) -> ChargeCard:
        return ChargeCard(trip.trip_id)

    @charge.compensate(done=CardRefunded, deadline=timedelta(hours=1))
    def refund(self, trip: TripRequested) -> RefundCard:
        return RefundCard(trip.trip_id)

    flight = TripSaga.flight
    car = TripSaga.car
    book = parallel(flight, car)


def test_resume_elsewhere_drops_the_group_and_a_late_reply_of_it_moves_nothing(kit: WorkflowTestKit) -> None:
    sent = started(kit)
    kit.reply(sent["hotels.BookRoom:1"], RoomBooked("t-1"))
    kit.act(kit.saga("t-1"), "cancel")
    (undo,) = kit.take_sent()
    kit.reply(undo, RoomNotCancelled("t-1"))
    kit.advance(timedelta(seconds=60))
    assert kit.saga("t-1").status == "failed"
    kit.act(kit.saga("t-1"), "resume", step="charge")
    kit.take_sent()
    kit.reply(sent["flights.BookFlight:"], FlightFull("t-1"))  # the old group's reply
    saga = kit.saga("t-1")
    assert (saga.state, saga.status, saga.last_error) == ("charge", "running", None)
    assert kit.take_sent() == []
    assert kit.replay_differences(saga) == []


def test_a_resumed_group_still_undoes_the_first_attempts_late_success() -> None:
    kit = WorkflowTestKit(ChargedTripSaga.workflow)
    try:
        kit.publish(TripRequested("t-1", "Oslo"))
        (charge,) = kit.take_sent()
        kit.reply(charge, CardCharged("t-1"))
        first = by_type(kit.take_sent())
        kit.advance(timedelta(seconds=60))  # both branches time out: the charge is refunded
        kit.advance(timedelta(hours=1))  # and that refund is not confirmed: failed
        kit.take_sent()
        kit.act(kit.saga("t-1"), "resume", step="book")
        second = by_type(kit.take_sent())
        assert second["flights.BookFlight:"].message_id != first["flights.BookFlight:"].message_id
        kit.advance(timedelta(seconds=60))  # the second attempt times out too
        (refund,) = [c for c in kit.take_sent() if c.type == "cards.RefundCard"]
        kit.reply(refund, CardRefunded("t-1"))
        late = [b for b in kit.saga("t-1").branches if b["step"] == "flight"]
        assert len(late) == 2 and len({b["name"] for b in late}) == 2  # one per attempt
        kit.reply(first["flights.BookFlight:"], FlightBooked("t-1"))  # the first attempt, late
        kit.reply(second["flights.BookFlight:"], FlightBooked("t-1"))  # the second attempt, late
        assert kit.sent_types() == ["flights.CancelFlight", "flights.CancelFlight"]  # both undone
        assert kit.replay_differences(kit.saga("t-1")) == []
    finally:
        kit.close()


def test_an_unconfirmed_undo_fails_the_saga_once_nothing_else_waits() -> None:
    kit = WorkflowTestKit(ChargedTripSaga.workflow)
    try:
        kit.publish(TripRequested("t-1", "Oslo"))
        (charge,) = kit.take_sent()
        kit.reply(charge, CardCharged("t-1"))
        sent = by_type(kit.take_sent())
        kit.advance(timedelta(seconds=60))  # both time out: refund the charge
        (refund,) = kit.take_sent()
        kit.reply(sent["flights.BookFlight:"], FlightBooked("t-1"))  # late: its cancel awaited
        kit.advance(timedelta(minutes=1))
        kit.reply(sent["cars.RentCar:"], CarRented("t-1"))  # late too
        kit.advance(timedelta(minutes=4, seconds=30))  # the flight's cancel gives up
        kit.reply(refund, CardRefunded("t-1"))
        kit.reply(next(c for c in kit.take_sent() if c.type == "cars.ReturnCar"), CarReturned("t-1"))
        saga = kit.saga("t-1")
        assert (saga.state, saga.status) == ("compensated", "failed")  # for an operator, saying why
        assert "not confirmed in time" in (saga.last_error or "")
        assert kit.replay_differences(saga) == []
    finally:
        kit.close()
