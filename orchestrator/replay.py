"""Rebuild a saga from its journal through its definition: the proof that the row can be trusted.

Pure: the journal holds every message with the time it was decided, so feeding it through
``decide`` again must give back the saga row exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace

from orchestrator.engine import Saga, decide
from orchestrator.machine import CompiledWorkflow
from orchestrator.store import JournalEntry

__all__ = ["differences", "replay"]


def replay(compiled: CompiledWorkflow, entries: Sequence[JournalEntry]) -> Saga | None:
    """The saga its journal gives. Every journaled message was taken when it came, so none is
    refused for the parking cap now. A closing entry journaled before closing sagas dropped
    their parked events (its summary has no ``dropped_parked``) keeps them, as its row did. An
    entry journaled before only declared fields entered a saga's data (its summary has no
    ``merged``) is decided as it was then: its payload merged whole, its key not compared. One
    journaled before the rules for operators and late confirmations (no ``operators``) is decided
    as it was then: see ``decide``'s ``before_operators``."""
    saga: Saga | None = None
    for entry in entries:
        before_declared = "merged" not in entry.decision
        decision = decide(
            compiled,
            saga,
            entry.message,
            entry.recorded_at,
            replaying=True,
            merge_all=before_declared,
            before_operators="operators" not in entry.decision,
        )
        if decision.dropped_parked and saga is not None and "dropped_parked" not in entry.decision:
            kept = set(decision.dropped_parked)
            parked = tuple(p for p in saga.parked if p["message_id"] in kept)
            saga = replace(decision.saga, parked=parked)
        else:
            saga = decision.saga
    return saga


def differences(row: Saga | None, rebuilt: Saga | None) -> list[str]:
    """Field by field, what the journal says and the row does not."""
    if row is None or rebuilt is None:
        return [] if row is rebuilt else [f"row {row!r} but journal rebuilds {rebuilt!r}"]
    found = []
    for field in fields(Saga):
        mine, theirs = getattr(row, field.name), getattr(rebuilt, field.name)
        if field.name == "parked":
            mine, theirs = list(mine), list(theirs)
        if mine != theirs:
            found.append(f"{field.name}: row has {mine!r}, journal gives {theirs!r}")
    return found
