"""A workflow module as a user writes it: only ``orchestrator`` and ``orchestrator.testing``.

``test_public_api.py`` type-checks this file with ``mypy --strict`` in a project of its own (no
configuration of this repository, not one ignore comment) and runs ``check()``: if the
public API stops being enough, or stops being typed, that test says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from orchestrator import (
    FAIL,
    IGNORE,
    PARK,
    Command,
    Event,
    Message,
    Retry,
    Saga,
    SagaView,
    Status,
    Undo,
    Workflow,
    step,
    upcaster,
    wait,
    wait_for,
)
from orchestrator.testing import OutgoingCommand, SagaSnapshot, WorkflowTestKit


# messages ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TripBooked(Event):
    TYPE = "trips.TripBooked"
    trip_id: str
    nights: int


@dataclass(frozen=True)
class BookRoom(Command):
    TYPE = "hotel.BookRoom"
    trip_id: str
    nights: int


@dataclass(frozen=True)
class RoomBooked(Event):
    TYPE = "hotel.RoomBooked"
    trip_id: str
    room_id: str


@dataclass(frozen=True)
class CancelRoom(Command):
    TYPE = "hotel.CancelRoom"
    trip_id: str
    room_id: str


@dataclass(frozen=True)
class RoomCancelled(Event):
    TYPE = "hotel.RoomCancelled"
    trip_id: str


@dataclass(frozen=True)
class ChargeCard(Command):
    TYPE = "card.ChargeCard"
    trip_id: str
    nights: int


@dataclass(frozen=True)
class CardCharged(Event):
    TYPE = "card.CardCharged"
    trip_id: str


@dataclass(frozen=True)
class CardDeclined(Event):
    TYPE = "card.CardDeclined"
    SCHEMA = 2  # version 1 called the reason "why"
    trip_id: str
    reason: str


@dataclass(frozen=True)
class TripCancelled(Event):
    TYPE = "trips.TripCancelled"
    trip_id: str


@dataclass(frozen=True)
class ManagerApproved(Event):
    TYPE = "approvals.ManagerApproved"
    trip_id: str


@upcaster(CardDeclined, from_schema=1)
def why_is_reason(payload: dict[str, Any]) -> dict[str, Any]:
    return {"trip_id": payload["trip_id"], "reason": payload.get("why", "")}


# a step saga ---------------------------------------------------------------------------------------
class TripSaga(Saga, starts_on=TripBooked, key="trip_id", name="trip"):
    """Book a room, charge the card; a declined card cancels the room."""

    @step(done=RoomBooked, deadline=timedelta(minutes=1), retry=Retry(every=timedelta(seconds=5)))
    def room(self, trip: TripBooked) -> BookRoom:
        return BookRoom(trip.trip_id, trip.nights)

    @room.compensate(done=RoomCancelled, deadline=timedelta(hours=1))
    def cancel_room(self, trip: TripBooked) -> CancelRoom:
        # RoomBooked came after the start event: its room_id is in the saga's data.
        return CancelRoom(trip.trip_id, room_id=str(self.data["room_id"]))

    @step(done=CardCharged, failed=CardDeclined, deadline=timedelta(minutes=2))
    def charge(self, trip: TripBooked) -> ChargeCard:
        return ChargeCard(trip.trip_id, trip.nights)


# a step saga that waits, and that its traveller may cancel --------------------------------------
class ApprovedTripSaga(
    Saga, starts_on=TripBooked, key="trip_id", name="approved_trip", cancel_on=TripCancelled
):
    """Book a room, wait for a manager's approval, hold a day, then charge the card."""

    @step(done=RoomBooked, deadline=timedelta(minutes=1))
    def room(self, trip: TripBooked) -> BookRoom:
        return BookRoom(trip.trip_id, trip.nights)

    @room.compensate(done=RoomCancelled, deadline=timedelta(hours=1))
    def cancel_room(self, trip: TripBooked) -> CancelRoom:
        return CancelRoom(trip.trip_id, room_id=str(self.data["room_id"]))

    approval = wait_for(ManagerApproved, deadline=timedelta(days=2))
    cooling_off = wait(days=1)

    @step(done=CardCharged, failed=CardDeclined, deadline=timedelta(minutes=2))
    def charge(self, trip: TripBooked) -> ChargeCard:
        return ChargeCard(trip.trip_id, trip.nights)


# a free state machine -------------------------------------------------------------------------------
def charge_for(view: SagaView) -> Message:
    """A command builder: a function of the saga's identity and data."""
    return ChargeCard(view.key, int(view.data["nights"]))


stay = Workflow("stay", starts_on=TripBooked, key="trip_id", unexpected=FAIL)
stay.state("booking", deadline=timedelta(minutes=1), on_deadline="expired", send=BookRoom)
stay.state("paying", deadline=timedelta(minutes=2), on_deadline="given_up", send=charge_for)
stay.state("paid", final=True)
stay.state("expired", final=True, status=Status.FAILED)
stay.state(
    "given_up",
    final=True,
    compensate=[Undo(CancelRoom, done=RoomCancelled, deadline=timedelta(hours=1))],
)
stay.on(RoomBooked, source="booking", dest="paying")
stay.on(CardCharged, source="booking", then=PARK)
stay.on(RoomBooked, source="paying", then=IGNORE)
stay.on(CardCharged, source="paying", dest="paid")

WORKFLOWS = [TripSaga.workflow, stay, ApprovedTripSaga.workflow]


# the test kit ----------------------------------------------------------------------------------------
def only_sent(kit: WorkflowTestKit) -> OutgoingCommand:
    [command] = kit.take_sent()
    return command


def declined_after_the_room(kit: WorkflowTestKit, trip_id: str) -> SagaSnapshot:
    kit.publish(TripBooked(trip_id, 2), workflow="trip")
    kit.reply(only_sent(kit), RoomBooked(trip_id, f"room-{trip_id}"))
    kit.reply(only_sent(kit), CardDeclined(trip_id, "expired card"))
    return kit.saga(trip_id, workflow="trip")


def check() -> None:
    """Both workflows, driven through the test kit."""
    kit = WorkflowTestKit(*WORKFLOWS)
    try:
        saga = declined_after_the_room(kit, "t-1")
        assert saga.state == "compensating_room" and saga.status is Status.COMPENSATING
        cancel = only_sent(kit)
        assert (cancel.type, dict(cancel.payload)) == (
            "hotel.CancelRoom",
            {"trip_id": "t-1", "room_id": "room-t-1"},
        )
        kit.reply(cancel, RoomCancelled("t-1"))
        assert kit.saga("t-1", workflow="trip").status is Status.COMPENSATED

        kit.publish(TripBooked("t-2", 3), workflow="stay")
        assert kit.sent_types() == ["hotel.BookRoom"]
        kit.publish(CardCharged("t-2"), correlation_id=kit.saga("t-2", workflow="stay").id)  # parked
        kit.reply(only_sent(kit), RoomBooked("t-2", "room-9"))
        paid = kit.saga("t-2", workflow="stay")
        assert (paid.state, paid.status) == ("paid", Status.COMPLETED)
        assert [c.payload for c in kit.take_sent()] == [{"trip_id": "t-2", "nights": 3}]
        assert kit.replay_differences(paid) == []
        assert why_is_reason({"trip_id": "t-3", "why": "stolen"}) == {"trip_id": "t-3", "reason": "stolen"}

        kit.publish(TripBooked("t-4", 1), workflow="approved_trip")
        kit.reply(only_sent(kit), RoomBooked("t-4", "room-4"))
        kit.publish(ManagerApproved("t-4"), message_id="approval-of-t-4")  # from outside: no reply id
        kit.advance(timedelta(days=1))  # the cooling-off period
        assert kit.saga("t-4", workflow="approved_trip").state == "charge"
        kit.publish(TripCancelled("t-4"), message_id="cancel-of-t-4")
        assert kit.sent_types() == ["card.ChargeCard", "hotel.CancelRoom"]
    finally:
        kit.close()
