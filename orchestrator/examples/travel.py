"""The travel booking: a flight, a hotel room and a rental car booked at once (a parallel group),
each cancelled again when another cannot be booked. Not in ``WORKFLOWS``: ``make demo`` loads it
beside the order and the escrow (``--workflows orchestrator.examples,orchestrator.examples.travel``),
served by the example services ``flights``, ``hotels`` and ``cars``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from orchestrator import Command, Event, Saga, parallel, step

__all__ = ["WORKFLOWS", "TripBooked", "TripCancelled", "TripSaga"]


@dataclass(frozen=True)
class TripBooked(Event):
    TYPE = "trips.TripBooked"
    trip_id: str
    traveller: str
    city: str
    nights: int


@dataclass(frozen=True)
class TripCancelled(Event):
    """The traveller's cancellation, from the booking site: it answers no command."""

    TYPE = "trips.TripCancelled"
    trip_id: str


# flights -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BookFlight(Command):
    TYPE = "flights.BookFlight"
    trip_id: str
    city: str


@dataclass(frozen=True)
class FlightBooked(Event):
    TYPE = "flights.FlightBooked"
    trip_id: str
    seat: str


@dataclass(frozen=True)
class FlightFull(Event):
    TYPE = "flights.FlightFull"
    trip_id: str


@dataclass(frozen=True)
class CancelFlight(Command):
    TYPE = "flights.CancelFlight"
    trip_id: str


@dataclass(frozen=True)
class FlightCancelled(Event):
    TYPE = "flights.FlightCancelled"
    trip_id: str


# hotels ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BookRoom(Command):
    TYPE = "hotels.BookRoom"
    trip_id: str
    city: str
    nights: int


@dataclass(frozen=True)
class RoomBooked(Event):
    TYPE = "hotels.RoomBooked"
    trip_id: str
    room: str


@dataclass(frozen=True)
class NoRoom(Event):
    TYPE = "hotels.NoRoom"
    trip_id: str


@dataclass(frozen=True)
class CancelRoom(Command):
    TYPE = "hotels.CancelRoom"
    trip_id: str


@dataclass(frozen=True)
class RoomCancelled(Event):
    TYPE = "hotels.RoomCancelled"
    trip_id: str


# cars --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RentCar(Command):
    TYPE = "cars.RentCar"
    trip_id: str
    city: str
    days: int


@dataclass(frozen=True)
class CarRented(Event):
    TYPE = "cars.CarRented"
    trip_id: str
    plate: str


@dataclass(frozen=True)
class NoCar(Event):
    TYPE = "cars.NoCar"
    trip_id: str


@dataclass(frozen=True)
class ReturnCar(Command):
    TYPE = "cars.ReturnCar"
    trip_id: str


@dataclass(frozen=True)
class CarReturned(Event):
    TYPE = "cars.CarReturned"
    trip_id: str


RESERVE = timedelta(seconds=30)
UNDO = timedelta(minutes=10)


class TripSaga(Saga, starts_on=TripBooked, key="trip_id", name="trip", cancel_on=TripCancelled):
    """Book the flight, the room and the car at once; whichever cannot be booked, cancel the
    others. The saga takes as long as the slowest booking, not the sum of the three. The
    traveller may cancel at any time: what was booked is cancelled, and a booking still in
    flight is cancelled once it is made."""

    @step(done=FlightBooked, failed=FlightFull, deadline=RESERVE)
    def flight(self, trip: TripBooked) -> BookFlight:
        return BookFlight(trip.trip_id, trip.city)

    @flight.compensate(done=FlightCancelled, deadline=UNDO)
    def cancel_flight(self, trip: TripBooked) -> CancelFlight:
        return CancelFlight(trip.trip_id)

    @step(done=RoomBooked, failed=NoRoom, deadline=RESERVE)
    def room(self, trip: TripBooked) -> BookRoom:
        return BookRoom(trip.trip_id, trip.city, trip.nights)

    @room.compensate(done=RoomCancelled, deadline=UNDO)
    def cancel_room(self, trip: TripBooked) -> CancelRoom:
        return CancelRoom(trip.trip_id)

    @step(done=CarRented, failed=NoCar, deadline=RESERVE)
    def car(self, trip: TripBooked) -> RentCar:
        return RentCar(trip.trip_id, trip.city, trip.nights)

    @car.compensate(done=CarReturned, deadline=UNDO)
    def return_car(self, trip: TripBooked) -> ReturnCar:
        return ReturnCar(trip.trip_id)

    book = parallel(flight, room, car)


WORKFLOWS = [TripSaga.workflow]
