"""Issue 28, item 6: the escrow's holding period as a wait (orchestrator/examples/held_escrow.py),
driven through the test kit in virtual time: the funds are released when the hold ends, and
given back when the buyer cancels while they are held."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from orchestrator.examples.contracts import FundsReceived, FundsReturned
from orchestrator.examples.held_escrow import (
    WORKFLOWS,
    EscrowCancelled,
    FundsReleased,
    HeldEscrowOpened,
)
from orchestrator.testing import OutgoingCommand, WorkflowTestKit


@pytest.fixture
def kit() -> Iterator[WorkflowTestKit]:
    kit = WorkflowTestKit(*WORKFLOWS)
    yield kit
    kit.close()


def last(kit: WorkflowTestKit, type_: str) -> OutgoingCommand:
    return [c for c in kit.sent if c.type == type_][-1]


def held(kit: WorkflowTestKit, days: int = 3) -> None:
    release_at = (kit.now + timedelta(days=days)).replace(tzinfo=None).isoformat()
    kit.publish(HeldEscrowOpened("e-1", "b-1", "s-1", 10_000, release_at))
    kit.reply(last(kit, "bank.CollectFunds"), FundsReceived("e-1"))


def test_the_funds_are_held_until_release_at_then_released(kit: WorkflowTestKit) -> None:
    held(kit)
    assert kit.saga("e-1").state == "hold"
    kit.advance(timedelta(days=2, hours=23))
    assert kit.saga("e-1").state == "hold" and "bank.ReleaseFunds" not in kit.sent_types()
    kit.advance(timedelta(hours=1))
    assert kit.saga("e-1").state == "release"
    kit.reply(last(kit, "bank.ReleaseFunds"), FundsReleased("e-1"))
    assert kit.saga("e-1").status == "completed"
    assert kit.replay_differences(kit.saga("e-1")) == []


def test_a_buyer_who_cancels_during_the_hold_gets_the_funds_back(kit: WorkflowTestKit) -> None:
    held(kit)
    kit.advance(timedelta(days=1))
    kit.publish(EscrowCancelled("e-1"))
    assert kit.saga("e-1").state == "compensating_collect"
    kit.reply(last(kit, "bank.ReturnFunds"), FundsReturned("e-1"))
    assert kit.saga("e-1").status == "compensated"
    kit.advance(timedelta(days=3))  # the hold's timer went with the cancel
    assert "bank.ReleaseFunds" not in kit.sent_types()
