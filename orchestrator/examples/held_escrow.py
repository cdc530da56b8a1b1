"""An escrow with a holding period: the buyer's funds are collected, held until the time the
escrow was opened with (``release_at``, a wait), then released to the seller; a buyer who
cancels while they are held gets them back. Not in ``WORKFLOWS`` (the bundled escrow, a free
state machine, is unchanged): ``make demo`` loads it beside the others
(``--workflows ...,orchestrator.examples.held_escrow``), served by the example ``bank``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from orchestrator import Event, Saga, step, wait
from orchestrator.examples.contracts import (
    CollectFunds,
    FundsDeclined,
    FundsReceived,
    FundsReturned,
    ReleaseFunds,
    ReturnFunds,
)

__all__ = ["WORKFLOWS", "EscrowCancelled", "FundsReleased", "HeldEscrowOpened", "HeldEscrowSaga"]


@dataclass(frozen=True)
class HeldEscrowOpened(Event):
    TYPE = "escrow.HeldEscrowOpened"
    escrow_id: str
    buyer_id: str
    seller_id: str
    amount_cents: int
    #: when the funds go to the seller: ISO 8601, UTC without an offset
    release_at: str


@dataclass(frozen=True)
class EscrowCancelled(Event):
    """The buyer's cancellation, from the escrow site: it answers no command."""

    TYPE = "escrow.EscrowCancelled"
    escrow_id: str


@dataclass(frozen=True)
class FundsReleased(Event):
    TYPE = "bank.FundsReleased"
    escrow_id: str


DEADLINE = timedelta(seconds=30)


class HeldEscrowSaga(
    Saga, starts_on=HeldEscrowOpened, key="escrow_id", name="held_escrow", cancel_on=EscrowCancelled
):
    """Collect, hold until ``release_at``, release; cancelled while held, the funds go back."""

    @step(done=FundsReceived, failed=FundsDeclined, deadline=DEADLINE)
    def collect(self, escrow: HeldEscrowOpened) -> CollectFunds:
        return CollectFunds(escrow.escrow_id, escrow.buyer_id, escrow.amount_cents)

    @collect.compensate(done=FundsReturned, deadline=DEADLINE)
    def give_back(self, escrow: HeldEscrowOpened) -> ReturnFunds:
        return ReturnFunds(escrow.escrow_id)

    hold = wait(until="release_at")

    @step(done=FundsReleased, deadline=DEADLINE)
    def release(self, escrow: HeldEscrowOpened) -> ReleaseFunds:
        return ReleaseFunds(escrow.escrow_id, escrow.seller_id, escrow.amount_cents)


WORKFLOWS = [HeldEscrowSaga.workflow]
