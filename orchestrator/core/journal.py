"""What the journal and a saga's other records hold, as the core reads them: the store's port
(:mod:`orchestrator.service.store`) writes and reads these, and ``replay`` rebuilds from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.core.engine import Incoming, OutgoingCommand, SagaSnapshot

__all__ = ["DueDeadline", "JournalEntry", "Records"]


@dataclass(frozen=True)
class JournalEntry:
    saga_id: str
    seq: int
    message: Incoming
    decision: dict[str, Any]
    recorded_at: datetime


@dataclass(frozen=True)
class DueDeadline:
    saga_id: str
    state: str
    version: int
    due_at: datetime
    kind: str = "deadline"
    #: the trace context of the message that set it (opaque; migration 0008)
    trace: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Records:
    """All a saga holds, read at one moment, for ``verify`` to compare with its journal: the row,
    the journal, its pending timers and its unsent commands (the outbox)."""

    saga: SagaSnapshot | None
    journal: list[JournalEntry]
    timers: list[DueDeadline]
    outbox: list[OutgoingCommand]
