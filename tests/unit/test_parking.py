"""Bounded parking: a saga keeps at most ``max_parked`` early events, and a closing saga drops the
ones nothing will apply any more, saying so in its journal. Engine, service and replay."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.definitions import DEADLINE, FAIL, PARK, Status, Workflow
from orchestrator.core.engine import OPERATOR, Decision, Incoming, Outcome, SagaSnapshot, decide, saga_id_for
from orchestrator.core.ingress import Limits
from orchestrator.core.machine import DEFAULT_MAX_PARKED, CompiledWorkflow
from orchestrator.core.messages import Message, dump
from orchestrator.core.replay import differences, replay
from orchestrator.core.routing import Registry
from orchestrator.entrypoints.settings import Settings, SettingsError
from orchestrator.examples import escrow
from orchestrator.examples.contracts import (
    BuyerRefused,
    BuyerSigned,
    DocumentsVoided,
    EscrowOpened,
    FundsReceived,
    FundsReturned,
    SellerSigned,
)
from orchestrator.service.batch import Envelope, Verdict, process_batch
from orchestrator.service.store import JournalEntry
from orchestrator.testing import WorkflowTestKit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
E1 = saga_id_for("escrow", "e-1")
OPENED = {"escrow_id": "e-1", "buyer_id": "b-1", "seller_id": "s-1", "amount_cents": 90_000}


def event(message: Message, message_id: str) -> Incoming:
    return Incoming(message.TYPE, message_id, dump(message))


def opened_saga(compiled: CompiledWorkflow) -> SagaSnapshot:
    return decide(compiled, None, Incoming(EscrowOpened.TYPE, "m-open", OPENED), NOW).saga


def park(compiled: CompiledWorkflow, saga: SagaSnapshot, count: int) -> SagaSnapshot:
    """``count`` early seller signatures (ids m-seller-0, ...), each parked."""
    for index in range(count):
        decision = decide(compiled, saga, event(SellerSigned("e-1"), f"m-seller-{index}"), NOW)
        assert decision.outcome is Outcome.PARKED, decision.reason
        saga = decision.saga
    return saga


# the cap --------------------------------------------------------------------------------------------
def test_the_cap_defaults_to_the_setting_s_default():
    assert DEFAULT_MAX_PARKED == Settings().max_parked == 100
    assert CompiledWorkflow(escrow).max_parked == 100
    assert Registry([escrow]).workflows["escrow"].max_parked == 100
    assert Registry([escrow], max_parked=7).workflows["escrow"].max_parked == 7


def test_the_cap_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_MAX_PARKED", "5")
    assert Settings.from_env().max_parked == 5
    monkeypatch.setenv("ORCHESTRATOR_MAX_PARKED", "0")
    with pytest.raises(SettingsError, match="ORCHESTRATOR_MAX_PARKED must be at least 1"):
        Settings.from_env()


def test_a_cap_below_one_is_refused():
    with pytest.raises(ValueError, match="max_parked must be at least 1"):
        CompiledWorkflow(escrow, max_parked=0)


def test_below_the_cap_early_events_park():
    compiled = CompiledWorkflow(escrow, max_parked=3)

    saga = park(compiled, opened_saga(compiled), 3)

    assert [p["message_id"] for p in saga.parked] == ["m-seller-0", "m-seller-1", "m-seller-2"]
    assert saga.version == 4


def test_an_event_past_the_cap_is_refused_and_the_saga_is_unchanged():
    compiled = CompiledWorkflow(escrow, max_parked=3)
    saga = park(compiled, opened_saga(compiled), 3)

    decision = decide(compiled, saga, event(SellerSigned("e-1"), "m-seller-3"), NOW + timedelta(hours=1))

    assert decision.outcome is Outcome.REFUSED
    assert decision.reason == "parking full: 3 events parked for this saga (ORCHESTRATOR_MAX_PARKED=3)"
    assert decision.saga is saga  # no version bump, no updated_at, nothing parked
    assert decision.previous_state == "awaiting_buyer"
    assert decision.commands == ()
    assert not decision.deadline_changed and not decision.retry_changed


def test_the_default_cap_holds_a_hundred():
    compiled = CompiledWorkflow(escrow)
    saga = park(compiled, opened_saga(compiled), 100)

    decision = decide(compiled, saga, event(SellerSigned("e-1"), "m-seller-100"), NOW)

    assert decision.outcome is Outcome.REFUSED
    assert decision.reason == "parking full: 100 events parked for this saga (ORCHESTRATOR_MAX_PARKED=100)"


def test_a_saga_at_the_cap_still_takes_events_that_move_it():
    compiled = CompiledWorkflow(escrow, max_parked=2)
    saga = park(compiled, opened_saga(compiled), 2)

    decision = decide(compiled, saga, event(BuyerSigned("e-1"), "m-buyer"), NOW)

    assert decision.outcome is Outcome.MOVED
    assert decision.applied_parked == ("m-seller-0",)  # moved on to awaiting_funds
    assert decision.saga.state == "awaiting_funds"
    assert [p["message_id"] for p in decision.saga.parked] == ["m-seller-1"]


def test_replaying_does_not_ask_the_cap_again():
    compiled = CompiledWorkflow(escrow, max_parked=2)
    saga = park(compiled, opened_saga(compiled), 2)

    decision = decide(compiled, saga, event(SellerSigned("e-1"), "m-seller-2"), NOW, replaying=True)

    assert decision.outcome is Outcome.PARKED
    assert len(decision.saga.parked) == 3


def test_a_fired_timer_is_never_refused():
    """fire_due_deadlines journals whatever it gets: a timer that would park (a state that lost
    its deadline in a new definition, under ``unexpected=PARK``) parks, cap or no cap."""
    workflow = Workflow("lax", starts_on=EscrowOpened, key="escrow_id", unexpected=PARK)
    workflow.state("waiting")
    workflow.state("done", final=True)
    workflow.on(BuyerSigned, source="waiting", dest="done")
    workflow.on(SellerSigned, source="done", then=PARK)  # an event of the workflow: parks in waiting
    compiled = CompiledWorkflow(workflow, max_parked=1)
    saga = park(compiled, opened_saga(compiled), 1)
    fired = Incoming(DEADLINE, "deadline:1", {"state": "waiting", "due_at": NOW.isoformat()}, "deadline")

    assert decide(compiled, saga, fired, NOW).outcome is Outcome.PARKED


# dropped on closing ----------------------------------------------------------------------------------
def test_parked_events_are_dropped_when_the_saga_closes():
    compiled = CompiledWorkflow(escrow)
    saga = park(compiled, opened_saga(compiled), 2)

    refused = decide(compiled, saga, event(BuyerRefused("e-1", "no"), "m-refused"), NOW).saga
    assert (refused.state, len(refused.parked)) == ("refused_undo_1", 2)  # still undoing: kept

    decision = decide(compiled, refused, event(DocumentsVoided("e-1"), "m-voided"), NOW)

    assert (decision.saga.state, decision.saga.status) == ("refused", Status.COMPENSATED)
    assert decision.saga.parked == ()
    assert decision.dropped_parked == ("m-seller-0", "m-seller-1")
    assert decision.summary()["dropped_parked"] == ["m-seller-0", "m-seller-1"]
    assert decision.summary()["applied_parked"] == []


def test_parked_events_are_dropped_when_a_deadline_closes_the_saga():
    compiled = CompiledWorkflow(escrow)
    saga = park(compiled, opened_saga(compiled), 1)
    due = NOW + timedelta(days=3)
    fired = Incoming(
        DEADLINE, "deadline:1", {"state": "awaiting_buyer", "due_at": due.isoformat()}, "deadline"
    )

    returning = decide(compiled, saga, fired, due).saga
    assert (returning.state, returning.status) == ("expired_undo_1", Status.COMPENSATING)
    voiding = decide(compiled, returning, event(FundsReturned("e-1"), "m-returned"), due).saga

    decision = decide(compiled, voiding, event(DocumentsVoided("e-1"), "m-voided"), due)

    assert (decision.saga.state, decision.saga.status) == ("expired", Status.COMPENSATED)
    assert (decision.saga.parked, decision.dropped_parked) == ((), ("m-seller-0",))


def test_an_applied_event_is_not_listed_as_dropped():
    compiled = CompiledWorkflow(escrow)
    saga = park(compiled, opened_saga(compiled), 1)
    saga = decide(compiled, saga, event(BuyerSigned("e-1"), "m-buyer"), NOW).saga  # applies m-seller-0

    decision = decide(compiled, saga, event(FundsReceived("e-1"), "m-funds"), NOW)

    assert (decision.saga.status, decision.dropped_parked) == (Status.COMPLETED, ())


def _strict() -> CompiledWorkflow:
    """Escrow-like: the seller's early signature parks, funds before the signatures fail the saga."""
    workflow = Workflow("strict", starts_on=EscrowOpened, key="escrow_id")
    workflow.state("awaiting_buyer")
    workflow.state("awaiting_seller")
    workflow.state("done", final=True)
    workflow.on(BuyerSigned, source="awaiting_buyer", dest="awaiting_seller")
    workflow.on(SellerSigned, source="awaiting_buyer", then=PARK)
    workflow.on(SellerSigned, source="awaiting_seller", dest="done")
    workflow.on(FundsReceived, source="awaiting_buyer", then=FAIL)
    return CompiledWorkflow(workflow)


def test_a_failed_saga_keeps_its_parked_events_for_resume():
    compiled = _strict()
    saga = park(compiled, opened_saga(compiled), 1)

    failed = decide(compiled, saga, event(FundsReceived("e-1"), "m-funds"), NOW)
    assert (failed.saga.status, failed.dropped_parked) == (Status.FAILED, ())
    assert [p["message_id"] for p in failed.saga.parked] == ["m-seller-0"]

    resume = Incoming(OPERATOR + "resume", "op-1", {}, kind="operator", actor="ops")
    resumed = decide(compiled, failed.saga, resume, NOW).saga
    done = decide(compiled, resumed, event(BuyerSigned("e-1"), "m-buyer"), NOW)
    assert done.applied_parked == ("m-seller-0",)
    assert (done.saga.state, done.saga.parked) == ("done", ())


# replay -------------------------------------------------------------------------------------------------
def _journal(compiled: CompiledWorkflow, messages: list[Incoming]) -> tuple[SagaSnapshot, list[JournalEntry]]:
    """Decide ``messages`` in turn, journaling each taken decision as the service does."""
    saga: SagaSnapshot | None = None
    entries = []
    for index, message in enumerate(messages):
        at = NOW + timedelta(minutes=index)
        decision: Decision = decide(compiled, saga, message, at)
        if decision.outcome is Outcome.REFUSED:
            continue
        saga = decision.saga
        entries.append(JournalEntry(saga.id, saga.version, message, decision.summary(), at))
    assert saga is not None
    return saga, entries


def _sellers(count: int) -> list[Incoming]:
    return [event(SellerSigned("e-1"), f"m-seller-{i}") for i in range(count)]


def test_replay_gives_back_a_saga_that_dropped_its_parked_events():
    compiled = CompiledWorkflow(escrow, max_parked=2)
    opening = Incoming(EscrowOpened.TYPE, "m-open", OPENED)
    refused = event(BuyerRefused("e-1", "no"), "m-refused")
    voided = event(DocumentsVoided("e-1"), "m-voided")

    row, entries = _journal(compiled, [opening, *_sellers(3), refused, voided])  # the third is refused

    assert (row.state, row.parked, row.version) == ("refused", (), 5)
    assert entries[-1].decision["dropped_parked"] == ["m-seller-0", "m-seller-1"]
    assert differences(row, replay(compiled, entries)) == []


def test_replay_does_not_refuse_what_a_higher_cap_took():
    row, entries = _journal(
        CompiledWorkflow(escrow, max_parked=5),
        [
            Incoming(EscrowOpened.TYPE, "m-open", OPENED),
            *_sellers(4),
        ],
    )

    assert differences(row, replay(CompiledWorkflow(escrow, max_parked=2), entries)) == []


def test_replay_of_a_journal_from_before_dropping_keeps_what_the_row_kept():
    compiled = CompiledWorkflow(escrow)
    refused = event(BuyerRefused("e-1", "no"), "m-refused")
    row, entries = _journal(compiled, [Incoming(EscrowOpened.TYPE, "m-open", OPENED), *_sellers(2), refused])
    # As the orchestrator wrote them before: the closing entry says nothing of dropping, the row
    # still holds both signatures.
    old_entries = [
        replace(e, decision={k: v for k, v in e.decision.items() if k != "dropped_parked"}) for e in entries
    ]
    old_row = replace(row, parked=tuple(e.message.as_json() for e in entries[1:3]))

    assert differences(old_row, replay(compiled, old_entries)) == []
    assert differences(row, replay(compiled, entries)) == []


# the service ---------------------------------------------------------------------------------------------
def envelope(message: Message, message_id: str, workflow: str | None = None) -> Envelope:
    return Envelope(orjson.dumps(dump(message)), message.TYPE, message_id, None, workflow)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


#: the signature service's replies taken without section 6 ids (ORCHESTRATOR_UNCHECKED_REPLIES), as
#: while it moves to them: the cap bounds what such a service can park on a saga. (Checked, a
#: saga takes one reply per command and type, and the cap is reached only by a workflow's own sends.)
UNCHECKED = Limits(unchecked_replies=frozenset({"seller", "buyer"}))


async def test_a_message_past_the_cap_is_dead_lettered_and_nothing_is_recorded_for_it(store):
    registry = Registry([escrow], max_parked=2)
    await process_batch(registry, store, [envelope(EscrowOpened("e-1", "b-1", "s-1", 90_000), "m-open")], NOW)
    parked = [envelope(SellerSigned("e-1"), f"m-seller-{i}") for i in range(2)]
    assert (await process_batch(registry, store, parked, NOW, UNCHECKED)).verdicts == [Verdict.ACCEPTED] * 2
    saga_before, journal_before = store.sagas[E1], list(store.journals[E1])

    later = NOW + timedelta(minutes=1)
    batch = [envelope(SellerSigned("e-1"), "m-seller-2"), envelope(BuyerSigned("e-1"), "m-buyer")]
    result = await process_batch(registry, store, batch, later, UNCHECKED)

    reason = "parking full: 2 events parked for this saga (ORCHESTRATOR_MAX_PARKED=2)"
    assert result.verdicts == [Verdict.DEAD, Verdict.ACCEPTED]
    assert result.reasons == [reason, None]
    assert [d.saga.state for d in result.decisions] == ["awaiting_funds"]  # the buyer's, only
    assert "m-seller-2" not in store.inbox and store.inbox["m-buyer"] == E1
    journal = store.journals[E1]
    assert journal[: len(journal_before)] == journal_before
    assert [e.message.message_id for e in journal[len(journal_before) :]] == ["m-buyer"]
    assert store.sagas[E1].version == saga_before.version + 1


async def test_a_refused_message_for_several_sagas_is_recorded_for_none(store):
    """SellerSigned goes to the escrow (full: refused) and to its twin (where it moves): neither."""
    twin = escrow.with_deadlines("twin", timedelta(days=3))
    registry = Registry([escrow, twin], max_parked=1)
    opened = EscrowOpened("e-1", "b-1", "s-1", 90_000)
    setup = [
        envelope(opened, "m-open", "escrow"),
        envelope(opened, "m-open-twin", "twin"),
        envelope(SellerSigned("e-1"), "m-seller-0", "escrow"),  # parked in the escrow
        envelope(BuyerSigned("e-1"), "m-buyer-twin", "twin"),  # the twin now waits on the seller
    ]
    assert (await process_batch(registry, store, setup, NOW, UNCHECKED)).verdicts == [Verdict.ACCEPTED] * 4
    twin_id = saga_id_for("twin", "e-1")
    before: dict[str, Any] = {s: (store.sagas[s], list(store.journals[s])) for s in (E1, twin_id)}

    result = await process_batch(
        registry, store, [envelope(SellerSigned("e-1"), "m-seller-1")], NOW, UNCHECKED
    )

    assert result.verdicts == [Verdict.DEAD]
    assert result.reasons == ["parking full: 1 events parked for this saga (ORCHESTRATOR_MAX_PARKED=1)"]
    assert result.decisions == [] and result.commands == []
    assert {s: (store.sagas[s], store.journals[s]) for s in (E1, twin_id)} == before
    assert store.sagas[twin_id].state == "awaiting_seller"
    assert "m-seller-1" not in store.inbox


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    kit = WorkflowTestKit(escrow, now=NOW, max_parked=2, unchecked_replies=["seller"])
    yield kit
    kit.close()


def test_kit_dead_letters_past_the_cap_and_replay_still_matches(kit):
    kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
    results = [kit.publish(SellerSigned("e-1"), message_id=f"m-seller-{i}") for i in range(3)]
    kit.publish(BuyerRefused("e-1", "no"))
    kit.publish(DocumentsVoided("e-1"))

    assert [r.verdicts for r in results] == [[Verdict.ACCEPTED], [Verdict.ACCEPTED], [Verdict.DEAD]]
    assert [reason for _, reason in kit.dead] == [
        "parking full: 2 events parked for this saga (ORCHESTRATOR_MAX_PARKED=2)"
    ]
    saga = kit.saga("e-1")
    assert (saga.state, saga.parked) == ("refused", ())
    journal = kit.journal(saga)
    assert [e.message.message_id for e in journal][1:3] == ["m-seller-0", "m-seller-1"]
    assert journal[-1].decision["dropped_parked"] == ["m-seller-0", "m-seller-1"]
    assert kit.replay_differences(saga) == []
