"""Retries with backoff, late successes undone, and compensations that give up: through the kit."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator import Saga, step
from orchestrator.core.definitions import Retry, Status
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
from orchestrator.testing import WorkflowTestKit


class RetryingOrder(Saga, starts_on=OrderPlaced, key="order_id", name="retrying"):
    @step(
        done=StockReserved,
        deadline=timedelta(seconds=60),
        retry=Retry(every=timedelta(seconds=5), backoff=2.0, max_every=timedelta(seconds=15)),
    )
    def reserve(self, order: OrderPlaced) -> ReserveStock:
        return ReserveStock(order.order_id, order.lines)

    @reserve.compensate(
        done=StockReleased,
        deadline=timedelta(seconds=30),
        retry=Retry(every=timedelta(seconds=10), backoff=1),
    )
    def release(self, order: OrderPlaced) -> ReleaseStock:
        return ReleaseStock(order.order_id)

    @step(done=PaymentCharged, failed=PaymentDeclined, deadline=timedelta(seconds=20))
    def charge(self, order: OrderPlaced) -> ChargePayment:
        return ChargePayment(order.order_id, order.customer_id, order.amount_cents)

    @charge.compensate(done=PaymentRefunded)
    def refund(self, order: OrderPlaced) -> RefundPayment:
        return RefundPayment(order.order_id)


ORDER = OrderPlaced("o-1", "c-1", [Line("sku", 1)], 700)


@pytest.fixture
def kit() -> WorkflowTestKit:
    return WorkflowTestKit(RetryingOrder.workflow)


def test_a_step_is_resent_with_the_same_message_id_and_backoff(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    [first] = kit.take_sent()
    resent_at = []
    for _ in range(40):
        kit.advance(timedelta(seconds=1))
        for command in kit.take_sent():
            assert (command.message_id, command.type, command.payload) == (
                first.message_id,
                first.type,
                first.payload,
            )
            resent_at.append(int((kit.now - kit.saga("o-1").created_at).total_seconds()))  # type: ignore[operator]
    # every 5 s, doubling, at most 15 s: 5, 15 (5+10), 30 (15+15), 45
    assert resent_at == [5, 15, 30]
    saga_ = kit.saga("o-1")
    assert saga_.attempt == 3 and saga_.state == "reserve"
    assert [e.decision["outcome"] for e in kit.journal(saga_)][-1] == "retried"
    assert kit.replay_differences(saga_) == []


def test_a_reply_stops_the_retries(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    [reserve] = kit.take_sent()
    kit.advance(timedelta(seconds=6))
    assert kit.take_sent() == [reserve]
    kit.reply(reserve, StockReserved("o-1", "r-1"))
    assert kit.sent_types() == ["payment.ChargePayment"]
    kit.take_sent()
    kit.advance(timedelta(seconds=15))  # the charge step has no retry and its deadline is 20 s
    assert kit.take_sent() == []
    assert kit.saga("o-1").attempt == 0


def test_the_deadline_ends_the_retries_and_the_timeout_rule_applies(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    kit.advance(timedelta(seconds=61))
    saga_ = kit.saga("o-1")
    assert (saga_.state, saga_.status) == ("compensated", Status.COMPENSATED)
    sent = kit.take_sent()
    kit.advance(timedelta(minutes=5))
    assert kit.take_sent() == []  # no retry outlives its state
    assert {c.type for c in sent} == {"inventory.ReserveStock"}


def test_a_success_after_the_deadline_is_undone(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    [reserve] = kit.take_sent()
    kit.reply(reserve, StockReserved("o-1", "r-1"))
    [charge] = kit.take_sent()
    kit.advance(timedelta(seconds=21))  # charge times out: release the stock
    assert kit.sent_types() == ["inventory.ReleaseStock"]
    [release] = kit.take_sent()
    kit.reply(release, StockReleased("o-1"))
    assert kit.saga("o-1").status == Status.COMPENSATED

    kit.reply(charge, PaymentCharged("o-1", "ch-1"))  # the charge went through after all

    saga_ = kit.saga("o-1")
    assert kit.sent_types() == ["payment.RefundPayment"]
    # the refund declares done=: awaited, the saga compensating again until it is confirmed
    assert saga_.status == Status.COMPENSATING and saga_.timed_out == ()
    assert kit.journal(saga_)[-1].decision["outcome"] == "late_undone"
    [refund] = kit.take_sent()
    kit.reply(charge, PaymentCharged("o-1", "ch-1"))  # the same late reply again: a duplicate
    kit.publish(PaymentCharged("o-1", "ch-1"), correlation_id=saga_.id)  # or another copy of it
    assert kit.take_sent() == []
    kit.reply(refund, PaymentRefunded("o-1"))
    assert kit.saga("o-1").status == Status.COMPENSATED
    assert kit.replay_differences(kit.saga("o-1")) == []


def test_a_compensation_that_never_answers_fails_the_saga_with_the_reason(kit: WorkflowTestKit) -> None:
    kit.publish(ORDER)
    [reserve] = kit.take_sent()
    kit.reply(reserve, StockReserved("o-1", "r-1"))
    [charge] = kit.take_sent()
    kit.reply(charge, PaymentDeclined("o-1", "no funds"))
    [release] = kit.take_sent()
    assert release.type == "inventory.ReleaseStock"

    kit.advance(timedelta(seconds=31))

    resent = kit.take_sent()
    assert [c.message_id for c in resent] == [
        release.message_id
    ] * 2  # at 10 and 20 s; at 30 the deadline wins
    saga_ = kit.saga("o-1")
    assert saga_.status == Status.FAILED and saga_.state == "failed"
    assert saga_.last_error == "no reply in compensating_reserve before its deadline"
    assert kit.replay_differences(saga_) == []
