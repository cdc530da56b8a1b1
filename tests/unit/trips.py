"""A small trip-booking vocabulary the unit tests share, at module level so that return
annotations resolve."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.messages import Command, Event

__all__ = ["BookFlight", "CancelFlight", "FlightBooked", "FlightCancelled", "TripRequested"]


@dataclass(frozen=True)
class TripRequested(Event):
    TYPE = "trips.TripRequested"
    trip_id: str
    city: str


@dataclass(frozen=True)
class BookFlight(Command):
    TYPE = "flights.BookFlight"
    trip_id: str


@dataclass(frozen=True)
class FlightBooked(Event):
    TYPE = "flights.FlightBooked"
    trip_id: str


@dataclass(frozen=True)
class CancelFlight(Command):
    TYPE = "flights.CancelFlight"
    trip_id: str


@dataclass(frozen=True)
class FlightCancelled(Event):
    TYPE = "flights.FlightCancelled"
    trip_id: str
