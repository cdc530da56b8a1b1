"""The workflows the dry run's integration test writes its journals with: the bundled examples, and
``gift``, a small free machine (``tests/integration/test_dry_run.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from orchestrator import Command, Event, Workflow
from orchestrator.examples import WORKFLOWS as EXAMPLES


@dataclass(frozen=True)
class GiftOrdered(Event):
    TYPE = "gifts.GiftOrdered"
    gift_id: str


@dataclass(frozen=True)
class WrapGift(Command):
    TYPE = "gifts.WrapGift"
    gift_id: str


gift = Workflow("gift", starts_on=GiftOrdered, key="gift_id")
gift.state("wrapping", deadline=timedelta(hours=1), on_deadline="given", send=WrapGift)
gift.state("given", final=True)

WORKFLOWS = [*EXAMPLES, gift]
