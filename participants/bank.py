"""Bank: collects the buyer's funds, then releases them to the seller or returns them."""

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

SERVICE = "bank"
COMMANDS = frozenset({"bank.CollectFunds", "bank.ReturnFunds", "bank.ReleaseFunds"})


def handle(command_type: str, body: Body, options: Options) -> Reply:
    if command_type == "bank.CollectFunds":
        escrow_id = require_str(body, "escrow_id")
        require_str(body, "buyer_id")
        require_int(body, "amount_cents")
        if injected_failure(SERVICE, escrow_id, options.fail_rate):
            return "bank.FundsDeclined", {"escrow_id": escrow_id, "reason": "injected failure (fail rate)"}
        return "bank.FundsReceived", {"escrow_id": escrow_id}
    if command_type == "bank.ReturnFunds":
        # A compensation must always succeed, so no failure injection applies here.
        return "bank.FundsReturned", {"escrow_id": require_str(body, "escrow_id")}
    if command_type == "bank.ReleaseFunds":
        escrow_id = require_str(body, "escrow_id")
        require_str(body, "seller_id")
        require_int(body, "amount_cents")
        return "bank.FundsReleased", {"escrow_id": escrow_id}
    raise InvalidCommand(f"{SERVICE} does not handle {command_type!r}")
