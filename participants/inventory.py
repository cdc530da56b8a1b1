"""Inventory: reserves the stock of an order and releases it when a later step fails."""

from __future__ import annotations

from participants.common import (
    Body,
    InvalidCommand,
    Options,
    Reply,
    derived_id,
    injected_failure,
    require_lines,
    require_str,
)

SERVICE = "inventory"
COMMANDS = frozenset({"inventory.ReserveStock", "inventory.ReleaseStock"})


def handle(command_type: str, body: Body, options: Options) -> Reply:
    if command_type == "inventory.ReserveStock":
        order_id = require_str(body, "order_id")
        lines = require_lines(body)
        for line in lines:
            if line.sku in options.out_of_stock:
                return "inventory.OutOfStock", {"order_id": order_id, "sku": line.sku}
        if injected_failure(SERVICE, order_id, options.fail_rate):
            sku = lines[0].sku if lines else ""
            return "inventory.OutOfStock", {"order_id": order_id, "sku": sku}
        return "inventory.StockReserved", {
            "order_id": order_id,
            "reservation_id": derived_id("reservation", order_id),
        }
    if command_type == "inventory.ReleaseStock":
        # A compensation must always succeed, so no failure injection applies here.
        return "inventory.StockReleased", {"order_id": require_str(body, "order_id")}
    raise InvalidCommand(f"{SERVICE} does not handle {command_type!r}")
