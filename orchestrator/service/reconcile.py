"""After a restore from backup: what the restored database cannot know, told apart from what it
will redo by itself (``orchestrator reconcile``, docs/operations.md, "Backup and restore").

A database taken back to a point in time forgets every decision committed after that point, while
the participants remember what they did. Three cases, by each command a participant's kit inbox
recorded:

- its saga and the command are both in the restored journal (or its outbox): nothing is lost; if
  the saga still waits on it, the command is asked again with its own id and the participant
  answers from its inbox, doing nothing twice;
- its saga is known, the command is not: it was decided after the restore point. A command's id
  depends on its saga and the message that caused it, not on the saga's version, so when the same
  message moves the saga on again (a reply answered from an inbox) it decides the same command
  under the same id, and the participant answers from its inbox again;
- its saga is unknown (neither a saga nor a tombstone): the saga was started after the restore
  point, and the participant acted for it. Nothing here can rebuild it; these are listed for an
  operator to settle (publish the start again, or undo by hand), never guessed at.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from orchestrator.service.store import HandledCommand

__all__ = ["HandledCommand", "Reconciliation", "reconcile"]


@dataclass
class Reconciliation:
    """Each participant's handled commands, by case (see the module's docstring)."""

    known: list[HandledCommand] = field(default_factory=list)
    decided_again: list[HandledCommand] = field(default_factory=list)
    lost: list[HandledCommand] = field(default_factory=list)

    @property
    def lost_sagas(self) -> list[str]:
        return sorted({c.saga_id for c in self.lost})


def reconcile(
    handled: Iterable[HandledCommand], known_sagas: Collection[str], known_commands: Collection[str]
) -> Reconciliation:
    found = Reconciliation()
    for command in handled:
        if command.saga_id not in known_sagas:
            found.lost.append(command)
        elif command.message_id in known_commands:
            found.known.append(command)
        else:
            found.decided_again.append(command)
    return found
