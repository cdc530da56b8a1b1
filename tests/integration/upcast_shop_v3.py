"""The next release of ``upcast_shop_v2``: its start event at schema 3 (the currency a code in
capitals), with an upcaster from 2 beside the one from 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from orchestrator import Event, upcaster

from .upcast_shop_v2 import euros_to_cents, shop


@dataclass(frozen=True)
class OrderPlaced(Event):
    TYPE = "upshop.OrderPlaced"
    SCHEMA = 3
    order_id: str
    amount_cents: int
    currency: Literal["EUR", "USD", "GBP"]


upcaster(OrderPlaced, from_schema=1)(euros_to_cents)


@upcaster(OrderPlaced, from_schema=2)
def currency_in_capitals(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "currency": str(payload["currency"]).upper()}


WORKFLOWS = [shop(OrderPlaced)]
