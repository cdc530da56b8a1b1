"""Billing: the last step of the shop's order (``orchestrator/examples/shop.py``), after its
fulfilment saga completed, so that its refusal compensates a completed child saga.
``--decline-over`` (env ``PAYMENT_DECLINE_OVER``) refuses invoices over that many cents.

Table (schema ``billing``): ``invoices``, one row per invoice sent.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.examples.shop import InvoiceRefused, InvoiceSent, SendInvoice
from orchestrator.participant import Context, Participant
from participants.common import Options, create_tables_of

SERVICE = "billing"

TABLES = """
CREATE TABLE IF NOT EXISTS billing.invoices (
    id bigserial PRIMARY KEY,
    order_id text NOT NULL,
    amount_cents bigint NOT NULL,
    message_id text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS invoices_order ON billing.invoices (order_id);
"""


async def create_tables(connection: AsyncConnection) -> None:
    await create_tables_of(connection, TABLES)


def build(options: Options) -> Participant:
    billing = Participant(SERVICE)
    billing.setup(create_tables)

    @billing.handles(SendInvoice)
    async def invoice(command: SendInvoice, context: Context) -> InvoiceSent | InvoiceRefused:
        if options.decline_over is not None and command.amount_cents > options.decline_over:
            return InvoiceRefused(command.order_id, f"over the invoicing limit of {options.decline_over}")
        await context.connection.execute(
            text(
                "INSERT INTO billing.invoices (order_id, amount_cents, message_id)"
                " VALUES (:order, :amount, :message)"
            ),
            {"order": command.order_id, "amount": command.amount_cents, "message": context.message_id},
        )
        return InvoiceSent(command.order_id)

    return billing
