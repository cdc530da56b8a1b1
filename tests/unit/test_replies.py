"""What a start event and a reply carry (issue 11, item 3), and replies nobody waits for (item 4):
a reply correlated to a saga of ours is journaled on it, never dead-lettered."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.definitions import DefinitionError, Retry, Status, Undo, Workflow
from orchestrator.core.engine import Outcome, OutgoingCommand, reply_id_for, saga_id_for
from orchestrator.core.ingress import Limits, Reason, envelope
from orchestrator.core.messages import Command, Event, dump
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS, escrow
from orchestrator.examples.contracts import (
    BuyerRefused,
    BuyerSigned,
    DocumentsVoided,
    EscrowOpened,
    FundsReceived,
    FundsReturned,
    Line,
    OrderPlaced,
    PaymentCharged,
    ReturnFunds,
    SellerSigned,
    StockReserved,
    VoidDocuments,
)
from orchestrator.service.batch import Envelope, Verdict
from orchestrator.service.bus import MessageBus
from orchestrator.service.counts import Counts
from orchestrator.testing import WorkflowTestKit
from tests.outlets import NoRelay

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
def test_a_final_state_s_undo_waits_for_its_reply_and_a_second_reply_is_journaled(kit):
    kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
    kit.publish(BuyerRefused("e-1", "no"), correlation_id=E1)
    assert (kit.saga("e-1", "escrow").state, kit.saga("e-1", "escrow").status) == (
        "refused_undo_1",
        "compensating",
    )
    void = sent(kit, "seller.VoidDocuments")

    confirmed = reply_to(kit, void, "seller.DocumentsVoided")
    assert confirmed.verdicts == [Verdict.ACCEPTED]
    assert (kit.saga("e-1", "escrow").state, kit.saga("e-1", "escrow").status) == ("refused", "compensated")
    # the participant answered a re-sent VoidDocuments a second time: the same reply id, a
    # duplicate; under an id of its own it answers no command of the saga, and is refused
    again = reply_to(kit, void, "seller.DocumentsVoided")
    own = reply_to(kit, void, "seller.DocumentsVoided", message_id="m-second-answer")

    assert again.verdicts == [Verdict.DUPLICATE]
    assert own.verdicts == [Verdict.DEAD]
    assert [r.reason for r in own.refusals if r] == [Reason.NOT_AWAITED]
    assert kit.saga("e-1", "escrow").status == "compensated"
    assert "m-second-answer" not in kit.store.inbox
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
    command = kit.sent[0].message_id  # a reply of a type nothing waits for, to a command it sent

    result = kit.deliver(
        raw("bank.FundsReleased", {"escrow_id": "e-1"}, E1, reply_id_for(command, "bank.FundsReleased"))
    )

    after = kit.saga("e-1", "escrow")
    assert result.verdicts == [Verdict.ACCEPTED]
    assert [d.outcome for d in result.decisions] == [Outcome.IGNORED]
    assert (
        result.decisions[0].reason
        == "bank.FundsReleased is not an event of workflow escrow: nothing waits for it"
    )
    assert (after.state, after.status, after.parked, after.version) == (
        before.state,
        before.status,
        (),
        before.version + 1,
    )


def test_a_message_naming_a_saga_that_answers_none_of_its_commands_is_dead_lettered_not_journaled(kit):
    """Issue 27, case 2: junk with a live saga's (computable) id must not grow its journal."""
    kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
    kit.publish(OrderPlaced("o-1", "c-1", [Line("sku-1", 1)], 1000))
    before = kit.saga("e-1", "escrow")

    junk = [kit.deliver(raw("x.Junk", {"pad": "p" * 1000}, E1)) for _ in range(20)]
    elsewhere = kit.deliver(raw("inventory.StockReserved", {"order_id": "o-1", "reservation_id": "r"}, E1))
    forged = kit.deliver(
        raw("bank.FundsReleased", {"escrow_id": "e-1"}, E1, reply_id_for("guess", "bank.FundsReleased"))
    )

    assert {v for r in junk for v in r.verdicts} == {Verdict.DEAD}
    assert [r.reason for r in junk[0].refusals] == [Reason.UNKNOWN_TYPE]
    assert "answers no command saga" in (junk[0].refusals[0].detail if junk[0].refusals[0] else "")
    assert [r.reason for r in elsewhere.refusals if r] == [Reason.NOT_AWAITED]
    assert forged.verdicts == [Verdict.DEAD]
    assert kit.saga("e-1", "escrow").version == before.version  # nothing journaled


def test_an_unknown_type_without_a_saga_of_ours_is_still_dead_lettered(kit):
    uncorrelated = kit.deliver(raw("bank.FundsReleased", {"escrow_id": "e-1"}))
    unknown_saga = kit.deliver(raw("bank.FundsReleased", {"escrow_id": "e-1"}, "no-such-saga"))

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
def test_a_final_state_refuses_a_retry_and_says_to_declare_an_undo():
    with pytest.raises(DefinitionError, match="Undo"):
        Workflow("w", starts_on=EscrowOpened, key="escrow_id").state(
            "expired", final=True, compensate=[ReturnFunds], retry=Retry(every=timedelta(minutes=1))
        )


def test_undo_and_a_fire_and_forget_command_do_not_mix():
    with pytest.raises(DefinitionError, match="every command is an Undo or none is"):
        Workflow("w", starts_on=EscrowOpened, key="escrow_id").state(
            "expired", final=True, compensate=[Undo(ReturnFunds, done=FundsReturned), VoidDocuments]
        )


def test_a_final_state_s_undo_is_retried_with_the_same_id_until_its_reply():
    kit = WorkflowTestKit(escrow)
    try:
        kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
        kit.take_sent()
        kit.advance(timedelta(days=3))
        first = kit.take_sent()
        assert [c.type for c in first] == ["bank.ReturnFunds"]
        assert kit.saga("e-1").status == "compensating"

        kit.advance(timedelta(seconds=35))  # resent after 10 s and 20 s more
        resent = kit.take_sent()
        assert [c.message_id for c in resent] == [first[0].message_id] * 2  # same id: deduped

        kit.reply(first[0], FundsReturned("e-1"))
        void = kit.take_sent()
        assert [c.type for c in void] == ["seller.VoidDocuments"]
        kit.reply(void[0], DocumentsVoided("e-1"))
        assert (kit.saga("e-1").state, kit.saga("e-1").status) == ("expired", "compensated")
        assert kit.replay_differences(kit.saga("e-1")) == []
    finally:
        kit.close()


def test_a_final_state_s_undo_not_confirmed_by_its_deadline_fails_the_saga_and_resume_resends_it():
    kit = WorkflowTestKit(escrow)
    try:
        kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
        kit.publish(BuyerRefused("e-1", "no"))
        void = next(c for c in kit.take_sent() if c.type == "seller.VoidDocuments")

        kit.advance(timedelta(hours=1, seconds=1))
        saga = kit.saga("e-1")
        assert (saga.state, saga.status) == ("refused_failed", "failed")
        assert saga.last_error == "no reply in refused_undo_1 before its deadline"
        kit.take_sent()

        kit.act(saga, "resume")  # by default into the undo it gave up on, the same command again
        again = kit.take_sent()
        assert [(c.type, c.message_id) for c in again] == [(void.type, void.message_id)]
        kit.reply(void, DocumentsVoided("e-1"))
        assert (kit.saga("e-1").state, kit.saga("e-1").status) == ("refused", "compensated")
        assert kit.replay_differences(kit.saga("e-1")) == []
    finally:
        kit.close()


async def test_a_reply_to_a_saga_that_failed_at_its_start_is_journaled_not_a_crash() -> None:
    """A saga that failed at its start has no state of its workflow; the late-confirmation check
    looked its state up and raised, which failed the reply's batch on every try."""
    from datetime import UTC, datetime

    import orjson

    from orchestrator.adapters.memory import MemoryStore
    from orchestrator.core.engine import saga_id_for
    from orchestrator.core.routing import Registry
    from orchestrator.examples import WORKFLOWS
    from orchestrator.service.batch import Envelope, Verdict, process_batch

    registry, store, now = Registry(WORKFLOWS), MemoryStore(), datetime.now(UTC)
    start = {"order_id": "o-big", "customer_id": "c", "lines": [{"sku": "s", "quantity": 1}]}
    placed = orjson.dumps({**start, "amount_cents": "1" * 25})  # fits the schema, not a command
    first = await process_batch(registry, store, [Envelope(placed, "orders.OrderPlaced", "m-1")], now)
    saga_id = saga_id_for("order", "o-big")
    assert first.verdicts == [Verdict.ACCEPTED] and store.sagas[saga_id].status == "failed"

    reply = orjson.dumps({"order_id": "o-big", "reservation_id": "r"})
    # it sent no command, so no reply answers it: let by as a service moving to section 6 ids is
    unchecked = Limits(unchecked_replies=frozenset({"inventory"}))
    second = await process_batch(
        registry, store, [Envelope(reply, "inventory.StockReserved", "m-2", saga_id)], now, unchecked
    )

    assert second.verdicts == [Verdict.ACCEPTED]
    assert [e.decision["outcome"] for e in store.journals[saga_id]][-1] == "ignored"


async def test_a_service_moving_to_section_6_ids_is_let_by_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 27: ORCHESTRATOR_UNCHECKED_REPLIES names the services whose replies are still taken
    without a section 6 reply id, during their migration; every other one is dead-lettered."""
    store = MemoryStore()
    registry, counts = Registry(WORKFLOWS), Counts()
    bus = MessageBus(
        registry,
        store,
        outbox=NoRelay(),
        counts=counts,
        clock=lambda: datetime.now(UTC),
        limits=Limits(unchecked_replies=frozenset({"bank"})),
    )
    await bus.handle(
        [Envelope(orjson.dumps(dump(EscrowOpened("e-1", "b-1", "s-1", 9))), EscrowOpened.TYPE, "m-0")], [0.0]
    )

    legacy = await bus.handle([raw("bank.FundsReleased", {"escrow_id": "e-1"}, E1)], [0.0])
    other = await bus.handle([raw("x.Junk", {"escrow_id": "e-1"}, E1)], [0.0])

    assert legacy.verdicts == [Verdict.ACCEPTED] and other.verdicts == [Verdict.DEAD]
    assert counts.unchecked_replies == {"bank": 1}
    assert "took bank's message" in caplog.text and "ORCHESTRATOR_UNCHECKED_REPLIES" in caplog.text


# issue 27, case 3: a reply is taken only as the reply to a command its saga sent --------------------------
def test_an_event_of_the_saga_s_workflow_that_answers_none_of_its_commands_is_dead_lettered(kit):
    """The payment service publishes inventory.StockReserved for a saga that waits on its stock:
    without the reply id of the ReserveStock it sent, it is refused and changes nothing."""
    kit.publish(OrderPlaced("o-1", "c-1", [Line("sku-1", 1)], 1000))
    before = kit.saga("o-1", "order")
    body = {"order_id": "o-1", "reservation_id": "forged"}

    correlated = kit.deliver(raw(StockReserved.TYPE, body, O1, "forged-1"))
    by_key = kit.deliver(raw(StockReserved.TYPE, body, None, "forged-2"))
    guessed = kit.deliver(raw(StockReserved.TYPE, body, O1, reply_id_for("a-guess", StockReserved.TYPE)))

    for result in (correlated, by_key, guessed):
        assert result.verdicts == [Verdict.DEAD]
        [refusal] = result.refusals
        assert refusal is not None and refusal.reason is Reason.NOT_AWAITED
        assert "answers no command saga" in refusal.detail and "section 6" in refusal.detail
    assert kit.saga("o-1", "order") == before  # nothing journaled, nothing in the inbox
    assert not {"forged-1", "forged-2"} & set(kit.store.inbox)
    reserve = sent(kit, "inventory.ReserveStock")
    taken = kit.reply(reserve, StockReserved("o-1", "r-1"))  # the inventory's own reply
    assert taken.verdicts == [Verdict.ACCEPTED] and kit.saga("o-1", "order").state == "charge"


def test_a_reply_to_a_command_sent_before_is_taken_though_the_saga_waits_on_another(kit):
    """A step's success after its deadline: the saga waits on nothing of it, but its journal sent
    it, so the success is taken (and undone), and a finished saga takes its own commands' replies."""
    kit.publish(OrderPlaced("o-1", "c-1", [Line("sku-1", 1)], 1000))
    kit.reply(sent(kit, "inventory.ReserveStock"), StockReserved("o-1", "r-1"))
    charge = sent(kit, "payment.ChargePayment")
    kit.advance(timedelta(minutes=3))  # the charge's deadline: compensating
    assert kit.saga("o-1", "order").timed_out == ("charge",)

    late = kit.reply(charge, PaymentCharged("o-1", "ch-1"))

    assert late.verdicts == [Verdict.ACCEPTED]
    assert [d.outcome for d in late.decisions] == [Outcome.LATE_UNDONE]
    assert sent(kit, "payment.RefundPayment").saga_id == O1


def test_a_finished_saga_takes_the_replies_to_its_own_commands_and_nothing_else(kit):
    kit.publish(EscrowOpened("e-1", "b-1", "s-1", 90_000))
    kit.publish(BuyerRefused("e-1", "no"), correlation_id=E1)
    void = sent(kit, "seller.VoidDocuments")
    reply_to(kit, void, "seller.DocumentsVoided")
    assert kit.saga("e-1", "escrow").status == "compensated"
    version = kit.saga("e-1", "escrow").version

    own = reply_to(kit, kit.sent[0], "buyer.BuyerSigned")  # late, to its own signature request
    other = kit.deliver(raw("buyer.BuyerSigned", {"escrow_id": "e-1"}, E1, "not-a-reply"))

    assert own.verdicts == [Verdict.ACCEPTED] and own.decisions[0].outcome is Outcome.IGNORED
    assert other.verdicts == [Verdict.DEAD]
    assert [r.reason for r in other.refusals if r] == [Reason.NOT_AWAITED]
    assert kit.saga("e-1", "escrow").version == version + 1  # the own reply's entry only


def test_a_signal_is_taken_from_outside_without_a_reply_id():
    """An event the workflow declares ``signal=True`` answers none of its commands (a customer's
    cancellation): taken by correlation id or key, whatever its message id."""

    @dataclass(frozen=True)
    class Opened(Event):
        TYPE = "shop.Opened"
        order_id: str

    @dataclass(frozen=True)
    class Cancelled(Event):
        TYPE = "customer.Cancelled"
        order_id: str

    @dataclass(frozen=True)
    class Prepare(Command):
        TYPE = "kitchen.Prepare"
        order_id: str

    flow = Workflow("signalled", starts_on=Opened, key="order_id")
    flow.state("preparing", send=Prepare).state("cancelled", final=True, status=Status.COMPENSATED)
    flow.on(Cancelled, source="preparing", dest="cancelled", signal=True)
    assert flow.signals == {"customer.Cancelled"}
    kit = WorkflowTestKit(flow)
    try:
        kit.publish(Opened("o-1"))
        result = kit.deliver(raw("customer.Cancelled", {"order_id": "o-1"}, None, "from-the-customer"))
        assert result.verdicts == [Verdict.ACCEPTED]
        assert kit.saga("o-1", "signalled").state == "cancelled"
    finally:
        kit.close()


def test_an_event_whose_routing_key_is_not_its_type_is_refused_at_the_door():
    """Topic permissions bind routing keys: a type that differs from its routing key would pass
    a permission meant for another service's types."""
    limits = Limits(events_exchange="ns.events")
    properties = {"type": "inventory.StockReserved", "message_id": "m-1"}

    forged = envelope(b"{}", properties, "ns.events", "payment.Anything", limits)
    honest = envelope(b"{}", properties, "ns.events", "inventory.StockReserved", limits)
    handed_over = envelope(b"{}", properties, "", "ns.orchestrator.events", limits)  # default exchange

    assert forged.refused is not None and forged.refused.reason is Reason.ROUTING_KEY
    assert "'payment.Anything'" in forged.refused.detail and "section 3" in forged.refused.detail
    assert honest.refused is None and handed_over.refused is None


# issue 27: the validated user_id names the service (ORCHESTRATOR_SENDERS) ---------------------------------
SENDERS = {"orders": "shop", "inventory": "inventory-svc"}


@pytest.mark.parametrize(
    ("type_", "user_id", "exchange", "refused"),
    [
        ("inventory.StockReserved", "inventory-svc", "ns.events", None),
        ("orders.OrderPlaced", "shop", "ns.events", None),
        ("inventory.StockReserved", "payment-svc", "ns.events", "user_id 'payment-svc', but inventory's"),
        ("inventory.StockReserved", None, "ns.events", "no user_id, but inventory's"),
        ("payment.PaymentCharged", "payment-svc", "ns.events", "names no broker user for service 'payment'"),
        (
            "inventory.StockReserved",
            None,
            "",
            None,
        ),  # moved in by the orchestrator (a hand-over): checked before
    ],
)
def test_an_event_must_carry_its_service_s_broker_user(type_, user_id, exchange, refused):
    limits = Limits(events_exchange="ns.events", senders=SENDERS)
    properties = {"type": type_, "message_id": "m-1", "user_id": user_id}
    headers = {"x-original-exchange": "ns.events", "x-original-routing-key": type_} if not exchange else {}
    routing_key = type_ if exchange else "ns.orchestrator.events"

    got = envelope(b"{}", {**properties, "headers": headers}, exchange, routing_key, limits)

    if refused is None:
        assert got.refused is None
    else:
        assert got.refused is not None and got.refused.reason is Reason.SENDER
        assert refused in got.refused.detail
    unchecked = envelope(
        b"{}", properties, exchange or "ns.events", type_, Limits(events_exchange="ns.events")
    )
    assert unchecked.refused is None  # without ORCHESTRATOR_SENDERS: nothing asked


def test_orchestrator_senders_is_read_as_service_user_pairs_and_refused_otherwise(
    monkeypatch: pytest.MonkeyPatch,
):
    from orchestrator.entrypoints.settings import Settings
    from orchestrator.settings import SettingsError

    monkeypatch.delenv("ORCHESTRATOR_SENDERS", raising=False)
    assert Settings.from_env().senders is None
    monkeypatch.setenv("ORCHESTRATOR_SENDERS", " orders=shop , inventory = inv ")
    assert Settings.from_env().senders == (("orders", "shop"), ("inventory", "inv"))
    for bad in ("orders", "orders=", "=shop", "orders.x=shop", "orders=a,orders=b"):
        monkeypatch.setenv("ORCHESTRATOR_SENDERS", bad)
        with pytest.raises(SettingsError, match="ORCHESTRATOR_SENDERS"):
            Settings.from_env()
