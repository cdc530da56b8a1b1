"""Child sagas: a step whose action is to start a saga of another workflow, and whose outcome is
that saga's.

The parent and the child talk as a saga and a participant do (docs/protocol.md, section 6),
through messages the orchestrator sends to itself:

* the child's start is the parent's command: the child workflow's start event, with the
  parent's deterministic command id as its message id, sent through the outbox to the
  orchestrator's own queue (``route`` ``start:<child workflow>``). The inbox and the saga id (a
  function of workflow and key) make it start the child once, whichever replica takes it and
  however often a crash makes the relay send it;
* the child's outcome is its reply: ``saga.ChildCompleted``, ``saga.ChildCompensated`` or
  ``saga.ChildFailed``, sent when it enters that final status, with the reply id of the command
  it answers (``route`` ``saga:<parent id>``), so that the parent takes it as it takes a reply;
* the parent's compensation of the step is ``saga.CancelChild``, a command to the child: a
  running child is cancelled as an operator's cancel would, a completed one reopened and
  compensated from its end, and its next outcome answers that cancel.

Each saga keeps its side of the link as a record among its branches (``sagas.branches``) that
waits on nothing: the child ``{"name": "parent", "link": "parent", "saga_id", "reply_to"}``, with
the command its next outcome answers, and the parent one ``{"name": "child:<id>", "link":
"child", "saga_id", "workflow", "step"}`` per child it started.

Messages of the ``saga`` service come only from the orchestrator: it publishes them straight into
its own queue (the default exchange, which no participant may write to), and a ``saga.*`` message
that comes through the events exchange is refused (``sender``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.core.messages import Command, Event

__all__ = [
    "CHILD_OUTCOMES",
    "INTERNAL",
    "CancelChild",
    "ChildCompensated",
    "ChildCompleted",
    "ChildFailed",
    "child_record",
    "children_of",
    "is_link",
    "parent_of",
    "parent_record",
    "saga_route",
    "start_route",
    "started_workflow",
    "target_of",
]

#: the service whose messages the orchestrator sends only to itself
INTERNAL = "saga"


@dataclass(frozen=True)
class ChildCompleted(Event):
    """A child saga completed: its parent's step is done."""

    TYPE = "saga.ChildCompleted"
    saga_id: str
    workflow: str
    key: str


@dataclass(frozen=True)
class ChildCompensated(Event):
    """A child saga was compensated: its parent's step failed, or its compensation is done."""

    TYPE = "saga.ChildCompensated"
    saga_id: str
    workflow: str
    key: str
    reason: str | None = None


@dataclass(frozen=True)
class ChildFailed(Event):
    """A child saga failed and waits for an operator: its parent's step (or its compensation)
    failed. Resumed later, the child answers again."""

    TYPE = "saga.ChildFailed"
    saga_id: str
    workflow: str
    key: str
    reason: str | None = None


@dataclass(frozen=True)
class CancelChild(Command):
    """The parent's compensation of a child step: cancel the child (``saga_id``), or compensate
    it if it completed. Taken only from the saga its link names as its parent."""

    TYPE = "saga.CancelChild"
    saga_id: str
    parent: str


#: outcome type by the final status it reports
CHILD_OUTCOMES: dict[str, type[Event]] = {
    "completed": ChildCompleted,
    "compensated": ChildCompensated,
    "failed": ChildFailed,
}


def start_route(workflow: str, schema: int = 1) -> str:
    """The outbox route of a child's start: to the orchestrator's queue, for ``workflow``, its
    body written in schema version ``schema`` (said after an ``@`` where it is not 1)."""
    return f"start:{workflow}" + (f"@{schema}" if schema != 1 else "")


def started_workflow(target: str) -> tuple[str, int]:
    """The workflow and schema version a start route's target names (``target_of``)."""
    workflow, _, schema = target.partition("@")
    return workflow, int(schema) if schema else 1


def saga_route(saga_id: str) -> str:
    """The outbox route of a message from one saga to another (an outcome, a cancel)."""
    return f"saga:{saga_id}"


def target_of(route: str) -> tuple[str, str]:
    """``("start", workflow)`` or ``("saga", saga id)``: what a route names."""
    kind, _, target = route.partition(":")
    if kind not in ("start", "saga") or not target:
        raise ValueError(f"not a route: {route!r}")
    return kind, target


def is_link(branch: Mapping[str, Any]) -> bool:
    return "link" in branch


def parent_record(parent: str, reply_to: str) -> dict[str, Any]:
    return {"name": "parent", "link": "parent", "saga_id": parent, "reply_to": reply_to, "awaiting": []}


def child_record(saga_id: str, workflow: str, step: str) -> dict[str, Any]:
    return {
        "name": f"child:{saga_id}",
        "link": "child",
        "saga_id": saga_id,
        "workflow": workflow,
        "step": step,
        "awaiting": [],
    }


def parent_of(branches: tuple[Mapping[str, Any], ...]) -> Mapping[str, Any] | None:
    return next((b for b in branches if b.get("link") == "parent"), None)


def children_of(branches: tuple[Mapping[str, Any], ...]) -> list[Mapping[str, Any]]:
    return [b for b in branches if b.get("link") == "child"]
