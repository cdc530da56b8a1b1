"""``orchestrator verify``'s comparisons (orchestrator.core.replay): the row, the pending timers, the
commands each entry records and the unsent outbox against what the journal implies, with each
command's payload journaled."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import Saga, step
from orchestrator.core.definitions import Retry, Status
from orchestrator.core.engine import Deadline, Incoming, OutgoingCommand
from orchestrator.core.replay import (
    command_differences,
    outbox_differences,
    rebuild,
    timer_differences,
    verify,
)
from orchestrator.core.routing import Registry
from orchestrator.examples.contracts import (
    ChargePayment,
    Line,
    OrderPlaced,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    StockReleased,
    StockReserved,
)
from orchestrator.service.store import DueDeadline, JournalEntry
from orchestrator.testing import WorkflowTestKit


class AuditedOrder(Saga, starts_on=OrderPlaced, key="order_id", name="audited"):
    @step(
        done=StockReserved,
        deadline=timedelta(seconds=60),
        retry=Retry(every=timedelta(seconds=5), backoff=1),
    )
    def reserve(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @reserve.compensate(done=StockReleased, deadline=timedelta(seconds=30))
    def release(self, order: OrderPlaced) -> ReleaseStock:
        return ReleaseStock(order.order_id)

    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=timedelta(seconds=20))
    def charge(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)

    @charge.compensate(done=PaymentRefunded)
    def refund(self, order: OrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)


ORDER = OrderPlaced("o-1", "c-1", [Line("sku", 2)], 700)
ORDER_TIME = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    kit = WorkflowTestKit(AuditedOrder.workflow)
    yield kit
    kit.close()


def _timers(kit: WorkflowTestKit) -> dict[str, tuple[str, int]]:
    return {kind: (d.state, v) for (_, kind), (d, v) in kit.store.deadlines.items()}


def test_the_journal_records_each_command_with_its_payload(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    [reserve] = kit.take_sent()
    kit.advance(timedelta(seconds=5))  # a retry: the same command again, journaled again
    assert kit.take_sent() == [reserve]
    saga_ = kit.saga("o-1")
    recorded = [c for e in kit.journal(saga_) for c in e.decision["commands"]]
    expected = {"type": reserve.type, "message_id": reserve.message_id, "payload": dict(reserve.payload)}
    assert recorded == [expected, expected]
    assert recorded[0]["payload"] == {"order_id": "o-1", "lines": [{"sku": "sku", "quantity": 2}]}


def test_replay_gives_the_timers_a_journal_leaves_pending(kit: WorkflowTestKit) -> None:
    compiled = kit.registry.workflows["audited"]
    kit.publish(ORDER)
    saga_ = kit.saga("o-1")
    rebuilt = rebuild(compiled, kit.journal(saga_))
    assert {k: (d.state, d.kind, v) for k, (d, v) in rebuilt.timers.items()} == {
        "deadline": ("reserve", "deadline", 1),
        "retry": ("reserve", "retry", 1),
    }
    assert rebuilt.timers["deadline"][0].due_at == kit.now + timedelta(seconds=60)
    kit.advance(timedelta(seconds=5))  # the retry fires and sets the next one; the deadline stays
    rebuilt = rebuild(compiled, kit.journal(kit.saga("o-1")))
    assert {k: (d.state, v) for k, (d, v) in rebuilt.timers.items()} == _timers(kit)
    assert _timers(kit) == {"deadline": ("reserve", 1), "retry": ("reserve", 2)}
    reserve, _ = kit.take_sent()
    kit.reply(reserve, StockReserved("o-1", "r-1"))  # charge: a deadline, no retry
    rebuilt = rebuild(compiled, kit.journal(kit.saga("o-1")))
    assert (
        {k: (d.state, v) for k, (d, v) in rebuilt.timers.items()}
        == _timers(kit)
        == {"deadline": ("charge", 3)}
    )
    [charge] = kit.take_sent()
    kit.reply(charge, PaymentDeclined("o-1", "no funds"))  # compensating: release's deadline
    kit.advance(timedelta(seconds=31))  # it fires: failed, nothing pending
    saga_ = kit.saga("o-1")
    assert saga_.status == Status.FAILED
    assert rebuild(compiled, kit.journal(saga_)).timers == {} == kit.store.deadlines
    assert kit.replay_differences(saga_) == []


def test_a_timer_row_that_differs_from_the_journal_is_reported(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    saga_ = kit.saga("o-1")
    assert kit.replay_differences(saga_) == []
    deadline, version = kit.store.deadlines[(saga_.id, "deadline")]
    pending = f"reserve due {deadline.due_at.isoformat()} (version {version})"

    later = replace(deadline, due_at=deadline.due_at + timedelta(hours=1))
    kit.store.deadlines[(saga_.id, "deadline")] = (later, version)
    assert kit.replay_differences(saga_) == [
        f"timer deadline: row has reserve due {later.due_at.isoformat()} (version 1), journal gives {pending}"
    ]

    del kit.store.deadlines[(saga_.id, "deadline")]
    assert kit.replay_differences(saga_) == [f"timer deadline: row has none, journal gives {pending}"]

    kit.store.deadlines[(saga_.id, "deadline")] = (deadline, version)
    kit.store.deadlines[(saga_.id, "retry")] = (Deadline("charge", deadline.due_at, "retry"), 1)
    [found] = kit.replay_differences(saga_)
    assert found.startswith("timer retry: row has charge due ") and found.endswith(
        f"journal gives reserve due {(kit.now + timedelta(seconds=5)).isoformat()} (version 1)"
    )


def test_a_timer_left_after_the_journal_cancelled_it_is_reported() -> None:
    rows = [DueDeadline("s", "reserve", 1, ORDER_TIME, "deadline")]
    assert timer_differences(rows, {}) == [
        f"timer deadline: row has reserve due {ORDER_TIME.isoformat()} (version 1), journal gives none"
    ]
    implied = {"deadline": (Deadline("reserve", ORDER_TIME), 2)}
    assert timer_differences(rows, implied) == [
        f"timer deadline: row has reserve due {ORDER_TIME.isoformat()} (version 1),"
        f" journal gives reserve due {ORDER_TIME.isoformat()} (version 2)"
    ]


def test_an_outbox_row_the_journal_does_not_imply_is_reported(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    [reserve] = kit.take_sent()
    saga_ = kit.saga("o-1")
    assert [c.message_id for c, _ in kit.store.outbox.values()] == [reserve.message_id]
    assert kit.replay_differences(saga_) == []
    at = kit.store.outbox[reserve.message_id][1]

    forged = replace(reserve, payload={**reserve.payload, "lines": [{"sku": "sku", "quantity": 200}]})
    kit.store.outbox[reserve.message_id] = (forged, at)
    [found] = kit.replay_differences(saga_)
    assert found.startswith(f"outbox {reserve.message_id} inventory.ReserveStock ")
    assert "'quantity': 200" in found and "the journal records inventory.ReserveStock {" in found

    kit.store.outbox[reserve.message_id] = (replace(reserve, type="payment.RefundPayment"), at)
    [found] = kit.replay_differences(saga_)
    assert found.startswith(f"outbox {reserve.message_id} payment.RefundPayment ")

    kit.store.outbox[reserve.message_id] = (reserve, at)
    extra = OutgoingCommand("m-extra", "payment.RefundPayment", {"order_id": "o-1"}, saga_.id, "audited")
    kit.store.outbox["m-extra"] = (extra, at)
    assert kit.replay_differences(saga_) == [
        "outbox m-extra payment.RefundPayment {'order_id': 'o-1'}: the journal records no command m-extra"
    ]


def test_a_journaled_command_missing_from_the_outbox_was_sent(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    [reserve] = kit.take_sent()
    kit._loop.run_until_complete(kit.store.mark_sent([reserve.message_id]))
    assert kit.store.outbox == {}
    assert kit.replay_differences(kit.saga("o-1")) == []


def _before_payloads(entries: list[JournalEntry]) -> list[JournalEntry]:
    """The journal as it was written before commands' payloads were recorded."""
    return [
        replace(
            e,
            decision=e.decision
            | {"commands": [{k: v for k, v in c.items() if k != "payload"} for c in e.decision["commands"]]},
        )
        for e in entries
    ]


def test_a_journal_written_before_payloads_were_recorded_still_verifies(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    [reserve] = kit.take_sent()
    kit.advance(timedelta(seconds=5))
    saga_ = kit.saga("o-1")
    old = _before_payloads(kit.journal(saga_))
    assert all("payload" not in c for e in old for c in e.decision["commands"])
    kit.store.journals[saga_.id] = old
    assert kit.replay_differences(saga_) == []
    # its payload is not compared (the journal does not say it), its id and type still are
    forged = replace(reserve, payload={"order_id": "o-2"})
    assert outbox_differences([forged], saga_, old) == []
    assert outbox_differences([replace(reserve, type="inventory.ReleaseStock")], saga_, old) == [
        f"outbox {reserve.message_id} inventory.ReleaseStock {dict(reserve.payload)!r}:"
        " the journal records inventory.ReserveStock (payload not recorded)"
    ]
    assert outbox_differences([forged], saga_, kit.journal(saga_)[:0]) != []


def test_an_outbox_row_of_another_workflow_is_reported(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    [reserve] = kit.take_sent()
    saga_ = kit.saga("o-1")
    [found] = outbox_differences([replace(reserve, workflow="escrow")], saga_, kit.journal(saga_))
    assert found.endswith("of workflow 'escrow', the saga's is 'audited'")


# the commands each entry records, against what deciding it again sends ----------------------------
class ChangedOrder(Saga, starts_on=OrderPlaced, key="order_id", name="audited"):
    """``AuditedOrder`` with the charge's builder changed: the same states, another amount."""

    @step(
        done=StockReserved,
        deadline=timedelta(seconds=60),
        retry=Retry(every=timedelta(seconds=5), backoff=1),
    )
    def reserve(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @reserve.compensate(done=StockReleased, deadline=timedelta(seconds=30))
    def release(self, order: OrderPlaced) -> ReleaseStock:
        return ReleaseStock(order.order_id)

    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=timedelta(seconds=20))
    def charge(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents + 100)

    @charge.compensate(done=PaymentRefunded)
    def refund(self, order: OrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)


def _charged(kit: WorkflowTestKit) -> OutgoingCommand:
    """An order through a retry of its reserve, reserved, and charged: four journal entries."""
    kit.publish(ORDER)
    kit.advance(timedelta(seconds=5))
    reserve, _ = kit.take_sent()
    kit.reply(reserve, StockReserved("o-1", "r-1"))
    [charge] = kit.take_sent()
    kit._loop.run_until_complete(kit.store.mark_sent([reserve.message_id, charge.message_id]))
    return charge


def test_a_journal_whose_commands_the_workflow_still_sends_has_no_difference(kit: WorkflowTestKit) -> None:
    _charged(kit)
    saga_ = kit.saga("o-1")
    journal = kit.journal(saga_)
    rebuilt = rebuild(kit.registry.workflows["audited"], journal)
    assert [[c.type for c in sent] for sent in rebuilt.commands] == [
        ["inventory.ReserveStock"],
        ["inventory.ReserveStock"],  # the retry: the same command again
        ["payment.ChargePayment"],
    ]
    assert command_differences(journal, rebuilt.commands) == []
    assert kit.replay_differences(saga_) == []


def test_a_recorded_payload_the_workflow_does_not_send_is_reported(kit: WorkflowTestKit) -> None:
    charge = _charged(kit)
    saga_ = kit.saga("o-1")
    journal = kit.journal(saga_)
    entry = journal[-1]
    forged = dict(charge.payload) | {"amount_cents": 1}
    commands = [c | {"payload": forged} for c in entry.decision["commands"]]
    kit.store.journals[saga_.id] = [
        *journal[:-1],
        replace(entry, decision=entry.decision | {"commands": commands}),
    ]
    assert kit.replay_differences(saga_) == [
        f"journal #{entry.seq} (inventory.StockReserved): command {charge.message_id}:"
        f" recorded payment.ChargePayment {forged!r} but the workflow now sends {dict(charge.payload)!r}"
    ]


def test_a_builder_changed_since_the_journal_was_written_is_reported(kit: WorkflowTestKit) -> None:
    charge = _charged(kit)
    saga_ = kit.saga("o-1")
    changed = Registry([ChangedOrder.workflow]).workflows["audited"]
    records = kit._loop.run_until_complete(kit.store.records(saga_.id))
    found = verify(changed, records)
    now = dict(charge.payload) | {"amount_cents": 800}
    assert (
        f"journal #3 (inventory.StockReserved): command {charge.message_id}:"
        f" recorded payment.ChargePayment {dict(charge.payload)!r} but the workflow now sends {now!r}"
    ) in found
    # the row differs too (what the saga waits on), but no entry that sends no charge is named
    assert [line for line in found if line.startswith("journal")] == [found[-1]]
    # an entry journaled before payloads were recorded: compared by id and type only
    old = _before_payloads(records.journal)
    assert command_differences(old, rebuild(changed, old).commands) == []
    assert command_differences(old, rebuild(kit.registry.workflows["audited"], old).commands) == []


def test_a_command_sent_or_recorded_on_one_side_only_is_reported() -> None:
    message = Incoming("inventory.StockReserved", "m-1", {})
    sent = {"type": "payment.ChargePayment", "message_id": "c-1", "payload": {"amount_cents": 700}}
    entry = JournalEntry("s", 3, message, {"commands": [sent]}, ORDER_TIME)
    other = OutgoingCommand("c-2", "payment.RefundPayment", {"order_id": "o-1"}, "s", "audited")
    assert command_differences([entry], [(other,)]) == [
        "journal #3 (inventory.StockReserved): command c-1: recorded payment.ChargePayment"
        " {'amount_cents': 700} but the workflow now sends none",
        "journal #3 (inventory.StockReserved): command c-2: the workflow now sends"
        " payment.RefundPayment {'order_id': 'o-1'}, the journal records none",
    ]
    renamed = replace(other, message_id="c-1")
    assert command_differences([entry], [(renamed,)]) == [
        "journal #3 (inventory.StockReserved): command c-1: recorded payment.ChargePayment"
        " {'amount_cents': 700} but the workflow now sends payment.RefundPayment {'order_id': 'o-1'}"
    ]
