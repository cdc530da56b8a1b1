"""Seller: always signs, and voids its documents when the escrow unwinds.

The seller has no failure reply in the contract, so ``--fail-rate`` has nothing to inject here.
"""

from __future__ import annotations

from participants.common import Body, InvalidCommand, Options, Reply, require_str

SERVICE = "seller"
COMMANDS = frozenset({"seller.RequestSignature", "seller.VoidDocuments"})


def handle(command_type: str, body: Body, options: Options) -> Reply:
    if command_type == "seller.RequestSignature":
        return "seller.SellerSigned", {"escrow_id": require_str(body, "escrow_id")}
    if command_type == "seller.VoidDocuments":
        return "seller.DocumentsVoided", {"escrow_id": require_str(body, "escrow_id")}
    raise InvalidCommand(f"{SERVICE} does not handle {command_type!r}")
