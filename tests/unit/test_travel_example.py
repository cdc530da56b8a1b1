"""The travel example ``make demo`` runs (orchestrator/examples/travel.py), through the test kit:
its three bookings go out at once, a refused one cancels the others, and a traveller's cancel
mid-flight cancels every booking made, those still in flight once they are made."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from orchestrator.examples.travel import (
    CarRented,
    CarReturned,
    FlightBooked,
    FlightCancelled,
    NoRoom,
    RoomBooked,
    TripBooked,
    TripCancelled,
    TripSaga,
)
from orchestrator.testing import OutgoingCommand, WorkflowTestKit


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    made = WorkflowTestKit(TripSaga.workflow)
    yield made
    made.close()


def booked(kit: WorkflowTestKit, key: str) -> dict[str, OutgoingCommand]:
    result = kit.publish(TripBooked(key, "ana", "Oslo", 2))
    assert len(result.decisions) == 1
    return {c.type: c for c in kit.take_sent()}


def test_a_trip_books_all_three_at_once(kit: WorkflowTestKit) -> None:
    sent = booked(kit, "t-1")
    assert sorted(sent) == ["cars.RentCar", "flights.BookFlight", "hotels.BookRoom"]
    kit.reply(sent["hotels.BookRoom"], RoomBooked("t-1", "101"))
    kit.reply(sent["cars.RentCar"], CarRented("t-1", "AB-123"))
    kit.reply(sent["flights.BookFlight"], FlightBooked("t-1", "12C"))
    assert kit.saga("t-1").status == "completed" and kit.take_sent() == []


def test_no_room_cancels_the_flight_and_the_car(kit: WorkflowTestKit) -> None:
    sent = booked(kit, "t-1")
    kit.reply(sent["flights.BookFlight"], FlightBooked("t-1", "12C"))
    kit.reply(sent["hotels.BookRoom"], NoRoom("t-1"))
    (cancel,) = kit.take_sent()
    assert cancel.type == "flights.CancelFlight"
    kit.reply(sent["cars.RentCar"], CarRented("t-1", "AB-123"))  # in flight until now: undone too
    (give_back,) = kit.take_sent()
    assert give_back.type == "cars.ReturnCar"
    kit.reply(cancel, FlightCancelled("t-1"))
    kit.reply(give_back, CarReturned("t-1"))
    assert kit.saga("t-1").status == "compensated"


def test_the_traveller_cancels_mid_flight(kit: WorkflowTestKit) -> None:
    sent = booked(kit, "t-1")
    kit.reply(sent["flights.BookFlight"], FlightBooked("t-1", "12C"))
    kit.publish(TripCancelled("t-1"), message_id=str(uuid.uuid4()))  # from the booking site
    assert [c.type for c in kit.take_sent()] == ["flights.CancelFlight"]
    kit.reply(sent["hotels.BookRoom"], RoomBooked("t-1", "101"))
    assert kit.sent_types() == ["hotels.CancelRoom"]
    assert kit.saga("t-1").state == "compensating_book"
    assert kit.replay_differences(kit.saga("t-1")) == []
