"""The services ``python -m participants NAME`` can run, so the command line stays generic."""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.participant import Participant
from participants import bank, billing, buyer, inventory, payment, seller, shipping, travel
from participants.common import Options

__all__ = ["SERVICES"]

SERVICES: dict[str, Callable[[Options], Participant]] = {
    "inventory": inventory.build,
    "payment": payment.build,
    "shipping": shipping.build,
    "buyer": buyer.build,
    "seller": seller.build,
    "bank": bank.build,
    # the trip saga's (orchestrator/examples/travel.py), which make demo loads beside the bundled
    "flights": travel.build_flights,
    "hotels": travel.build_hotels,
    "cars": travel.build_cars,
    # the shop order's last step (orchestrator/examples/shop.py)
    "billing": billing.build,
}
