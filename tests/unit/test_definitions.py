"""Workflow definitions: what ``Workflow`` refuses, and what the step compiler (``Saga``, ``@step``) makes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator import Saga, step
from orchestrator.core.definitions import CANCEL, DEADLINE, IGNORE, DefinitionError, Status, Undo, Workflow
from orchestrator.core.engine import Incoming, Outcome, decide
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.messages import Command, Event
from tests.unit.trips import BookFlight, CancelFlight, FlightBooked, FlightCancelled, TripRequested

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# A small trip-booking vocabulary, at module level so that return annotations resolve.
@dataclass(frozen=True)
class BookHotel(Command):
    TYPE = "hotels.BookHotel"
    trip_id: str
    city: str


@dataclass(frozen=True)
class HotelBooked(Event):
    TYPE = "hotels.HotelBooked"
    trip_id: str


@dataclass(frozen=True)
class CancelHotel(Command):
    TYPE = "hotels.CancelHotel"
    trip_id: str


@dataclass(frozen=True)
class HotelCancelled(Event):
    TYPE = "hotels.HotelCancelled"
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


# DefinitionError -----------------------------------------------------------------------------------------
def _two_states() -> Workflow:
    workflow = Workflow("trip", starts_on=TripRequested, key="trip_id")
    workflow.state("booking")
    workflow.state("done", final=True)
    return workflow


DEFINITION_ERRORS: list[tuple[str, Callable[[], Any], str]] = [
    (
        "dest and then",
        lambda: _two_states().on(FlightBooked, source="booking", dest="done", then=IGNORE),
        "exactly one of dest= or then=",
    ),
    (
        "neither dest nor then",
        lambda: _two_states().on(FlightBooked, source="booking"),
        "exactly one of dest= or then=",
    ),
    (
        "unknown dest in a rule",
        lambda: _two_states().on(FlightBooked, source="booking", dest="nowhere").check(),
        "unknown state 'nowhere'",
    ),
    (
        "unknown source in a rule",
        lambda: _two_states().on(FlightBooked, source="limbo", dest="done").check(),
        "unknown state 'limbo'",
    ),
    (
        "unknown state, found when compiled",
        lambda: CompiledWorkflow(_two_states().on(FlightBooked, source="booking", dest="nowhere")),
        "unknown state 'nowhere'",
    ),
    (
        "unknown on_deadline state",
        lambda: _two_states().state("waiting", deadline=timedelta(1), on_deadline="nowhere").check(),
        "unknown state 'nowhere'",
    ),
    (
        "deadline without on_deadline",
        lambda: _two_states().state("waiting", deadline=timedelta(minutes=1)),
        "a deadline needs on_deadline",
    ),
    (
        "final state with a deadline",
        lambda: _two_states().state("over", final=True, deadline=timedelta(1), on_deadline="done"),
        "a final state cannot wait for a deadline",
    ),
    (
        "final state with a running status",
        lambda: _two_states().state("over", final=True, status=Status.RUNNING),
        "does not fit final=True",
    ),
    (
        "non-final state with a finished status",
        lambda: _two_states().state("over", status=Status.COMPLETED),
        "does not fit final=False",
    ),
    (
        "key not a field of the start event",
        lambda: Workflow("trip", starts_on=TripRequested, key="order_id"),
        "TripRequested has no field 'order_id'",
    ),
    (
        "workflow name with a dot",
        lambda: Workflow("travel.trip", starts_on=TripRequested, key="trip_id"),
        "must be non-empty, without '.', ':' or '@'",
    ),
    (
        "workflow name with an @ (a child saga's start route reads it as a schema version)",
        lambda: Workflow("trip@2", starts_on=TripRequested, key="trip_id"),
        "must be non-empty, without '.', ':' or '@'",
    ),
    (
        "empty workflow name",
        lambda: Workflow("", starts_on=TripRequested, key="trip_id"),
        "must be non-empty, without '.', ':' or '@'",
    ),
    (
        "duplicate state",
        lambda: _two_states().state("booking"),
        "state 'booking' declared twice",
    ),
    (
        "no non-final state",
        lambda: Workflow("trip", starts_on=TripRequested, key="trip_id").state("done", final=True).check(),
        "no non-final state to start in",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"), [c[1:] for c in DEFINITION_ERRORS], ids=[c[0] for c in DEFINITION_ERRORS]
)
def test_definition_errors(build, message):
    with pytest.raises(DefinitionError, match=message):
        build()


def test_a_valid_definition_passes_check():
    workflow = _two_states().on(FlightBooked, source="booking", dest="done")

    assert workflow.check() is workflow
    assert workflow.initial == "booking"
    assert workflow.events == {TripRequested.TYPE: TripRequested, FlightBooked.TYPE: FlightBooked}


def test_a_state_with_a_deadline_adds_the_deadline_rule():
    workflow = _two_states().state("waiting", deadline=timedelta(minutes=5), on_deadline="done")

    rule = workflow.rule_for("waiting", DEADLINE)
    assert rule is not None
    assert (rule.dest, rule.send, rule.policy) == ("done", (), None)


def test_with_deadlines_is_the_same_workflow_on_another_clock():
    from orchestrator.examples.order import OrderSaga

    order: Workflow = OrderSaga.workflow
    slow = order.with_deadlines("slow_order", timedelta(hours=1))

    assert slow.name == "slow_order" and order.name == "order"
    assert {n: s.deadline for n, s in slow.states.items() if s.deadline} == {
        "reserve": timedelta(hours=1),
        "charge": timedelta(hours=1),
        "ship": timedelta(hours=1),
    }
    assert order.states["reserve"].deadline == timedelta(seconds=30)  # the original is untouched
    assert [n for n, s in slow.states.items() if s.deadline is None] == [
        n for n, s in order.states.items() if s.deadline is None
    ]
    assert slow.rules == order.rules and slow.rules is not order.rules
    assert CompiledWorkflow(slow.check()).moves_on("reserve", DEADLINE)


def test_a_step_saga_needs_a_step():
    with pytest.raises(DefinitionError, match="declares no @step"):

        class EmptySaga(Saga, starts_on=TripRequested, key="trip_id"):
            pass


def test_a_step_cannot_take_the_name_of_a_final_state():
    with pytest.raises(DefinitionError, match="cannot be called completed"):

        class ClashSaga(Saga, starts_on=TripRequested, key="trip_id"):
            @step(done=FlightBooked)
            def completed(self, trip: TripRequested) -> BookFlight:
                return BookFlight(trip.trip_id)


# the Saga / @step compiler -----------------------------------------------------------------------------
class TripSaga(Saga, starts_on=TripRequested, key="trip_id"):
    """Book a flight, a hotel, charge the card."""

    @step(done=FlightBooked, deadline=timedelta(seconds=30))
    def flight(self, trip: TripRequested) -> BookFlight:
        return BookFlight(trip.trip_id)

    @flight.compensate(done=FlightCancelled, deadline=timedelta(minutes=1))
    def cancel_flight(self, trip: TripRequested) -> CancelFlight:
        return CancelFlight(trip.trip_id)

    @step(done=HotelBooked)
    def hotel(self, trip: TripRequested) -> BookHotel:
        return BookHotel(trip.trip_id, trip.city)

    @hotel.compensate(done=HotelCancelled)
    def cancel_hotel(self, trip: TripRequested) -> CancelHotel:
        return CancelHotel(trip.trip_id)

    @step(done=CardCharged, failed=CardDeclined, deadline=timedelta(minutes=2))
    def charge(self, trip: TripRequested) -> ChargeCard:
        return ChargeCard(trip.trip_id)


def _states(workflow: Workflow) -> dict[str, tuple[Any, ...]]:
    return {
        s.name: (s.status, s.final, s.deadline, s.on_deadline, [b.message_type for b in s.on_enter])
        for s in workflow.states.values()
    }


def _rules(workflow: Workflow, event: str | None = None) -> list[tuple[Any, ...]]:
    """The rules, without the operator's cancel routes unless ``event`` asks for them."""
    return [
        (r.event, r.source, r.dest, [b.message_type for b in r.send])
        for r in workflow.rules
        if (r.event == event if event else r.event != CANCEL)
    ]


def test_a_cancel_undoes_what_each_step_did_as_its_failure_would():
    workflow = QuickTripSaga.workflow

    assert _rules(workflow, CANCEL) == [
        (CANCEL, "flight", "compensated", []),
        (CANCEL, "hotel", "compensating_flight", []),
        (CANCEL, "charge", "compensating_flight", ["hotels.CancelHotel"]),
    ]


def test_the_compiler_names_the_workflow_after_the_class():
    workflow = TripSaga.workflow

    assert (workflow.name, workflow.key, workflow.starts_on, workflow.initial) == (
        "trip",
        "trip_id",
        TripRequested,
        "flight",
    )
    assert workflow.description == "Book a flight, a hotel, charge the card."


def test_the_compiler_produces_a_state_per_step_and_per_waiting_compensation():
    assert _states(TripSaga.workflow) == {
        "flight": (Status.RUNNING, False, timedelta(seconds=30), "compensated", ["flights.BookFlight"]),
        "hotel": (Status.RUNNING, False, None, None, ["hotels.BookHotel"]),
        "charge": (
            Status.RUNNING,
            False,
            timedelta(minutes=2),
            "compensating_hotel",
            ["cards.ChargeCard"],
        ),
        "compensating_flight": (
            Status.COMPENSATING,
            False,
            timedelta(minutes=1),
            "failed",
            ["flights.CancelFlight"],
        ),
        "compensating_hotel": (Status.COMPENSATING, False, None, None, ["hotels.CancelHotel"]),
        "completed": (Status.COMPLETED, True, None, None, []),
        "compensated": (Status.COMPENSATED, True, None, None, []),
        "failed": (Status.FAILED, True, None, None, []),
    }


def test_the_compiler_produces_the_rules_of_the_steps():
    assert _rules(TripSaga.workflow) == [
        (DEADLINE, "flight", "compensated", []),
        ("flights.FlightBooked", "flight", "hotel", []),
        ("hotels.HotelBooked", "hotel", "charge", []),
        (DEADLINE, "charge", "compensating_hotel", []),
        ("cards.CardCharged", "charge", "completed", []),
        ("cards.CardDeclined", "charge", "compensating_hotel", []),
        (DEADLINE, "compensating_flight", "failed", []),
        ("flights.FlightCancelled", "compensating_flight", "compensated", []),
        ("hotels.HotelCancelled", "compensating_hotel", "compensating_flight", []),
    ]


def test_the_compiled_step_saga_runs_and_compensates():
    compiled = CompiledWorkflow(TripSaga.workflow)
    trip = {"trip_id": "t-1", "city": "Lisbon"}

    def send(saga_, type_name: str) -> Any:
        return decide(compiled, saga_, Incoming(type_name, f"m-{type_name}", {"trip_id": "t-1"}), NOW)

    started = decide(compiled, None, Incoming(TripRequested.TYPE, "m-0", trip), NOW)
    assert [(c.type, c.payload) for c in started.commands] == [("flights.BookFlight", {"trip_id": "t-1"})]
    hotel = send(started.saga, "flights.FlightBooked")
    assert [(c.type, c.payload) for c in hotel.commands] == [
        ("hotels.BookHotel", {"trip_id": "t-1", "city": "Lisbon"})
    ]
    declined = send(send(hotel.saga, "hotels.HotelBooked").saga, "cards.CardDeclined")
    assert (declined.saga.state, [c.type for c in declined.commands]) == (
        "compensating_hotel",
        ["hotels.CancelHotel"],
    )
    cancelled = send(declined.saga, "hotels.HotelCancelled")
    assert (cancelled.saga.state, [c.type for c in cancelled.commands]) == (
        "compensating_flight",
        ["flights.CancelFlight"],
    )
    done = send(cancelled.saga, "flights.FlightCancelled")
    assert (done.saga.state, done.saga.status, done.commands) == ("compensated", Status.COMPENSATED, ())


# fire-and-forget compensation ---------------------------------------------------------------------------
class QuickTripSaga(Saga, starts_on=TripRequested, key="trip_id", name="quicktrip"):
    @step(done=FlightBooked)
    def flight(self, trip: TripRequested) -> BookFlight:
        return BookFlight(trip.trip_id)

    @flight.compensate(done=FlightCancelled)
    def cancel_flight(self, trip: TripRequested) -> CancelFlight:
        return CancelFlight(trip.trip_id)

    @step(done=HotelBooked)
    def hotel(self, trip: TripRequested) -> BookHotel:
        return BookHotel(trip.trip_id, trip.city)

    @hotel.compensate  # no done=: sent, never waited for
    def cancel_hotel(self, trip: TripRequested) -> CancelHotel:
        return CancelHotel(trip.trip_id)

    @step(done=CardCharged, failed=CardDeclined, deadline=timedelta(minutes=2))
    def charge(self, trip: TripRequested) -> ChargeCard:
        return ChargeCard(trip.trip_id)


def test_a_fire_and_forget_compensation_has_no_waiting_state():
    workflow = QuickTripSaga.workflow

    assert list(workflow.states) == [
        "flight",
        "hotel",
        "charge",
        "compensating_flight",
        "completed",
        "compensated",
        "failed",
    ]
    assert _rules(workflow) == [
        ("flights.FlightBooked", "flight", "hotel", []),
        ("hotels.HotelBooked", "hotel", "charge", []),
        (DEADLINE, "charge", "compensating_flight", ["hotels.CancelHotel"]),
        ("cards.CardCharged", "charge", "completed", []),
        ("cards.CardDeclined", "charge", "compensating_flight", ["hotels.CancelHotel"]),
        ("flights.FlightCancelled", "compensating_flight", "compensated", []),
    ]


def _quick_trip_at_charge() -> tuple[CompiledWorkflow, Any]:
    compiled = CompiledWorkflow(QuickTripSaga.workflow)
    saga_ = decide(
        compiled, None, Incoming(TripRequested.TYPE, "m-0", {"trip_id": "t-1", "city": "Oslo"}), NOW
    )
    for type_name in ("flights.FlightBooked", "hotels.HotelBooked"):
        saga_ = decide(compiled, saga_.saga, Incoming(type_name, f"m-{type_name}", {"trip_id": "t-1"}), NOW)
    assert saga_.saga.state == "charge"
    return compiled, saga_.saga


@pytest.mark.parametrize(
    "message",
    [
        Incoming("cards.CardDeclined", "m-declined", {"trip_id": "t-1"}),
        Incoming(DEADLINE, "deadline:charge", {}, kind="deadline"),
    ],
    ids=["declined", "deadline"],
)
def test_a_fire_and_forget_compensation_is_sent_on_the_way(message):
    compiled, at_charge = _quick_trip_at_charge()

    decision = decide(compiled, at_charge, message, NOW)

    assert (decision.saga.state, decision.saga.status) == ("compensating_flight", Status.COMPENSATING)
    assert sorted(c.type for c in decision.commands) == ["flights.CancelFlight", "hotels.CancelHotel"]
    assert {c.type: c.payload for c in decision.commands}["hotels.CancelHotel"] == {"trip_id": "t-1"}
    assert len({c.message_id for c in decision.commands}) == 2


@pytest.mark.parametrize(
    "message",
    [
        Incoming("cards.CardDeclined", "m-declined", {"trip_id": "t-1"}),
        Incoming(DEADLINE, "deadline:charge", {}, kind="deadline"),
    ],
    ids=["declined", "deadline"],
)
def test_a_fire_and_forget_compensation_is_sent_newest_first(message):
    """The hotel was booked after the flight, so it is undone first (steps.py: "compensated
    newest first"; undo_from: "the fire-and-forget undos sent on the way, then the first
    compensation that waits")."""
    compiled, at_charge = _quick_trip_at_charge()

    decision = decide(compiled, at_charge, message, NOW)

    assert [c.type for c in decision.commands] == ["hotels.CancelHotel", "flights.CancelFlight"]


def test_a_fire_and_forget_compensation_alone_goes_straight_to_compensated():
    class HotelOnlySaga(Saga, starts_on=TripRequested, key="trip_id", name="hotelonly"):
        @step(done=HotelBooked)
        def hotel(self, trip: TripRequested) -> BookHotel:
            return BookHotel(trip.trip_id, trip.city)

        @hotel.compensate
        def cancel_hotel(self, trip: TripRequested) -> CancelHotel:
            return CancelHotel(trip.trip_id)

        @step(done=CardCharged, failed=CardDeclined)
        def charge(self, trip: TripRequested) -> ChargeCard:
            return ChargeCard(trip.trip_id)

    workflow = HotelOnlySaga.workflow
    assert list(workflow.states) == ["hotel", "charge", "completed", "compensated", "failed"]
    rule = workflow.rule_for("charge", CardDeclined.TYPE)
    assert rule is not None
    assert rule.dest == "compensated"
    assert [b.__qualname__ for b in rule.send] == ["HotelOnlySaga.cancel_hotel"]


# a builder that raises ----------------------------------------------------------------------------------
class NoHotelsIn(Exception):
    pass


class BrokenTripSaga(Saga, starts_on=TripRequested, key="trip_id", name="brokentrip"):
    @step(done=FlightBooked)
    def flight(self, trip: TripRequested) -> BookFlight:
        if trip.city == "Atlantis":
            raise RuntimeError("no airport")
        return BookFlight(trip.trip_id)

    @step(done=HotelBooked)
    def hotel(self, trip: TripRequested) -> BookHotel:
        raise NoHotelsIn(f"no hotels in {trip.city}")


BROKEN = CompiledWorkflow(BrokenTripSaga.workflow)


def test_a_step_builder_that_raises_at_the_start_fails_the_saga():
    decision = decide(
        BROKEN, None, Incoming(TripRequested.TYPE, "m-0", {"trip_id": "t-9", "city": "Atlantis"}), NOW
    )

    assert decision.outcome is Outcome.FAILED
    assert decision.saga.status is Status.FAILED
    assert decision.saga.version == 1
    assert decision.saga.last_error == "RuntimeError: no airport"
    assert decision.reason == decision.saga.last_error
    assert decision.commands == ()
    assert decision.deadline_changed and decision.deadline is None


def test_a_step_builder_that_raises_later_fails_the_saga_where_it_was():
    started = decide(
        BROKEN, None, Incoming(TripRequested.TYPE, "m-0", {"trip_id": "t-1", "city": "Oslo"}), NOW
    )
    assert started.outcome is Outcome.STARTED

    decision = decide(BROKEN, started.saga, Incoming(FlightBooked.TYPE, "m-1", {"trip_id": "t-1"}), NOW)

    assert decision.outcome is Outcome.FAILED
    assert decision.previous_state == "flight"
    assert (decision.saga.state, decision.saga.status, decision.saga.version) == ("flight", Status.FAILED, 2)
    assert decision.saga.last_error == "NoHotelsIn: no hotels in Oslo"
    assert decision.commands == ()
    assert decision.saga.finished


def test_a_message_class_builder_missing_data_fails_the_saga():
    @dataclass(frozen=True)
    class TripNamed(Event):  # carries no city, which BookHotel needs
        TYPE = "trips.TripNamed"
        trip_id: str

    workflow = Workflow("trip", starts_on=TripNamed, key="trip_id")
    workflow.state("hotel", send=BookHotel)  # filled from the saga data by field name
    workflow.state("done", final=True)
    compiled = CompiledWorkflow(workflow)

    decision = decide(compiled, None, Incoming(TripNamed.TYPE, "m-0", {"trip_id": "t-2"}), NOW)

    assert decision.outcome is Outcome.FAILED
    assert decision.saga.status is Status.FAILED
    assert decision.saga.last_error is not None
    assert decision.saga.last_error.startswith("InvalidPayload: hotels.BookHotel does not fit its schema")
    assert "city" in decision.saga.last_error


# a final state's Undo -------------------------------------------------------------------------------
def _cancelling(first: str = "final") -> Workflow:
    """A trip whose ``cancelled`` state undoes the flight, declared before or after the others."""
    trip = Workflow("undoing", starts_on=TripRequested, key="trip_id")
    undo = Undo(CancelFlight, done=FlightCancelled, deadline=timedelta(minutes=5))
    if first == "final":
        trip.state("cancelled", final=True, compensate=[undo])
    trip.state("booking", send=BookFlight, deadline=timedelta(minutes=1), on_deadline="cancelled")
    if first != "final":
        trip.state("cancelled", final=True, compensate=[undo])
    trip.state("booked", final=True)
    trip.on(FlightBooked, source="booking", dest="booked")
    return trip


@pytest.mark.parametrize("first", ["final", "waiting"])
def test_an_undo_chain_is_entered_by_every_move_into_its_final_state_and_is_never_initial(first):
    trip = _cancelling(first)

    assert trip.initial == "booking"
    assert trip.states["booking"].on_deadline == "cancelled_undo_1"
    assert trip.rule_for("booking", DEADLINE).dest == "cancelled_undo_1"  # type: ignore[union-attr]
    assert trip.rule_for("cancelled_undo_1", FlightCancelled.TYPE).dest == "cancelled"  # type: ignore[union-attr]
    assert trip.rule_for("cancelled_undo_1", DEADLINE).dest == "cancelled_failed"  # type: ignore[union-attr]
    assert (trip.states["cancelled_undo_1"].status, trip.states["cancelled_failed"].status) == (
        Status.COMPENSATING,
        Status.FAILED,
    )
    CompiledWorkflow(trip)


def test_a_move_declared_after_the_final_state_enters_its_undo_chain_too():
    trip = _cancelling()
    trip.state("paused", deadline=timedelta(hours=1), on_deadline="cancelled", on_cancel="cancelled")
    trip.on(FlightBooked, source="paused", dest="cancelled")

    assert trip.rule_for("paused", FlightBooked.TYPE).dest == "cancelled_undo_1"  # type: ignore[union-attr]
    assert trip.rule_for("paused", CANCEL).dest == "cancelled_undo_1"  # type: ignore[union-attr]
    assert trip.states["paused"].on_deadline == "cancelled_undo_1"


def test_an_undo_chain_needs_its_names_free():
    trip = Workflow("undoing", starts_on=TripRequested, key="trip_id")
    trip.state("cancelled_failed", final=True, status=Status.FAILED)

    with pytest.raises(DefinitionError, match="'cancelled_failed' is declared"):
        trip.state("cancelled", final=True, compensate=[Undo(CancelFlight, done=FlightCancelled)])


def test_undo_belongs_to_a_final_state():
    with pytest.raises(DefinitionError, match="Undo belongs in compensate= of a final state"):
        Workflow("w", starts_on=TripRequested, key="trip_id").state(
            "undoing", compensate=[Undo(CancelFlight, done=FlightCancelled)]
        )
