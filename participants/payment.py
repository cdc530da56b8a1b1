"""Payment: charges the customer for an order and refunds the charge when a later step fails.

Table (schema ``payment``): ``ledger``, one row per charge or refund, which is what the
exactly-once tests count: one charge per ChargePayment command carried out, and a refund of what
an order was charged for each RefundPayment. There is no uniqueness per order on purpose: two
different commands are two charges (docs/protocol.md section 7); only the kit's inbox stands
between a command delivered twice and a second charge.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.examples.contracts import (
    ChargePayment,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)
from orchestrator.participant import Context, Participant
from participants.common import Options, create_tables_of, derived_id, injected_failure

SERVICE = "payment"

TABLES = """
CREATE TABLE IF NOT EXISTS payment.ledger (
    id bigserial PRIMARY KEY,
    order_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('charge', 'refund')),
    customer_id text,
    amount_cents bigint NOT NULL,
    message_id text NOT NULL,
    booked_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS ledger_order ON payment.ledger (order_id);
"""


async def create_tables(connection: AsyncConnection) -> None:
    await create_tables_of(connection, TABLES)


def build(options: Options) -> Participant:
    payment = Participant(SERVICE)
    payment.setup(create_tables)

    @payment.handles(ChargePayment)
    async def charge(command: ChargePayment, context: Context) -> PaymentCharged | PaymentDeclined:
        amount = command.amount_cents
        if options.decline_over is not None and amount > options.decline_over:
            reason = f"amount {amount} cents is over the limit of {options.decline_over}"
            return PaymentDeclined(command.order_id, reason)
        if injected_failure(SERVICE, command.order_id, options.fail_rate):
            return PaymentDeclined(command.order_id, "injected failure (fail rate)")
        await _book(context, command.order_id, "charge", amount, command.customer_id)
        return PaymentCharged(command.order_id, derived_id("charge", command.order_id))

    @payment.handles(RefundPayment)
    async def refund(command: RefundPayment, context: Context) -> PaymentRefunded:
        # A compensation must always succeed: an order never charged has nothing to refund.
        # What the order was charged and not yet refunded; the lock orders two refunds of one order.
        await context.connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('payment.ledger'), hashtext(:order))"),
            {"order": command.order_id},
        )
        owed = (
            await context.connection.execute(
                text(
                    "SELECT coalesce(sum(CASE kind WHEN 'charge' THEN amount_cents"
                    " ELSE -amount_cents END), 0) FROM payment.ledger WHERE order_id = :order"
                ),
                {"order": command.order_id},
            )
        ).scalar_one()
        if owed > 0:
            await _book(context, command.order_id, "refund", int(owed))
        return PaymentRefunded(command.order_id)

    return payment


async def _book(
    context: Context, order_id: str, kind: str, amount: int, customer_id: str | None = None
) -> None:
    await context.connection.execute(
        text(
            "INSERT INTO payment.ledger (order_id, kind, customer_id, amount_cents, message_id)"
            " VALUES (:order, :kind, :customer, :amount, :message)"
        ),
        {
            "order": order_id,
            "kind": kind,
            "customer": customer_id,
            "amount": amount,
            "message": context.message_id,
        },
    )
