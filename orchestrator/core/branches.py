"""A saga's branches: what it waits on besides its state's commands.

A saga is in one state and waits on that state's commands (``SagaSnapshot.awaiting``) with one
deadline and one retry timer. A branch is a second, independent wait beside it:

* the undo of a step's success that came after its deadline (``Workflow.late_undos``), awaited
  like any compensation even while the saga compensates other steps or has finished::

    {"name": "undo:charge:<command id>", "step": "charge", "awaiting": [<command>...], "attempt": 0,
     "given_up": false, "reopened": false}

* a step of a parallel group (``Workflow.group``), from the group's start until the group is
  compensated or the saga finishes (a group done is kept, so that a later failure undoes it)::

    {"name": "book.flight", "group": "book", "step": "flight", "phase": "running",
     "awaiting": [<command>...], "attempt": 0, "order": 0}

  ``phase``: running, done, failed, timed_out; and while the group is compensated undoing,
  undone, undo_refused, undo_timed_out. ``order`` numbers the branches done, for
  ``newest_first``. A group's records stay while the saga is failed (a resume takes them up
  again), go when it completes or is compensated, and a branch given up on at its deadline
  leaves a ``late`` record behind: ``{"name": "late:<step>:<command id>", "step", "awaiting",
  "late": true}``.

Each is a small JSON record in the saga row (``sagas.branches``)
and has timer rows of its own, of kinds ``deadline:<name>`` and ``retry:<name>`` beside the
state's ``deadline`` and ``retry``: the ``deadlines`` table holds one row per saga and kind, so
no table changes, and the part before the colon is the timer's kind in metrics. A branch's reply
is told by its id alone (docs/protocol.md, section 6: the reply id of one of its commands), never
by its type, so that it cannot be taken for the reply of the state's own command.

Plain data and functions, no I/O, as the rest of the core.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.core.definitions import Workflow

__all__ = [
    "Branches",
    "answered",
    "deadline_kind",
    "late_record",
    "live",
    "named",
    "of_group",
    "replaced",
    "replies_of",
    "retry_kind",
    "timer_branch",
    "undo_name",
    "without",
]

Branches = tuple[Mapping[str, Any], ...]

_DEADLINE = "deadline:"
_RETRY = "retry:"


def undo_name(step: str, command_id: str) -> str:
    """The branch that undoes ``step``'s late success by the command ``command_id``: unique per
    undo, as a step may succeed late twice (once per attempt, after a resume)."""
    return f"undo:{step}:{command_id}"


def deadline_kind(name: str) -> str:
    return _DEADLINE + name


def retry_kind(name: str) -> str:
    return _RETRY + name


def timer_branch(kind: str) -> tuple[str, bool] | None:
    """The branch a timer row of ``kind`` belongs to and whether it is its retry; None: the
    state's own timer (``deadline``, ``retry``)."""
    if kind.startswith(_DEADLINE):
        return kind[len(_DEADLINE) :], False
    if kind.startswith(_RETRY):
        return kind[len(_RETRY) :], True
    return None


def live(branch: Mapping[str, Any]) -> bool:
    """Whether the saga still waits on it: a group's branch running or being compensated, or a
    late success's undo not given up on (a ``late`` record waits on nothing: it only tells a
    late success of a group's step by its reply id; a child saga's link waits on nothing either)."""
    if "link" in branch:
        return False
    if "group" in branch:
        return branch["phase"] in ("running", "undoing")
    return not branch.get("given_up") and not branch.get("late")


def late_record(branch: Mapping[str, Any]) -> dict[str, Any]:
    """What is kept of a group's branch given up on at its deadline once its group is gone: the
    command it sent, so that a success that still comes is told by its reply id (two branches
    may await one type) and its step undone."""
    sent = branch["awaiting"][0]["message_id"] if branch["awaiting"] else branch["name"]
    return {
        "name": f"late:{branch['step']}:{sent}",
        "step": branch["step"],
        "awaiting": branch["awaiting"],
        "late": True,
    }


def of_group(branches: Branches, group: str) -> list[Mapping[str, Any]]:
    return [b for b in branches if b.get("group") == group]


def replaced(branches: Branches, name: str, **changes: Any) -> Branches:
    return tuple({**b, **changes} if b["name"] == name else b for b in branches)


def replies_of(workflow: Workflow, branch: Mapping[str, Any]) -> frozenset[str]:
    """The reply types that answer what ``branch`` waits on: its step's (done, failed) or, while
    its group is compensated, its compensation's; a late undo's; a ``late`` record's success."""
    if "group" in branch:
        spec = workflow.groups[branch["group"]].branch(branch["step"])
        undoing = branch["phase"] in ("undoing", "undo_timed_out") and spec.undo is not None
        events = (spec.undo.done, spec.undo.failed) if undoing and spec.undo else (spec.done, spec.failed)
        return frozenset(e.TYPE for e in events if e is not None)
    if branch.get("late"):
        late = workflow.late_success.get(branch["step"])
        return frozenset({late[0]}) if late is not None else frozenset()
    undo = workflow.late_undos.get(branch["step"])
    return frozenset(e.TYPE for e in (undo.done, undo.failed) if e is not None) if undo else frozenset()


def named(branches: Branches, name: str) -> Mapping[str, Any] | None:
    return next((b for b in branches if b["name"] == name), None)


def without(branches: Branches, name: str) -> Branches:
    return tuple(b for b in branches if b["name"] != name)


def answered(branches: Branches, message_id: str, reply_id: Any) -> Mapping[str, Any] | None:
    """The branch one of whose commands ``message_id`` answers: ``reply_id(command id)`` is the
    section 6 id of a reply of the message's type to that command."""
    for branch in branches:
        for command in branch["awaiting"]:
            if reply_id(command["message_id"]) == message_id:
                return branch
    return None
