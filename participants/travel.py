"""The travel services of the trip saga (``orchestrator/examples/travel.py``): ``flights``,
``hotels`` and ``cars``. Each books for a trip unless the trip's city is one it has nothing in
(``--sold-out``, env ``TRAVEL_SOLD_OUT``), and cancels a booking it made.

Table (schema of the service's name): ``bookings``, one row per booking and per cancellation
(``kind`` book or cancel), which is what the demo counts: every booking of a failed trip
cancelled once, none of a booked trip.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator import Command, Event
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


def _booking_service(
    service: str,
    options: Options,
    book: type[Command],
    booked: Callable[[str, str], Event],
    refused: Callable[[str], Event],
    cancel: type[Command],
    cancelled: Callable[[str], Event],
) -> Participant:
    """One travel service: it books (``booked`` with a reference of its own) unless the trip's
    city is sold out or ``--fail-rate`` picks the trip (``refused``), and cancels a booking it
    made. The three differ only in their messages."""
    participant = Participant(service)
    participant.setup(_tables(service))

    @participant.handles(book)
    async def take(command: Any, context: Context) -> Event:
        if command.city in options.sold_out or injected_failure(service, command.trip_id, options.fail_rate):
            return refused(command.trip_id)
        await _record(context, service, command.trip_id, "book")
        return booked(command.trip_id, derived_id(service, command.trip_id)[:8])

    @participant.handles(cancel)
    async def give_back(command: Any, context: Context) -> Event:
        await _record(context, service, command.trip_id, "cancel")
        return cancelled(command.trip_id)

    return participant


def build_flights(options: Options) -> Participant:
    return _booking_service(
        "flights", options, BookFlight, FlightBooked, FlightFull, CancelFlight, FlightCancelled
    )


def build_hotels(options: Options) -> Participant:
    return _booking_service("hotels", options, BookRoom, RoomBooked, NoRoom, CancelRoom, RoomCancelled)


def build_cars(options: Options) -> Participant:
    return _booking_service("cars", options, RentCar, CarRented, NoCar, ReturnCar, CarReturned)
