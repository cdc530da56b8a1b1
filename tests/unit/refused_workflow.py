"""A workflow module whose definition contradicts itself: importing it raises ``DefinitionError``
(``orchestrator check`` reports it; see test_checks.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from orchestrator import Event, Workflow


@dataclass(frozen=True)
class Opened(Event):
    TYPE = "refused.Opened"
    id: str


refused = Workflow("refused", starts_on=Opened, key="id")
refused.state("start", deadline=timedelta(minutes=1))  # no on_deadline=: refused here
