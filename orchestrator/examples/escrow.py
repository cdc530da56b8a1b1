"""The escrow: both parties sign (in either order), the buyer's funds arrive, the seller is paid.

Each wait has a deadline; a missed one closes the escrow not finished and undoes what was done:
the funds are returned and the documents voided, each re-sent until confirmed (``Undo``). The
seller may sign before the buyer: that signature is parked until the buyer has signed.
"""

from __future__ import annotations

from datetime import timedelta

from orchestrator import IGNORE, PARK, Retry, Undo, Workflow
from orchestrator.examples.contracts import (
    BuyerRefused,
    BuyerSigned,
    CollectFunds,
    DocumentsVoided,
    EscrowOpened,
    FundsDeclined,
    FundsReceived,
    FundsReturned,
    ReleaseFunds,
    RequestBuyerSignature,
    RequestSellerSignature,
    ReturnFunds,
    SellerSigned,
    VoidDocuments,
)

escrow = Workflow("escrow", starts_on=EscrowOpened, key="escrow_id", description=__doc__ or "")

escrow.state(
    "awaiting_buyer",
    deadline=timedelta(days=3),
    on_deadline="expired",
    send=[RequestBuyerSignature, RequestSellerSignature],
)
escrow.state("awaiting_seller", deadline=timedelta(days=3), on_deadline="expired")
escrow.state("awaiting_funds", deadline=timedelta(days=1), on_deadline="expired", send=CollectFunds)
escrow.state("closed", final=True)
# An undo waits an hour for its confirmation, re-sent after 10 s, 20 s, ... at most every 5 min.
UNDO_RETRY = Retry(every=timedelta(seconds=10), max_every=timedelta(minutes=5))
void = Undo(VoidDocuments, done=DocumentsVoided, deadline=timedelta(hours=1), retry=UNDO_RETRY)
refund = Undo(ReturnFunds, done=FundsReturned, deadline=timedelta(hours=1), retry=UNDO_RETRY)
escrow.state("refused", final=True, compensate=[void])
escrow.state("expired", final=True, compensate=[refund, void])

escrow.on(BuyerSigned, source="awaiting_buyer", dest="awaiting_seller")
escrow.on(SellerSigned, source="awaiting_buyer", then=PARK)  # early: kept until it fits
escrow.on(BuyerRefused, source=["awaiting_buyer", "awaiting_seller"], dest="refused")
escrow.on(SellerSigned, source="awaiting_seller", dest="awaiting_funds")
escrow.on(BuyerSigned, source=["awaiting_seller", "awaiting_funds"], then=IGNORE)  # signed twice
escrow.on(FundsReceived, source="awaiting_funds", dest="closed", send=ReleaseFunds)
escrow.on(FundsDeclined, source="awaiting_funds", dest="expired")
