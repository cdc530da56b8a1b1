"""A saga's business data: only an event's declared fields enter it, the key and the start
event's fields stay as they started (unless the workflow declares ``updates``), a reply naming
another saga's key is refused, and the data is the event as its schema reads it on every path."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from orchestrator import Saga, step
from orchestrator.core.definitions import DefinitionError, Workflow
from orchestrator.core.engine import Incoming, Outcome, decide, reply_id_for
from orchestrator.core.ingress import Reason
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.messages import Command, Event, dump
from orchestrator.core.replay import differences, replay
from orchestrator.examples import OrderSaga
from orchestrator.examples.contracts import Line, OrderPlaced
from orchestrator.service.batch import Envelope, Verdict
from orchestrator.service.operations import BadRequest
from orchestrator.service.store import JournalEntry
from orchestrator.testing import WorkflowTestKit

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ORDER = OrderSaga.workflow


def placed(order_id: str = "o-1") -> OrderPlaced:
    return OrderPlaced(order_id, "c-1", [Line("sku-1", 2)], 1250)


def raw(
    type_: str, body: dict[str, Any], correlation_id: str | None = None, message_id: str = ""
) -> Envelope:
    return Envelope(orjson.dumps(body), type_, message_id or str(uuid.uuid4()), correlation_id)


def reply(kit: WorkflowTestKit, type_: str, body: dict[str, Any], saga_id: str) -> Envelope:
    """A participant's reply, as it came, to the command saga ``saga_id`` waits on: correlated,
    with the section 6 reply id (docs/protocol.md)."""
    return raw(type_, body, saga_id, answer_id(kit, type_, saga_id))


def answer_id(kit: WorkflowTestKit, type_: str, saga_id: str) -> str:
    return reply_id_for(kit.store.sagas[saga_id].awaiting[0]["message_id"], type_)


@pytest.fixture
def kit() -> Any:
    kit = WorkflowTestKit(ORDER)
    yield kit
    kit.close()


# 1. only declared fields, the start fixed ---------------------------------------------------------
def test_a_reply_cannot_rewrite_what_later_commands_are_built_from(kit: WorkflowTestKit) -> None:
    kit.publish(placed())
    saga = kit.saga("o-1")
    mallory = {"order_id": "o-1", "reservation_id": "r-1", "customer_id": "mallory", "amount_cents": 1}
    result = kit.deliver(reply(kit, "inventory.StockReserved", mallory, saga.id))

    assert result.verdicts == [Verdict.ACCEPTED]
    charge = kit.sent[-1]
    assert (charge.type, dict(charge.payload)) == (
        "payment.ChargePayment",
        {"order_id": "o-1", "customer_id": "c-1", "amount_cents": 1250},
    )
    after = kit.saga("o-1")
    assert after.data == {**saga.data, "reservation_id": "r-1"}
    assert kit.journal(after)[-1].decision["merged"] == ["reservation_id"]
    assert kit.replay_differences(after) == []


def test_an_undeclared_field_in_a_reply_is_ignored_not_a_failure(kit: WorkflowTestKit) -> None:
    kit.publish(placed())
    saga = kit.saga("o-1")
    oops = {"order_id": "o-1", "reservation_id": "r-1", "lines": "oops", "surprise": {"a": 1}}
    kit.deliver(reply(kit, "inventory.StockReserved", oops, saga.id))

    after = kit.saga("o-1")
    assert (after.state, after.status) == ("charge", "running")
    assert after.data["lines"] == [{"sku": "sku-1", "quantity": 2}]
    assert "surprise" not in after.data


def test_a_reply_naming_another_key_is_dead_lettered_and_journaled_on_its_saga(kit: WorkflowTestKit) -> None:
    kit.publish(placed())
    kit.publish(placed("someone-else"))
    saga = kit.saga("o-1")
    wrong = {"order_id": "someone-else", "reservation_id": "r-1"}
    m_wrong = answer_id(kit, "inventory.StockReserved", saga.id)
    result = kit.deliver(raw("inventory.StockReserved", wrong, correlation_id=saga.id, message_id=m_wrong))

    assert result.verdicts == [Verdict.DEAD]
    refusal = result.refusals[0]
    assert refusal is not None and refusal.reason is Reason.KEY_MISMATCH
    assert "someone-else" in refusal.detail and "o-1" in refusal.detail
    dead = kit.store.dead_letters
    assert [d.reason for d in dead] == ["key_mismatch"]
    after = kit.saga("o-1")
    assert (after.state, after.data, after.version) == ("reserve", saga.data, saga.version + 1)
    entry = kit.journal(after)[-1]
    assert entry.message.message_id == m_wrong
    assert (entry.decision["outcome"], entry.decision["dead_letter"]) == ("ignored", "key_mismatch")
    assert kit.saga("someone-else").state == "reserve"  # the other saga is untouched
    assert kit.sent_types() == ["inventory.ReserveStock", "inventory.ReserveStock"]
    assert kit.replay_differences(after) == []
    # Not in the inbox, like every dead letter: the same message id, fixed, is taken.
    fixed = {"order_id": "o-1", "reservation_id": "r-1"}
    again = kit.deliver(raw("inventory.StockReserved", fixed, correlation_id=saga.id, message_id=m_wrong))
    assert again.verdicts == [Verdict.ACCEPTED]
    assert kit.saga("o-1").state == "charge"


def test_a_reply_without_the_key_field_in_its_schema_is_not_compared() -> None:
    @dataclass(frozen=True)
    class Opened(Event):
        TYPE = "t.Opened"
        ref: str

    @dataclass(frozen=True)
    class Nudge(Command):
        TYPE = "t.Nudge"
        ref: str

    @dataclass(frozen=True)
    class Nudged(Event):
        TYPE = "t.Nudged"
        note: str

    flow = Workflow("nokey", starts_on=Opened, key="ref")
    flow.state("waiting", send=Nudge).state("done", final=True)
    flow.on(Nudged, source="waiting", dest="done")
    kit = WorkflowTestKit(flow)
    try:
        kit.publish(Opened("r-1"))
        saga = kit.saga("r-1")
        result = kit.deliver(reply(kit, "t.Nudged", {"note": "n", "ref": "other"}, saga.id))
        assert result.verdicts == [Verdict.ACCEPTED]
        assert kit.saga("r-1").state == "done" and kit.saga("r-1").data["ref"] == "r-1"
    finally:
        kit.close()


# declared updates ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Booked(Event):
    TYPE = "hotel.Booked"
    booking_id: str
    nights: int
    rate_cents: int


@dataclass(frozen=True)
class Quote(Command):
    TYPE = "hotel.Quote"
    booking_id: str
    nights: int


@dataclass(frozen=True)
class Quoted(Event):
    TYPE = "hotel.Quoted"
    booking_id: str
    nights: int
    rate_cents: int


@dataclass(frozen=True)
class Bill(Command):
    TYPE = "hotel.Bill"
    booking_id: str
    nights: int
    rate_cents: int


@dataclass(frozen=True)
class Billed(Event):
    TYPE = "hotel.Billed"
    booking_id: str


def _hotel(**updates: Any) -> type[Saga]:
    class Hotel(Saga, starts_on=Booked, key="booking_id", name="hotel"):
        @step(done=Quoted, **updates)
        def quote(self, booking: Booked) -> Quote:
            return Quote(booking.booking_id, booking.nights)

        @step(done=Billed)
        def bill(self, booking: Booked) -> Bill:
            return Bill(booking.booking_id, booking.nights, booking.rate_cents)

    return Hotel


def _quoted(updates: dict[str, Any]) -> dict[str, Any]:
    kit = WorkflowTestKit(_hotel(**updates).workflow)
    try:
        kit.publish(Booked("b-1", 3, 100))
        saga = kit.saga("b-1")
        kit.deliver(reply(kit, "hotel.Quoted", {"booking_id": "b-1", "nights": 3, "rate_cents": 90}, saga.id))
        assert kit.replay_differences(kit.saga("b-1")) == []
        return dict(kit.sent[-1].payload)
    finally:
        kit.close()


def test_a_start_field_changes_only_where_the_step_declares_it_updates() -> None:
    assert _quoted({}) == {"booking_id": "b-1", "nights": 3, "rate_cents": 100}
    assert _quoted({"updates": ("rate_cents",)}) == {"booking_id": "b-1", "nights": 3, "rate_cents": 90}


def test_workflow_on_declares_updates_for_a_free_state_machine() -> None:
    flow = Workflow("hotel2", starts_on=Booked, key="booking_id")
    flow.state("quoting", send=Quote).state("billing", send=Bill).state("done", final=True)
    flow.on(Quoted, source="quoting", dest="billing", updates=("rate_cents",))
    flow.on(Billed, source="billing", dest="done")
    assert flow.updates == {"hotel.Quoted": frozenset({"rate_cents"})}
    kit = WorkflowTestKit(flow)
    try:
        kit.publish(Booked("b-1", 3, 100))
        quoted = {"booking_id": "b-1", "nights": 9, "rate_cents": 90}
        kit.deliver(reply(kit, "hotel.Quoted", quoted, kit.saga("b-1").id))
        assert dict(kit.sent[-1].payload) == {"booking_id": "b-1", "nights": 3, "rate_cents": 90}
    finally:
        kit.close()


@pytest.mark.parametrize(
    ("updates", "says"),
    [
        (("booking_id",), "is the saga's key"),
        (("price",), "has no field 'price'"),
    ],
)
def test_updates_name_start_fields_the_event_carries_never_the_key(
    updates: tuple[str, ...], says: str
) -> None:
    flow = Workflow("hotel3", starts_on=Booked, key="booking_id")
    flow.state("quoting").state("done", final=True)
    with pytest.raises(DefinitionError, match=says):
        flow.on(Quoted, source="quoting", dest="done", updates=updates)


def test_updates_refuse_a_field_the_start_event_does_not_have() -> None:
    @dataclass(frozen=True)
    class Extra(Event):
        TYPE = "hotel.Extra"
        booking_id: str
        note: str

    flow = Workflow("hotel4", starts_on=Booked, key="booking_id")
    flow.state("quoting").state("done", final=True)
    with pytest.raises(DefinitionError, match=r"not a field of hotel\.Booked"):
        flow.on(Extra, source="quoting", dest="done", updates=("note",))


# skip obeys the same rule -------------------------------------------------------------------------
def test_skip_data_cannot_change_a_fixed_field_and_drops_undeclared_ones() -> None:
    kit = WorkflowTestKit(_hotel().workflow)
    try:
        kit.publish(Booked("b-1", 3, 100))
        saga = kit.saga("b-1")
        with pytest.raises(BadRequest, match="rate_cents"):
            kit.act(saga, "skip", outcome="hotel.Quoted", data={"nights": 3, "rate_cents": 1})
        with pytest.raises(BadRequest, match="key"):
            kit.act(
                saga,
                "skip",
                outcome="hotel.Quoted",
                data={"booking_id": "b-2", "nights": 3, "rate_cents": 100},
            )
        assert kit.saga("b-1").version == saga.version
        applied = kit.act(
            saga, "skip", outcome="hotel.Quoted", data={"nights": "3", "rate_cents": 100, "x": 1}
        )
        assert applied.saga.data == {"booking_id": "b-1", "nights": 3, "rate_cents": 100}
        assert dict(kit.sent[-1].payload) == {"booking_id": "b-1", "nights": 3, "rate_cents": 100}
        assert kit.replay_differences(applied.saga) == []
    finally:
        kit.close()


def test_skip_may_change_a_field_its_outcome_updates() -> None:
    kit = WorkflowTestKit(_hotel(updates=("rate_cents",)).workflow)
    try:
        kit.publish(Booked("b-1", 3, 100))
        applied = kit.act(
            kit.saga("b-1"), "skip", outcome="hotel.Quoted", data={"nights": 3, "rate_cents": 1}
        )
        assert applied.saga.data["rate_cents"] == 1
        assert dict(kit.sent[-1].payload)["rate_cents"] == 1
    finally:
        kit.close()


def test_skip_data_the_schema_reads_into_an_unstorable_value_is_a_bad_request() -> None:
    kit = WorkflowTestKit(_hotel(updates=("rate_cents",)).workflow)
    try:
        kit.publish(Booked("b-1", 3, 100))
        saga = kit.saga("b-1")

        with pytest.raises(BadRequest, match=r"data\.rate_cents is an integer beyond 64 bits"):
            kit.act(saga, "skip", outcome="hotel.Quoted", data={"nights": 3, "rate_cents": "1" * 25})

        assert kit.saga("b-1").version == saga.version
    finally:
        kit.close()


# 2. one rule for JSON types on both paths ---------------------------------------------------------
def test_start_data_is_the_event_as_its_schema_reads_it_over_amqp_and_rest() -> None:
    kit = WorkflowTestKit(_hotel().workflow)
    try:
        kit.deliver(raw("hotel.Booked", {"booking_id": "amqp", "nights": "3", "rate_cents": 100, "x": 1}))
        kit.start("hotel", "rest", {"nights": "3", "rate_cents": 100, "x": 1})
        amqp, rest = kit.saga("amqp"), kit.saga("rest")
        assert amqp.data == {"booking_id": "amqp", "nights": 3, "rate_cents": 100}
        assert rest.data == {"booking_id": "rest", "nights": 3, "rate_cents": 100}
        # the journal keeps the message as it came; replay reads it the same way
        assert kit.journal(amqp)[0].message.payload["nights"] == "3"
        assert kit.replay_differences(amqp) == [] and kit.replay_differences(rest) == []
    finally:
        kit.close()


# replay of journals written before the rule -------------------------------------------------------
def _as_before(entries: list[JournalEntry]) -> list[JournalEntry]:
    """Journal entries as written before the rule: no ``merged`` in the decision."""
    return [replace(e, decision={k: v for k, v in e.decision.items() if k != "merged"}) for e in entries]


def test_a_journal_written_before_the_rule_replays_to_the_row_it_wrote() -> None:
    compiled = CompiledWorkflow(ORDER)
    started = {"order_id": "o-1", "customer_id": "c-1", "lines": [], "amount_cents": "1250", "extra": 1}
    mallory = {"order_id": "o-1", "reservation_id": "r-1", "customer_id": "mallory", "amount_cents": 1}
    messages = [
        Incoming("orders.OrderPlaced", "m-1", started),
        Incoming("inventory.StockReserved", "m-2", mallory),
    ]
    # the row the old code wrote: every payload merged whole
    saga, entries = None, []
    for seq, message in enumerate(messages, 1):
        decision = decide(compiled, saga, message, NOW + timedelta(seconds=seq), merge_all=True)
        saga = decision.saga
        entries.append(JournalEntry(saga.id, seq, message, decision.summary(), NOW + timedelta(seconds=seq)))
    assert saga is not None
    assert (saga.data["customer_id"], saga.data["amount_cents"], saga.data["extra"]) == ("mallory", 1, 1)
    assert saga.awaiting[0]["payload"]["customer_id"] == "mallory"

    old = _as_before(entries)
    assert differences(saga, replay(compiled, old)) == []
    # The same journal decided by today's rule would not give that row: the marker matters.
    today = replay(compiled, entries)
    assert today is not None and today.data["customer_id"] == "c-1" and today.data["amount_cents"] == 1250


def test_a_journal_mixing_old_and_new_entries_replays_exactly(kit: WorkflowTestKit) -> None:
    compiled = kit.registry.workflows["order"]
    old_start = Incoming("orders.OrderPlaced", "m-1", {**dump(placed()), "x": 1})
    first = decide(compiled, None, old_start, NOW, merge_all=True)
    entries = _as_before([JournalEntry(first.saga.id, 1, old_start, first.summary(), NOW)])
    reply = Incoming(
        "inventory.StockReserved", "m-2", {"order_id": "o-1", "reservation_id": "r", "amount_cents": 5}
    )
    second = decide(compiled, first.saga, reply, NOW)
    entries.append(JournalEntry(first.saga.id, 2, reply, second.summary(), NOW))
    assert second.outcome is Outcome.MOVED
    assert second.saga.data["x"] == 1 and second.saga.data["amount_cents"] == 1250
    assert differences(second.saga, replay(compiled, entries)) == []
