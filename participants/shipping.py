"""Shipping: the last step of the order saga, so its failure exercises every compensation."""

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

SERVICE = "shipping"
COMMANDS = frozenset({"shipping.ShipOrder"})


def handle(command_type: str, body: Body, options: Options) -> Reply:
    if command_type == "shipping.ShipOrder":
        order_id = require_str(body, "order_id")
        require_lines(body)
        if injected_failure(SERVICE, order_id, options.fail_rate):
            return "shipping.ShipmentFailed", {"order_id": order_id, "reason": "injected failure (fail rate)"}
        return "shipping.OrderShipped", {
            "order_id": order_id,
            "tracking_id": derived_id("tracking", order_id),
        }
    raise InvalidCommand(f"{SERVICE} does not handle {command_type!r}")
