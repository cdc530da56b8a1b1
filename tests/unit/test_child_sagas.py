"""Issue 28, item 2: child sagas. A step starts a saga of another workflow and takes its outcome
as its own; the parent's compensation cancels the child, or compensates it from its end when it
completed; a deadline on the step cancels it. Driven through the test kit, which delivers what
sagas send each other as the orchestrator's own queue does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from orchestrator import ChildCompleted, DefinitionError, Saga, child, parallel, step
from orchestrator.core.children import CancelChild, children_of, parent_of
from orchestrator.core.engine import OutgoingCommand, reply_id_for, saga_id_for
from orchestrator.core.ingress import DEFAULT_LIMITS, Reason, envelope
from orchestrator.examples.contracts import (
    ChargePayment,
    Line,
    OrderShipped,
    OutOfStock,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    ShipmentFailed,
    StockReleased,
    StockReserved,
)
from orchestrator.examples.shop import (
    WORKFLOWS,
    FulfilmentRequested,
    FulfilmentSaga,
    InvoiceRefused,
    InvoiceSent,
    ShopOrderPlaced,
    ShopOrderSaga,
)
from orchestrator.testing import SagaSnapshot, WorkflowTestKit


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    kit = WorkflowTestKit(*WORKFLOWS)
    yield kit
    kit.close()


def order(key: str = "o-1") -> ShopOrderPlaced:
    return ShopOrderPlaced(key, "c-1", [Line("sku-1", 2)], 1500)


def shop(kit: WorkflowTestKit, key: str = "o-1") -> SagaSnapshot:
    return kit.saga(key, "shop_order")


def fulfilment(kit: WorkflowTestKit, key: str = "o-1") -> SagaSnapshot:
    return kit.saga(key, "fulfilment")


def last(kit: WorkflowTestKit, type_: str) -> OutgoingCommand:
    return [c for c in kit.sent if c.type == type_][-1]


def charged(kit: WorkflowTestKit, key: str = "o-1") -> None:
    kit.publish(order(key))
    kit.reply(last(kit, "payment.ChargePayment"), PaymentCharged(key, "ch-1"))


def reserved_and_shipped(kit: WorkflowTestKit, key: str = "o-1") -> None:
    kit.reply(last(kit, "inventory.ReserveStock"), StockReserved(key, "r-1"))
    kit.reply(last(kit, "shipping.ShipOrder"), OrderShipped(key, "t-1"))


def test_the_step_starts_the_child_once_and_takes_its_completion_as_done(kit: WorkflowTestKit) -> None:
    charged(kit)
    parent = shop(kit)
    assert parent.state == "fulfil"
    start = last(kit, FulfilmentRequested.TYPE)
    # the child's start is the parent's command, to the orchestrator's own queue, with its id
    assert start.route == "start:fulfilment" and start.saga_id == parent.id
    child_saga = fulfilment(kit)
    assert child_saga.state == "reserve" and child_saga.status == "running"
    assert parent_of(child_saga.branches) == {
        "name": "parent",
        "link": "parent",
        "saga_id": parent.id,
        "reply_to": start.message_id,
        "awaiting": [],
    }
    assert [c["saga_id"] for c in children_of(parent.branches)] == [child_saga.id]

    reserved_and_shipped(kit)
    told = last(kit, ChildCompleted.TYPE)
    assert told.message_id == reply_id_for(start.message_id, ChildCompleted.TYPE)
    assert told.route == f"saga:{parent.id}"
    assert fulfilment(kit).status == "completed"
    assert shop(kit).state == "invoice"
    kit.reply(last(kit, "billing.SendInvoice"), InvoiceSent("o-1"))
    assert shop(kit).status == "completed"
    # the data the parent keeps is its own: a child's outcome carries none of the child's
    assert "saga_id" not in shop(kit).data
    assert kit.replay_differences(shop(kit)) == [] and kit.replay_differences(fulfilment(kit)) == []


def test_a_start_delivered_twice_starts_one_child(kit: WorkflowTestKit) -> None:
    charged(kit)
    start = last(kit, FulfilmentRequested.TYPE)
    kit.sent.clear()
    kit._internal.append(start)  # the relay sent it again after a crash, same id
    kit._between_sagas()
    assert fulfilment(kit).version == 1
    assert kit.sent == []


def test_a_compensated_child_fails_the_step_and_the_parent_refunds(kit: WorkflowTestKit) -> None:
    charged(kit)
    kit.reply(last(kit, "inventory.ReserveStock"), OutOfStock("o-1", "sku-1"))
    assert fulfilment(kit).status == "compensated"
    assert shop(kit).state == "compensating_charge"
    assert [c.type for c in kit.sent if c.saga_id == shop(kit).id][-1] == "payment.RefundPayment"
    kit.reply(last(kit, "payment.RefundPayment"), PaymentRefunded("o-1"))
    assert shop(kit).status == "compensated"


def test_a_later_failure_compensates_the_completed_child_from_its_end(kit: WorkflowTestKit) -> None:
    charged(kit)
    reserved_and_shipped(kit)
    kit.reply(last(kit, "billing.SendInvoice"), InvoiceRefused("o-1", "no address"))
    parent = shop(kit)
    assert parent.state == "compensating_fulfil"
    cancel = last(kit, CancelChild.TYPE)
    assert cancel.route == f"saga:{fulfilment(kit).id}"
    reopened = fulfilment(kit)
    # reopened: compensating from its end, the stock given back; the ship step has no undo
    assert (reopened.state, reopened.status) == ("compensating_reserve", "compensating")
    assert parent_of(reopened.branches)["reply_to"] == cancel.message_id  # type: ignore[index]
    kit.reply(last(kit, "inventory.ReleaseStock"), StockReleased("o-1"))
    assert fulfilment(kit).status == "compensated"
    assert shop(kit).state == "compensating_charge"
    kit.reply(last(kit, "payment.RefundPayment"), PaymentRefunded("o-1"))
    assert shop(kit).status == "compensated"
    assert kit.replay_differences(shop(kit)) == [] and kit.replay_differences(fulfilment(kit)) == []
    outcomes = [e.decision["outcome"] for e in kit.journal(fulfilment(kit))]
    assert "reopened" in outcomes
    counts = kit.bus.counts
    assert counts.sagas_reopened == {"fulfilment": 1}
    # finished twice: completed, then compensated after its reopening
    assert counts.sagas_finished[("fulfilment", "completed")] == 1
    assert counts.sagas_finished[("fulfilment", "compensated")] == 1


def test_the_steps_deadline_cancels_the_running_child(kit: WorkflowTestKit) -> None:
    charged(kit)
    kit.reply(last(kit, "inventory.ReserveStock"), StockReserved("o-1", "r-1"))
    kit.advance(timedelta(minutes=2, seconds=1))
    # the child was cancelled at once, while it shipped: its stock is being given back
    assert fulfilment(kit).state == "compensating_reserve"
    assert shop(kit).state == "compensating_charge"
    kit.reply(last(kit, "payment.RefundPayment"), PaymentRefunded("o-1"))
    kit.reply(last(kit, "inventory.ReleaseStock"), StockReleased("o-1"))
    assert shop(kit).status == "compensated" and fulfilment(kit).status == "compensated"
    # one cancel; the child's answer to it is journaled on the parent as nothing it waits on
    assert [c.type for c in kit.sent].count(CancelChild.TYPE) == 1
    assert kit.journal(shop(kit))[-1].decision["reason"].startswith("saga.ChildCompensated answers no")


def test_a_child_that_completes_after_the_deadline_is_compensated_once(kit: WorkflowTestKit) -> None:
    charged(kit)
    kit.reply(last(kit, "inventory.ReserveStock"), StockReserved("o-1", "r-1"))
    ship = last(kit, "shipping.ShipOrder")
    kit.advance(timedelta(minutes=2, seconds=1))
    assert fulfilment(kit).state == "compensating_reserve"  # cancelled mid-way: undoing the stock
    kit.reply(ship, OrderShipped("o-1", "t-1"))  # too late: the child compensates on
    kit.reply(last(kit, "inventory.ReleaseStock"), StockReleased("o-1"))
    kit.reply(last(kit, "payment.RefundPayment"), PaymentRefunded("o-1"))
    assert fulfilment(kit).status == "compensated" and shop(kit).status == "compensated"
    assert [c.type for c in kit.sent].count("inventory.ReleaseStock") == 1


def test_an_operators_cancel_of_the_parent_cancels_the_child(kit: WorkflowTestKit) -> None:
    charged(kit)
    kit.reply(last(kit, "inventory.ReserveStock"), StockReserved("o-1", "r-1"))
    kit.act(shop(kit), "cancel")
    assert fulfilment(kit).state == "compensating_reserve"
    kit.reply(last(kit, "inventory.ReleaseStock"), StockReleased("o-1"))
    kit.reply(last(kit, "payment.RefundPayment"), PaymentRefunded("o-1"))
    assert fulfilment(kit).status == "compensated" and shop(kit).status == "compensated"


def test_a_failed_child_fails_the_step_and_a_resume_compensates_it(kit: WorkflowTestKit) -> None:
    charged(kit)
    kit.reply(last(kit, "inventory.ReserveStock"), StockReserved("o-1", "r-1"))
    kit.reply(last(kit, "shipping.ShipOrder"), ShipmentFailed("o-1", "lost"))
    kit.advance(timedelta(seconds=31))  # the release is never confirmed: the child fails
    assert fulfilment(kit).status == "failed"
    assert shop(kit).state == "compensating_charge"  # its step failed; the cancel is kept there
    kit.reply(last(kit, "payment.RefundPayment"), PaymentRefunded("o-1"))
    assert shop(kit).status == "compensated"
    kit.act(fulfilment(kit), "resume", step="compensating_reserve")
    kit.reply(last(kit, "inventory.ReleaseStock"), StockReleased("o-1"))
    assert fulfilment(kit).status == "compensated"


def test_a_cancel_from_another_saga_changes_nothing(kit: WorkflowTestKit) -> None:
    charged(kit)
    child_saga = fulfilment(kit)
    forged = CancelChild(saga_id=child_saga.id, parent=saga_id_for("shop_order", "o-2"))
    kit.publish(forged, correlation_id=child_saga.id, message_id="forged-1")
    after = fulfilment(kit)
    assert (after.state, after.status) == ("reserve", "running")
    assert kit.journal(after)[-1].decision["reason"].endswith("which did not start this one")


def test_saga_messages_from_the_events_exchange_are_refused() -> None:
    """Only the orchestrator sends messages of the saga service, into its own queue."""
    limits = DEFAULT_LIMITS
    for type_ in (ChildCompleted.TYPE, CancelChild.TYPE):
        taken = envelope(b"{}", {"type": type_, "message_id": "m-1"}, "ns.events", type_, limits)
        assert taken.refused is not None and taken.refused.reason is Reason.SENDER
    # a parent named by whoever publishes to the events exchange is not read
    outside = envelope(
        b"{}", {"type": "x.Y", "message_id": "m", "headers": {"x-parent-saga": "p"}}, "ns.events", "x.Y"
    )
    assert outside.parent is None
    own = envelope(b"{}", {"type": "x.Y", "message_id": "m", "headers": {"x-parent-saga": "p"}}, "", "q")
    assert own.parent == "p"


def test_a_child_step_cannot_run_in_a_parallel_group() -> None:
    with pytest.raises(DefinitionError, match="parallel"):

        class Broken(Saga, starts_on=ShopOrderPlaced, key="order_id", name="broken"):
            @child(FulfilmentSaga)
            def fulfil(self, o: ShopOrderPlaced) -> FulfilmentRequested:
                return FulfilmentRequested(o.order_id, o.lines)

            @step(done=PaymentCharged, failed=PaymentDeclined)
            def charge(self, o: ShopOrderPlaced) -> ChargePayment:
                return ChargePayment(o.order_id, o.customer_id, o.amount_cents)

            both = parallel(fulfil, charge)


def test_a_child_workflow_is_not_a_participant_and_is_in_the_fingerprint() -> None:
    from orchestrator.core.routing import Registry

    registry = Registry(WORKFLOWS)
    assert "warehouse" not in {t.split(".")[0] for t in registry.command_types()}
    assert "saga" not in {t.split(".")[0] for t in registry.command_types()}
    assert ShopOrderSaga.workflow.children == {"fulfil": "fulfilment"}
    assert "children" not in str(FulfilmentSaga.workflow.fingerprint())


def test_a_completion_that_crosses_the_deadlines_cancel_is_compensated_once(kit: WorkflowTestKit) -> None:
    """The child completes while the parent's deadline gives up on it: the parent's cancel
    reopens it, and its completion, arriving late, is a late success whose undo (a second
    cancel) is awaited and confirmed by the child's one compensation."""
    import orjson

    from orchestrator.core.messages import dump
    from orchestrator.testing import Envelope

    charged(kit)
    kit.reply(last(kit, "inventory.ReserveStock"), StockReserved("o-1", "r-1"))
    ship = last(kit, "shipping.ShipOrder")
    shipped = OrderShipped("o-1", "t-1")
    reply_id = reply_id_for(ship.message_id, shipped.TYPE)
    kit._handle(Envelope(orjson.dumps(dump(shipped)), shipped.TYPE, reply_id, ship.saga_id))
    assert fulfilment(kit).status == "completed"
    completed = kit._internal.pop()  # its outcome, held back on the way
    assert completed.type == ChildCompleted.TYPE
    kit.advance(timedelta(minutes=2, seconds=1))
    assert fulfilment(kit).state == "compensating_reserve"  # reopened by the deadline's cancel
    kit._internal.append(completed)
    kit._between_sagas()
    parent = shop(kit)
    undo = [b for b in parent.branches if b["name"].startswith("undo:fulfil:")]
    assert len(undo) == 1 and undo[0]["awaiting"][0]["type"] == CancelChild.TYPE
    kit.reply(last(kit, "inventory.ReleaseStock"), StockReleased("o-1"))
    kit.reply(last(kit, "payment.RefundPayment"), PaymentRefunded("o-1"))
    assert fulfilment(kit).status == "compensated"
    assert shop(kit).status == "compensated"
    assert not [b for b in shop(kit).branches if b["name"].startswith("undo:")]
    assert [c.type for c in kit.sent].count("inventory.ReleaseStock") == 1
    assert kit.replay_differences(shop(kit)) == [] and kit.replay_differences(fulfilment(kit)) == []


def test_check_names_a_child_workflow_that_is_not_loaded_and_a_cycle_of_children() -> None:
    from dataclasses import replace

    from orchestrator.core.checks import check_all

    findings = check_all([ShopOrderSaga.workflow])
    assert [(f.code, f.state) for f in findings] == [("child_not_loaded", "fulfil")]
    assert check_all(WORKFLOWS) == []
    # fulfilment starting a shop order of its own would close a loop
    looping = replace(FulfilmentSaga.workflow, children={"ship": "shop_order"})
    cycles = [f for f in check_all([ShopOrderSaga.workflow, looping]) if f.code == "child_cycle"]
    assert [f.message for f in cycles] == [
        "a cycle of child sagas: fulfilment -> shop_order -> fulfilment",
        "a cycle of child sagas: shop_order -> fulfilment -> shop_order",
    ]


def _dead(type_: str, body: bytes, headers: dict[str, str], correlation_id: str | None = None) -> Any:
    from datetime import UTC, datetime

    from orchestrator.service.ports import DeadLetterRow

    props = {"type": type_, "message_id": "cmd-1", "headers": headers}
    if correlation_id:
        props["correlation_id"] = correlation_id
    return DeadLetterRow(
        1, datetime.now(UTC), "orchestrator", "unknown_workflow", "x", "cmd-1", type_, correlation_id,
        "", "ns.orchestrator.events", props, len(body), len(body), None, None, body,
    )  # fmt: skip


def test_a_dead_lettered_message_between_sagas_is_replayed_into_the_orchestrators_queue() -> None:
    """Replayed as its sender journaled it (type, body, route), through the default exchange: a
    start keeps its parent, an outcome its parent; one whose headers say otherwise stays put."""
    import asyncio

    import orjson

    from orchestrator.service.dead_letters import ReplayRoutes, Target, republished, target_of
    from orchestrator.service.ports import SentCommand

    routes = ReplayRoutes("ns.commands", "ns.events", frozenset(), "ns.orchestrator.events")
    body = b'{"order_id":"o-1","lines":[]}'
    parent = saga_id_for("shop_order", "o-1")

    async def sent(saga: str, message_id: str) -> SentCommand | None:
        journaled = {parent: SentCommand(FulfilmentRequested.TYPE, orjson.loads(body), "start:fulfilment")}
        return journaled.get(saga) if message_id == "cmd-1" else None

    start = _dead(
        FulfilmentRequested.TYPE,
        body,
        {"x-saga-id": parent, "x-parent-saga": parent, "x-workflow": "fulfilment"},
    )
    target = asyncio.run(target_of(start, routes, sent))
    assert target == Target("", "ns.orchestrator.events", "internal")
    again = republished(start)
    taken = envelope(body, {**again, "type": again["message_type"]}, target.exchange, target.routing_key)
    assert taken.refused is None and taken.parent == parent
    forged = _dead(FulfilmentRequested.TYPE, body, {"x-saga-id": parent, "x-parent-saga": "someone-else"})
    assert "x-parent-saga is not saga" in str(asyncio.run(target_of(forged, routes, sent)))
    elsewhere = {"x-saga-id": parent, "x-parent-saga": parent, "x-workflow": "shop_order"}
    assert "x-workflow or x-schema-version" in str(
        asyncio.run(target_of(_dead(start.message_type or "", body, elsewhere), routes, sent))
    )
    unknown = _dead(ChildCompleted.TYPE, b"{}", {"x-saga-id": "nobody"}, correlation_id=parent)
    assert "sent no such message" in str(asyncio.run(target_of(unknown, routes, sent)))


def test_verify_finds_a_message_between_sagas_whose_route_was_changed(kit: WorkflowTestKit) -> None:
    from dataclasses import replace

    charged(kit)
    parent = shop(kit)
    start = last(kit, FulfilmentRequested.TYPE)
    assert start.message_id in kit.store.outbox
    row, at = kit.store.outbox[start.message_id]
    kit.store.outbox[start.message_id] = (replace(row, route=None), at)  # as if to a participant
    assert any("routed None, the journal 'start:fulfilment'" in d for d in kit.replay_differences(parent))


def test_run_refuses_a_parent_whose_child_workflow_is_not_loaded() -> None:
    """Its children's starts would be dead-lettered every time: ``run`` (the registry) says so at
    start, as ``check`` does."""
    from orchestrator.core.routing import Registry

    with pytest.raises(DefinitionError, match="no such workflow is loaded"):
        Registry([ShopOrderSaga.workflow])


def test_a_customers_cancel_mid_fulfilment_cancels_the_child_and_refunds(kit: WorkflowTestKit) -> None:
    from orchestrator.examples.shop import ShopOrderCancelled

    charged(kit)
    kit.reply(last(kit, "inventory.ReserveStock"), StockReserved("o-1", "r-1"))
    kit.publish(ShopOrderCancelled("o-1"))
    assert fulfilment(kit).state == "compensating_reserve"
    assert shop(kit).state == "compensating_charge"
    kit.reply(last(kit, "inventory.ReleaseStock"), StockReleased("o-1"))
    kit.reply(last(kit, "payment.RefundPayment"), PaymentRefunded("o-1"))
    assert fulfilment(kit).status == "compensated" and shop(kit).status == "compensated"
