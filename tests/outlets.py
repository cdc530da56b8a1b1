"""The bus's outlets for committed commands, as tests plug them in (the service's is the relay)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.core.engine import OutgoingCommand

__all__ = ["Handed", "Handing", "NoRelay"]


class NoRelay:
    """Takes what a commit hands on and sends nothing: the outbox keeps it."""

    def submit(self, commands: Iterable[OutgoingCommand], received_at: float | None = None) -> None:
        return None


@dataclass
class Handed:
    """What one commit handed on to the relay."""

    commands: list[OutgoingCommand]


class Handing:
    """Records each commit's commands, in order."""

    def __init__(self, handed: list[Handed]) -> None:
        self.handed = handed

    def submit(self, commands: Iterable[OutgoingCommand], received_at: float | None = None) -> None:
        self.handed.append(Handed(list(commands)))
