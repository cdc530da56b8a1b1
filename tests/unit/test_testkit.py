"""The test kit as the README shows it: a user's workflow test, no broker, no database."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.examples import OrderSaga
from orchestrator.examples.contracts import Line, OrderPlaced, StockReserved
from orchestrator.testing import WorkflowTestKit


def test_the_readme_example() -> None:
    kit = WorkflowTestKit(OrderSaga.workflow)
    kit.publish(OrderPlaced("o-1", "c-1", [Line("sku-1", 1)], 500))
    [reserve] = kit.take_sent()
    kit.reply(reserve, StockReserved("o-1", "r-1"))
    assert kit.sent_types() == ["payment.ChargePayment"]

    kit.advance(timedelta(minutes=1))
    assert kit.saga("o-1").state == "charge"  # not yet due
    kit.advance(timedelta(minutes=2))  # the charge deadline passes
    assert kit.saga("o-1").state == "compensating_reserve"
    assert kit.sent_types() == ["payment.ChargePayment", "inventory.ReleaseStock"]
    assert kit.replay_differences(kit.saga("o-1")) == []
    kit.close()
