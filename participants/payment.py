"""Payment: charges the customer for an order and refunds the charge when a later step fails."""

from __future__ import annotations

from participants.common import (
    Body,
    InvalidCommand,
    Options,
    Reply,
    derived_id,
    injected_failure,
    require_int,
    require_str,
)

SERVICE = "payment"
COMMANDS = frozenset({"payment.ChargePayment", "payment.RefundPayment"})


def handle(command_type: str, body: Body, options: Options) -> Reply:
    if command_type == "payment.ChargePayment":
        order_id = require_str(body, "order_id")
        require_str(body, "customer_id")
        amount = require_int(body, "amount_cents")
        if options.decline_over is not None and amount > options.decline_over:
            reason = f"amount {amount} cents is over the limit of {options.decline_over}"
            return "payment.PaymentDeclined", {"order_id": order_id, "reason": reason}
        if injected_failure(SERVICE, order_id, options.fail_rate):
            return "payment.PaymentDeclined", {"order_id": order_id, "reason": "injected failure (fail rate)"}
        return "payment.PaymentCharged", {"order_id": order_id, "charge_id": derived_id("charge", order_id)}
    if command_type == "payment.RefundPayment":
        # A compensation must always succeed, so no failure injection applies here.
        return "payment.PaymentRefunded", {"order_id": require_str(body, "order_id")}
    raise InvalidCommand(f"{SERVICE} does not handle {command_type!r}")
