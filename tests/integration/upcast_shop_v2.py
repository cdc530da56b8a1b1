"""A release of a small shop workflow whose start event is at schema 2 (version 1 sent the total in
euros, as text), loaded with ``run --workflows``: the integration test of schema versions."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from orchestrator import Command, Event, Workflow, upcaster


@dataclass(frozen=True)
class OrderPlaced(Event):
    TYPE = "upshop.OrderPlaced"
    SCHEMA = 2
    order_id: str
    amount_cents: int
    currency: str


@upcaster(OrderPlaced, from_schema=1)
def euros_to_cents(payload: dict[str, Any]) -> dict[str, Any]:
    total = payload.pop("total")
    if total == "boom":  # for the test of an upcaster that raises
        raise ValueError("cannot read a total of boom")
    return {**payload, "amount_cents": int(Decimal(str(total)) * 100), "currency": "EUR"}


@dataclass(frozen=True)
class Charge(Command):
    TYPE = "uppay.Charge"
    order_id: str
    amount_cents: int
    currency: str


@dataclass(frozen=True)
class Paid(Event):
    TYPE = "uppay.Paid"
    order_id: str


def shop(placed: type[Event]) -> Workflow:
    workflow = Workflow("upshop", starts_on=placed, key="order_id")
    workflow.state("charging", send=Charge)
    workflow.state("paid", final=True)
    workflow.on(Paid, source="charging", dest="paid")
    return workflow


WORKFLOWS = [shop(OrderPlaced)]
