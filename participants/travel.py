"""The travel services of the trip saga (``orchestrator/examples/travel.py``): ``flights``,
``hotels`` and ``cars``. Each books for a trip unless the trip's city is one it has nothing in
(``--sold-out``, env ``TRAVEL_SOLD_OUT``), and cancels a booking it made.

Table (schema of the service's name): ``bookings``, one row per booking and per cancellation
(``kind`` book or cancel), which is what the demo counts: every booking of a failed trip
cancelled once, none of a booked trip.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.examples.travel import (
    BookFlight,
    BookRoom,
    CancelFlight,
    CancelRoom,
    CarRented,
    CarReturned,
    FlightBooked,
    FlightCancelled,
    FlightFull,
    NoCar,
    NoRoom,
    RentCar,
    ReturnCar,
    RoomBooked,
    RoomCancelled,
)
from orchestrator.participant import Context, Participant
from participants.common import Options, create_tables_of, derived_id, injected_failure

__all__ = ["build_cars", "build_flights", "build_hotels"]


def _tables(service: str) -> Callable[[AsyncConnection], Awaitable[None]]:
    ddl = f"""
CREATE TABLE IF NOT EXISTS {service}.bookings (
    id bigserial PRIMARY KEY,
    trip_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('book', 'cancel')),
    message_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS bookings_trip ON {service}.bookings (trip_id);
"""

    async def create(connection: AsyncConnection) -> None:
        await create_tables_of(connection, ddl)

    return create


async def _record(context: Context, service: str, trip_id: str, kind: str) -> None:
    await context.connection.execute(
        text(f"INSERT INTO {service}.bookings (trip_id, kind, message_id) VALUES (:trip, :kind, :message)"),
        {"trip": trip_id, "kind": kind, "message": context.message_id},
    )


def build_flights(options: Options) -> Participant:
    flights = Participant("flights")
    flights.setup(_tables("flights"))

    @flights.handles(BookFlight)
    async def book(command: BookFlight, context: Context) -> FlightBooked | FlightFull:
        if command.city in options.sold_out or injected_failure(
            "flights", command.trip_id, options.fail_rate
        ):
            return FlightFull(command.trip_id)
        await _record(context, "flights", command.trip_id, "book")
        return FlightBooked(command.trip_id, derived_id("seat", command.trip_id)[:6])

    @flights.handles(CancelFlight)
    async def cancel(command: CancelFlight, context: Context) -> FlightCancelled:
        await _record(context, "flights", command.trip_id, "cancel")
        return FlightCancelled(command.trip_id)

    return flights


def build_hotels(options: Options) -> Participant:
    hotels = Participant("hotels")
    hotels.setup(_tables("hotels"))

    @hotels.handles(BookRoom)
    async def book(command: BookRoom, context: Context) -> RoomBooked | NoRoom:
        if command.city in options.sold_out or injected_failure("hotels", command.trip_id, options.fail_rate):
            return NoRoom(command.trip_id)
        await _record(context, "hotels", command.trip_id, "book")
        return RoomBooked(command.trip_id, derived_id("room", command.trip_id)[:4])

    @hotels.handles(CancelRoom)
    async def cancel(command: CancelRoom, context: Context) -> RoomCancelled:
        await _record(context, "hotels", command.trip_id, "cancel")
        return RoomCancelled(command.trip_id)

    return hotels


def build_cars(options: Options) -> Participant:
    cars = Participant("cars")
    cars.setup(_tables("cars"))

    @cars.handles(RentCar)
    async def rent(command: RentCar, context: Context) -> CarRented | NoCar:
        if command.city in options.sold_out or injected_failure("cars", command.trip_id, options.fail_rate):
            return NoCar(command.trip_id)
        await _record(context, "cars", command.trip_id, "book")
        return CarRented(command.trip_id, derived_id("plate", command.trip_id)[:7])

    @cars.handles(ReturnCar)
    async def give_back(command: ReturnCar, context: Context) -> CarReturned:
        await _record(context, "cars", command.trip_id, "cancel")
        return CarReturned(command.trip_id)

    return cars
