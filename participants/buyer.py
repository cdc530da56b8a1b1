"""Buyer: signs an escrow, or refuses it, which makes the escrow saga unwind.

``--refuse-over`` compares the ``amount_cents`` that ``buyer.RequestSignature`` carries.
"""

from __future__ import annotations

from participants.common import (
    Body,
    InvalidCommand,
    Options,
    Reply,
    injected_failure,
    require_int,
    require_str,
)

SERVICE = "buyer"
COMMANDS = frozenset({"buyer.RequestSignature"})


def handle(command_type: str, body: Body, options: Options) -> Reply:
    if command_type == "buyer.RequestSignature":
        escrow_id = require_str(body, "escrow_id")
        amount = require_int(body, "amount_cents")
        if options.refuse_over is not None and amount > options.refuse_over:
            reason = f"amount {amount} cents is over the buyer's limit of {options.refuse_over}"
            return "buyer.BuyerRefused", {"escrow_id": escrow_id, "reason": reason}
        if injected_failure(SERVICE, escrow_id, options.fail_rate):
            return "buyer.BuyerRefused", {"escrow_id": escrow_id, "reason": "injected failure (fail rate)"}
        return "buyer.BuyerSigned", {"escrow_id": escrow_id}
    raise InvalidCommand(f"{SERVICE} does not handle {command_type!r}")
