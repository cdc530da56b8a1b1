"""The services ``python -m participants NAME`` can run, so the runner stays generic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from participants import bank, buyer, inventory, payment, seller, shipping
from participants.common import Body, Options, Reply

__all__ = ["SERVICES", "Service"]


@dataclass(frozen=True)
class Service:
    name: str
    commands: frozenset[str]
    handle: Callable[[str, Body, Options], Reply]


SERVICES: dict[str, Service] = {
    "inventory": Service(inventory.SERVICE, inventory.COMMANDS, inventory.handle),
    "payment": Service(payment.SERVICE, payment.COMMANDS, payment.handle),
    "shipping": Service(shipping.SERVICE, shipping.COMMANDS, shipping.handle),
    "buyer": Service(buyer.SERVICE, buyer.COMMANDS, buyer.handle),
    "seller": Service(seller.SERVICE, seller.COMMANDS, seller.handle),
    "bank": Service(bank.SERVICE, bank.COMMANDS, bank.handle),
}
