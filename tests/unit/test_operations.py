"""Starting sagas and operators' actions, through the same engine and journal as events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from orchestrator.core.definitions import FAIL, Status, Workflow
from orchestrator.core.engine import SagaSnapshot
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import (
    BuyerSigned,
    EscrowOpened,
    Line,
    OrderPlaced,
    PaymentCharged,
    RequestBuyerSignature,
    StockReleased,
    StockReserved,
)
from orchestrator.service.operations import ActionRefused, BadRequest, SagaNotFound
from orchestrator.testing import WorkflowTestKit

ORDER = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1200}

# A free machine whose unexpected events fail the saga: the way to a failed saga to resume.
strict = Workflow("strict", starts_on=EscrowOpened, key="escrow_id", unexpected=FAIL)
strict.state("signing", send=RequestBuyerSignature, deadline=timedelta(hours=1), on_deadline="given_up")
strict.state("waiting", send=RequestBuyerSignature)  # no deadline, no cancel route
strict.state("signed", final=True)
strict.state("given_up", final=True, status=Status.COMPENSATED)
strict.on(BuyerSigned, source="waiting", dest="signed")
ESCROW = {"buyer_id": "b", "seller_id": "s", "amount_cents": 1}


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    made = WorkflowTestKit(*WORKFLOWS, strict)
    yield made
    made.close()


def at_charge(kit: WorkflowTestKit, key: str = "o-1") -> SagaSnapshot:
    kit.publish(OrderPlaced(key, "c-1", [Line("sku-1", 1)], 1200))
    (reserve,) = kit.take_sent()
    kit.reply(reserve, StockReserved(key, "r-1"))
    kit.take_sent()
    saga = kit.saga(key, "order")
    assert saga.state == "charge"
    return saga


def last_entry(kit: WorkflowTestKit, saga: SagaSnapshot) -> tuple[str, str | None, str, dict[str, object]]:
    entry = kit.journal(saga)[-1]
    return entry.message.kind, entry.message.actor, entry.message.type, entry.decision


def test_a_start_request_starts_the_saga_its_starting_event_would(kit):
    applied = kit.start("order", "o-9", ORDER, actor="alice")

    assert applied.created
    assert (applied.saga.state, applied.saga.data["order_id"]) == ("reserve", "o-9")
    assert [c.type for c in applied.commands] == ["inventory.ReserveStock"]
    assert last_entry(kit, applied.saga)[:3] == ("operator", "alice", "orders.OrderPlaced")
    assert kit.replay_differences(applied.saga) == []


def test_a_start_request_is_idempotent_on_the_key_even_after_the_event_started_it(kit):
    kit.publish(OrderPlaced("o-1", "c-1", [Line("sku-1", 1)], 1200))
    kit.take_sent()

    again = kit.start("order", "o-1", ORDER)
    twice = kit.start("order", "o-2", ORDER), kit.start("order", "o-2", ORDER)

    assert not again.created and again.commands == [] and again.saga.version == 1
    assert [a.created for a in twice] == [True, False]
    assert len(kit.journal(twice[0].saga)) == 1


@pytest.mark.parametrize(
    ("workflow", "key", "data", "says"),
    [
        ("nope", "k", ORDER, "unknown workflow 'nope'"),
        ("order", "", ORDER, "key must not be empty"),
        ("order", "o-1", {**ORDER, "order_id": "o-2"}, "data.order_id is 'o-2' but key is 'o-1'"),
        ("order", "o-1", {"customer_id": "c-1"}, "data does not fit orders.OrderPlaced"),
        ("order", "o-1", {**ORDER, "amount_cents": "lots"}, "amount_cents"),
    ],
)
def test_a_start_request_that_does_not_fit_is_refused_and_writes_nothing(kit, workflow, key, data, says):
    with pytest.raises(BadRequest, match=says):
        kit.start(workflow, key, data)

    assert kit.store.sagas == {} and kit.store.journals == {}


def test_cancel_compensates_what_was_done_and_journals_who_and_why(kit):
    saga = at_charge(kit)

    applied = kit.act(saga, "cancel", actor="alice", reason="customer called")

    assert (applied.saga.state, applied.saga.status) == ("compensating_reserve", Status.COMPENSATING)
    assert [c.type for c in applied.commands] == ["inventory.ReleaseStock"]
    kind, actor, type_, decision = last_entry(kit, applied.saga)
    assert (kind, actor, type_) == ("operator", "alice", "operator.cancel")
    assert decision["reason"] == "cancel by alice: customer called"
    assert kit.journal(applied.saga)[-1].message.payload == {"reason": "customer called"}
    assert kit.replay_differences(applied.saga) == []


def test_a_charge_that_succeeds_after_a_cancel_is_refunded(kit):
    saga = at_charge(kit)
    kit.act(saga, "cancel")
    kit.take_sent()

    kit.publish(PaymentCharged("o-1", "ch-1"), correlation_id=saga.id)

    assert kit.sent_types() == ["payment.RefundPayment"]
    assert kit.replay_differences(kit.saga("o-1", "order")) == []


def test_cancel_is_refused_while_compensating_and_when_finished(kit):
    saga = at_charge(kit)
    compensating = kit.act(saga, "cancel").saga
    (release,) = kit.take_sent()

    with pytest.raises(ActionRefused, match="already compensating"):
        kit.act(compensating, "cancel")
    kit.reply(release, StockReleased("o-1"))
    with pytest.raises(ActionRefused, match="saga is already compensated"):
        kit.act(saga, "cancel")

    kinds = [e.message.kind for e in kit.journal(saga)]
    assert kinds == ["event", "event", "operator", "event"]  # no refusal is journaled


def test_a_state_without_its_own_cancel_route_is_cancelled_as_its_deadline_would_end_it(kit):
    signing = kit.start("strict", "e-1", ESCROW).saga

    assert kit.act(signing, "cancel").saga.state == "given_up"


def test_retry_resends_the_commands_waited_on_with_their_message_ids(kit):
    saga = at_charge(kit)
    applied = kit.act(saga, "retry", actor="bob")

    assert [(c.type, c.message_id) for c in applied.commands] == [
        (c["type"], c["message_id"]) for c in saga.awaiting
    ]
    assert applied.saga.state == "charge" and applied.saga.version == saga.version + 1
    assert kit.replay_differences(applied.saga) == []


def test_fire_deadline_now_moves_as_the_deadline_would(kit):
    saga = at_charge(kit)

    applied = kit.act(saga, "fire-deadline", reason="payment is down")

    assert applied.saga.state == "compensating_reserve"
    assert "payment.ChargePayment" not in [c.type for c in applied.commands]
    assert applied.saga.timed_out == ("charge",)
    assert kit.replay_differences(applied.saga) == []


def test_skip_takes_the_given_outcome_with_its_data(kit):
    saga = at_charge(kit)

    applied = kit.act(saga, "skip", outcome="payment.PaymentCharged", data={"charge_id": "manual-7"})

    assert applied.saga.state == "ship"
    assert applied.saga.data["charge_id"] == "manual-7"
    assert [c.type for c in applied.commands] == ["shipping.ShipOrder"]
    assert kit.replay_differences(applied.saga) == []


def test_skip_with_an_outcome_the_step_does_not_take_is_refused_with_the_ones_it_does(kit):
    saga = at_charge(kit)

    with pytest.raises(ActionRefused, match=r"it takes payment\.PaymentCharged, payment\.PaymentDeclined"):
        kit.act(saga, "skip", outcome="inventory.StockReserved")
    with pytest.raises(BadRequest, match=r"no event type 'made\.Up'"):
        kit.act(saga, "skip", outcome="made.Up")
    with pytest.raises(BadRequest, match="skip needs an outcome"):
        kit.act(saga, "skip")


def test_skip_data_must_fit_the_outcome_event_and_cannot_rename_the_saga(kit):
    saga = at_charge(kit)

    with pytest.raises(BadRequest, match=r"data does not fit payment\.PaymentCharged"):
        kit.act(saga, "skip", outcome="payment.PaymentCharged")  # no charge_id
    with pytest.raises(BadRequest, match=r"data does not fit payment\.PaymentCharged"):
        kit.act(saga, "skip", outcome="payment.PaymentCharged", data={"charge_id": ["not", "a", "string"]})
    with pytest.raises(BadRequest, match=r"data\.order_id is 'hijack' but the saga's key is 'o-1'"):
        kit.act(saga, "skip", outcome="payment.PaymentCharged", data={"order_id": "hijack", "charge_id": "c"})

    unchanged = kit.saga("o-1", "order")
    assert (unchanged.state, unchanged.version, unchanged.data["order_id"]) == ("charge", saga.version, "o-1")
    assert kit.take_sent() == []


def test_a_start_stores_its_data_as_the_event_would_carry_it(kit):
    loose = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": "2"}], "amount_cents": "1200"}

    applied = kit.start("order", "o-7", {**loose, "not_a_field": "dropped"})

    assert applied.saga.data["lines"] == [{"sku": "sku-1", "quantity": 2}]
    assert applied.saga.data["amount_cents"] == 1200
    assert "not_a_field" not in applied.saga.data
    assert kit.replay_differences(applied.saga) == []


def failed_in_signing(kit: WorkflowTestKit) -> SagaSnapshot:
    saga = kit.start("strict", "e-1", ESCROW).saga
    kit.take_sent()
    kit.publish(BuyerSigned("e-1"), correlation_id=saga.id)  # not allowed in signing: FAIL
    failed = kit.saga("e-1", "strict")
    assert (failed.state, failed.status) == ("signing", Status.FAILED)
    assert kit.store.deadlines == {}
    return failed


@pytest.mark.parametrize("new_attempt", [False, True])
def test_resume_enters_the_state_again_with_its_commands_and_a_fresh_deadline(kit, new_attempt):
    failed = failed_in_signing(kit)
    (first,) = kit.journal(failed)[0].decision["commands"]

    applied = kit.act(failed, "resume", actor="carol", reason="buyer service fixed", new_attempt=new_attempt)

    assert (applied.saga.state, applied.saga.status, applied.saga.last_error) == (
        "signing",
        Status.RUNNING,
        None,
    )
    (again,) = applied.commands
    # a new message id: the saga failed otherwise than by giving up on a compensation, so a reply
    # to the first may have been taken already, and the same id would bring it back as a
    # duplicate (only a compensation given up at its deadline is resent with its ids)
    assert again.type == first["type"]
    assert again.message_id != first["message_id"]
    assert [c["message_id"] for c in applied.saga.awaiting] == [again.message_id]
    assert kit.store.deadlines[(failed.id, "deadline")][0].due_at == kit.now + timedelta(hours=1)
    assert last_entry(kit, applied.saga)[:3] == ("operator", "carol", "operator.resume")
    assert kit.replay_differences(applied.saga) == []


def test_resume_from_a_chosen_step(kit):
    failed = failed_in_signing(kit)

    applied = kit.act(failed, "resume", step="waiting")
    kit.publish(BuyerSigned("e-1"), correlation_id=failed.id)

    assert applied.saga.state == "waiting"
    assert kit.saga("e-1", "strict").status is Status.COMPLETED


def test_resume_is_refused_unless_the_saga_failed_or_from_a_final_state(kit):
    failed = failed_in_signing(kit)

    with pytest.raises(ActionRefused, match="signed is a final state; resume from one of signing, waiting"):
        kit.act(failed, "resume", step="signed")
    running = kit.act(failed, "resume").saga
    with pytest.raises(ActionRefused, match="saga is running: only a failed saga resumes"):
        kit.act(running, "resume")


def test_no_other_action_is_taken_on_a_failed_saga(kit):
    failed = failed_in_signing(kit)

    for action in ("retry", "cancel", "fire-deadline"):
        with pytest.raises(ActionRefused, match="saga is already failed: resume it"):
            kit.act(failed, action)


def test_a_state_without_a_deadline_has_none_to_fire_and_no_cancel_route(kit):
    waiting = kit.act(failed_in_signing(kit), "resume", step="waiting").saga

    with pytest.raises(ActionRefused, match="no deadline is pending in waiting"):
        kit.act(waiting, "fire-deadline")
    with pytest.raises(ActionRefused, match="waiting has no cancel route"):
        kit.act(waiting, "cancel")


def test_actions_on_an_unknown_saga_or_with_an_unknown_name_are_bad_input(kit):
    saga = at_charge(kit)

    with pytest.raises(SagaNotFound):
        kit.act(SagaSnapshot("missing", "order", "k", "charge", Status.RUNNING, 1, {}), "retry")
    with pytest.raises(BadRequest, match="unknown action 'explode'"):
        kit.act(saga, "explode")
    with pytest.raises(BadRequest, match="no state 'nowhere'"):
        kit.act(saga, "resume", step="nowhere")
