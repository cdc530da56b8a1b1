"""What a start event and a reply carry (issue 11, item 3), and replies nobody waits for (item 4):
a reply correlated to a saga of ours is journaled on it, never dead-lettered."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
import pytest

from orchestrator.definitions import DefinitionError, Retry, Status, Workflow
from orchestrator.engine import Outcome, OutgoingCommand, saga_id_for
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import (
    BuyerRefused,
    BuyerSigned,
    EscrowOpened,
    FundsReceived,
    Line,
    OrderPlaced,
    ReturnFunds,
    SellerSigned,
    StockReserved,
)
from orchestrator.ingress import Reason
from orchestrator.messages import Event
from orchestrator.service import Envelope, Verdict
from orchestrator.testing import WorkflowTestKit

E1 = saga_id_for("escrow", "e-1")
O1 = saga_id_for("order", "o-1")


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    kit = WorkflowTestKit(*WORKFLOWS)
    yield kit
    kit.close()


def raw(
    type_: str, body: dict[str, Any], correlation_id: str | None = None, message_id: str = ""
) -> Envelope:
    return Envelope(orjson.dumps(body), type_, message_id or str(uuid.uuid4()), correlation_id)


def reply_to(kit: WorkflowTestKit, command: OutgoingCommand, type_: str, message_id: str = "") -> Any:
    """The example participant's reply to ``command``: same correlation id, a stable reply id."""
    reply_id = message_id or str(uuid.uuid5(uuid.NAMESPACE_OID, f"{command.message_id}:{type_}"))
    return kit.deliver(raw(type_, {"escrow_id": command.payload["escrow_id"]}, command.saga_id, reply_id))


def sent(kit: WorkflowTestKit, type_: str) -> OutgoingCommand:
    return next(c for c in kit.sent if c.type == type_)


# item 4: replies nobody waits for ----------------------------------------------------------------------
def test_a_reply_to_a_final_state_s_compensation_is_journaled_not_dead_lettered(kit):
    kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
    kit.publish(BuyerRefused("e-1", "no"), correlation_id=E1)
    saga = kit.saga("e-1", "escrow")
    assert (saga.state, saga.status) == ("refused", "compensated")
    void = sent(kit, "seller.VoidDocuments")

    result = reply_to(kit, void, "seller.DocumentsVoided")

    assert result.verdicts == [Verdict.ACCEPTED]
    assert kit.dead == [] and kit.store.dead_letters == []
    last = kit.journal(kit.saga("e-1", "escrow"))[-1]
    assert last.message.type == "seller.DocumentsVoided"
    assert last.decision["outcome"] == "ignored"
    assert last.decision["reason"] == "saga is already compensated"
    assert kit.store.inbox[last.message.message_id] == E1  # taken: the inbox remembers its id
    assert kit.replay_differences(kit.saga("e-1", "escrow")) == []


def test_the_same_reply_again_is_a_duplicate(kit):
    kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
    kit.publish(BuyerRefused("e-1", "no"), correlation_id=E1)
    void = sent(kit, "seller.VoidDocuments")
    reply_to(kit, void, "seller.DocumentsVoided")
    entries = len(kit.journal(kit.saga("e-1", "escrow")))

    again = reply_to(kit, void, "seller.DocumentsVoided")

    assert again.verdicts == [Verdict.DUPLICATE]
    assert len(kit.journal(kit.saga("e-1", "escrow"))) == entries
    assert kit.dead == []


def test_a_closed_escrow_s_funds_released_is_journaled(kit):
    kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
    kit.publish(BuyerSigned("e-1"), correlation_id=E1)
    kit.publish(SellerSigned("e-1"), correlation_id=E1)
    kit.publish(FundsReceived("e-1"), correlation_id=E1)
    assert kit.saga("e-1", "escrow").state == "closed"

    result = reply_to(kit, sent(kit, "bank.ReleaseFunds"), "bank.FundsReleased")

    assert result.verdicts == [Verdict.ACCEPTED] and kit.dead == []
    assert kit.journal(kit.saga("e-1", "escrow"))[-1].decision["outcome"] == "ignored"


def test_a_reply_nobody_waits_for_in_a_running_saga_is_ignored_not_parked_nor_failed(kit):
    kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
    before = kit.saga("e-1", "escrow")

    result = kit.deliver(raw("bank.FundsReturned", {"escrow_id": "e-1"}, E1))

    after = kit.saga("e-1", "escrow")
    assert result.verdicts == [Verdict.ACCEPTED]
    assert [d.outcome for d in result.decisions] == [Outcome.IGNORED]
    assert (
        result.decisions[0].reason
        == "bank.FundsReturned is not an event of workflow escrow: nothing waits for it"
    )
    assert (after.state, after.status, after.parked, after.version) == (
        before.state,
        before.status,
        (),
        before.version + 1,
    )


def test_an_unknown_type_without_a_saga_of_ours_is_still_dead_lettered(kit):
    uncorrelated = kit.deliver(raw("seller.DocumentsVoided", {"escrow_id": "e-1"}))
    unknown_saga = kit.deliver(raw("seller.DocumentsVoided", {"escrow_id": "e-1"}, "no-such-saga"))

    assert uncorrelated.verdicts == unknown_saga.verdicts == [Verdict.DEAD]
    assert [r.reason if r else None for r in uncorrelated.refusals + unknown_saga.refusals] == [
        Reason.UNKNOWN_TYPE,
        Reason.UNKNOWN_TYPE,
    ]


# item 3: what a start event and a reply carry -----------------------------------------------------------
PLACED = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "lines": [{"sku": "s", "quantity": 1}],
    "amount_cents": 100,
}


def test_a_start_event_is_identified_by_its_key_not_its_correlation_id(kit):
    started = kit.deliver(raw(OrderPlaced.TYPE, PLACED, correlation_id="names-no-saga"))
    assert started.verdicts == [Verdict.ACCEPTED] and kit.saga("o-1", "order").state == "reserve"

    other = kit.deliver(raw(OrderPlaced.TYPE, {**PLACED, "order_id": "o-2"}, correlation_id=O1))

    assert other.verdicts == [Verdict.ACCEPTED]
    assert [d.outcome for d in other.decisions] == [Outcome.STARTED]
    assert kit.saga("o-2", "order").key == "o-2"
    assert kit.saga("o-1", "order").version == 1  # the saga its correlation id named is untouched


def test_a_reply_whose_correlation_id_names_no_saga_is_refused_whatever_its_key(kit):
    kit.publish(OrderPlaced("o-1", "c-1", [Line("s", 1)], 100))

    result = kit.publish(StockReserved("o-1", "r-1"), correlation_id="names-no-saga")

    assert result.verdicts == [Verdict.DEAD]
    assert result.refusals[0] is not None and result.refusals[0].reason is Reason.UNKNOWN_SAGA
    assert kit.saga("o-1", "order").state == "reserve"


def test_a_reply_without_correlation_id_is_matched_by_its_key(kit):
    kit.publish(OrderPlaced("o-1", "c-1", [Line("s", 1)], 100))

    result = kit.publish(StockReserved("o-1", "r-1"))

    assert result.verdicts == [Verdict.ACCEPTED]
    assert kit.saga("o-1", "order").state == "charge"


# item 4: a final state's undo with a deadline and a retry ---------------------------------------------
@dataclass(frozen=True)
class FundsReturned(Event):
    TYPE = "bank.FundsReturned"
    escrow_id: str


def _waiting_undo() -> Workflow:
    """The escrow's expiry, with ReturnFunds waited for: sent again every minute, failed after an hour."""
    workflow = Workflow("patient", starts_on=EscrowOpened, key="escrow_id")
    workflow.state("awaiting_buyer", deadline=timedelta(days=3), on_deadline="returning")
    workflow.state(
        "returning",
        status=Status.COMPENSATING,
        send=ReturnFunds,
        deadline=timedelta(hours=1),
        on_deadline="failed",
        retry=Retry(every=timedelta(minutes=1), backoff=1),
    )
    workflow.state("expired", final=True, status=Status.COMPENSATED)
    workflow.state("failed", final=True, status=Status.FAILED)
    workflow.state("closed", final=True)
    workflow.on(BuyerSigned, source="awaiting_buyer", dest="closed")
    workflow.on(FundsReturned, source="returning", dest="expired")
    return workflow


def test_a_final_state_refuses_a_retry_and_says_how_to_wait_instead():
    with pytest.raises(DefinitionError, match="status=COMPENSATING"):
        Workflow("w", starts_on=EscrowOpened, key="escrow_id").state(
            "expired", final=True, compensate=[ReturnFunds], retry=Retry(every=timedelta(minutes=1))
        )


def test_an_undo_sent_from_a_compensating_state_is_retried_until_its_reply():
    kit = WorkflowTestKit(_waiting_undo())
    try:
        kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
        kit.advance(timedelta(days=3))
        first = kit.take_sent()
        assert [c.type for c in first] == ["bank.ReturnFunds"]
        assert kit.saga("e-1").status == "compensating"

        kit.advance(timedelta(minutes=2))
        resent = kit.take_sent()
        assert [c.message_id for c in resent] == [first[0].message_id] * 2  # same id: deduped

        kit.reply(first[0], FundsReturned("e-1"))
        assert (kit.saga("e-1").state, kit.saga("e-1").status) == ("expired", "compensated")
        assert kit.replay_differences(kit.saga("e-1")) == []
    finally:
        kit.close()


async def test_a_reply_to_a_saga_that_failed_at_its_start_is_journaled_not_a_crash() -> None:
    """A saga that failed at its start has no state of its workflow; the late-confirmation check
    looked its state up and raised, which failed the reply's batch on every try."""
    from datetime import UTC, datetime

    import orjson

    from orchestrator.engine import saga_id_for
    from orchestrator.examples import WORKFLOWS
    from orchestrator.routing import Registry
    from orchestrator.service import Envelope, Verdict, process_batch
    from orchestrator.store_memory import MemoryStore

    registry, store, now = Registry(WORKFLOWS), MemoryStore(), datetime.now(UTC)
    start = {"order_id": "o-big", "customer_id": "c", "lines": [{"sku": "s", "quantity": 1}]}
    placed = orjson.dumps({**start, "amount_cents": "1" * 25})  # fits the schema, not a command
    first = await process_batch(registry, store, [Envelope(placed, "orders.OrderPlaced", "m-1")], now)
    saga_id = saga_id_for("order", "o-big")
    assert first.verdicts == [Verdict.ACCEPTED] and store.sagas[saga_id].status == "failed"

    reply = orjson.dumps({"order_id": "o-big", "reservation_id": "r"})
    second = await process_batch(
        registry, store, [Envelope(reply, "inventory.StockReserved", "m-2", saga_id)], now
    )

    assert second.verdicts == [Verdict.ACCEPTED]
    assert [e.decision["outcome"] for e in store.journals[saga_id]][-1] == "ignored"
