"""A workflow module whose definition contradicts itself: importing it raises ``DefinitionError``
(``orchestrator check`` reports it; see test_checks.py)."""

from __future__ import annotations

from datetime import timedelta

from orchestrator import Workflow
from tests.unit.test_checks import Started

refused = Workflow("refused", starts_on=Started, key="id")
refused.state("start", deadline=timedelta(minutes=1))  # no on_deadline=: refused here
