"""Buyer: signs an escrow, or refuses it, which makes the escrow saga unwind.

Table (schema ``buyer``): ``signatures``, one row per decision (a request asked again is decided
again). ``--refuse-over``
compares the ``amount_cents`` that ``buyer.RequestSignature`` carries.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.examples.contracts import BuyerRefused, BuyerSigned, RequestBuyerSignature
from orchestrator.participant import Context, Participant
from participants.common import Options, create_tables_of, injected_failure

SERVICE = "buyer"

TABLES = """
CREATE TABLE IF NOT EXISTS buyer.signatures (
    id bigserial PRIMARY KEY,
    escrow_id text NOT NULL,
    amount_cents bigint NOT NULL,
    signed boolean NOT NULL,
    reason text,
    decided_at timestamptz NOT NULL DEFAULT now());
"""


async def create_tables(connection: AsyncConnection) -> None:
    await create_tables_of(connection, TABLES)


def build(options: Options) -> Participant:
    buyer = Participant(SERVICE)
    buyer.setup(create_tables)

    @buyer.handles(RequestBuyerSignature)
    async def sign(command: RequestBuyerSignature, context: Context) -> BuyerSigned | BuyerRefused:
        amount = command.amount_cents
        reason: str | None = None
        if options.refuse_over is not None and amount > options.refuse_over:
            reason = f"amount {amount} cents is over the buyer's limit of {options.refuse_over}"
        elif injected_failure(SERVICE, command.escrow_id, options.fail_rate):
            reason = "injected failure (fail rate)"
        await context.connection.execute(
            text(
                "INSERT INTO buyer.signatures (escrow_id, amount_cents, signed, reason)"
                " VALUES (:escrow, :amount, :signed, :reason)"
            ),
            {"escrow": command.escrow_id, "amount": amount, "signed": reason is None, "reason": reason},
        )
        if reason is not None:
            return BuyerRefused(command.escrow_id, reason)
        return BuyerSigned(command.escrow_id)

    return buyer
