"""``decide``: the pure heart. A saga, a message and the time in; a decision, as data, out.

No I/O, no clock reads, no asyncio: the service layer loads the saga, calls ``decide``, and
writes the decision in one transaction. The same journal fed through ``decide`` again gives the
same sagas, which is what makes replay (and ``orchestrator verify``) possible.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from orchestrator.definitions import FINISHED, Policy, SagaView, Status
from orchestrator.machine import CompiledWorkflow, MachineError
from orchestrator.messages import dump

__all__ = [
    "Deadline",
    "Decision",
    "Incoming",
    "Outcome",
    "OutgoingCommand",
    "Saga",
    "command_message_id",
    "decide",
    "saga_id_for",
]

_SAGA_NAMESPACE = uuid.UUID("8f1f7c64-5be4-4a39-9c39-3c1f0b6f3a51")


def saga_id_for(workflow: str, key: str) -> str:
    """A saga's id follows from its workflow and key, so the same start twice is one saga."""
    return str(uuid.uuid5(_SAGA_NAMESPACE, f"{workflow}\x00{key}"))


def command_message_id(saga_id: str, version: int, index: int) -> str:
    """Stable across replays and re-sends: participants dedupe on it."""
    return str(uuid.uuid5(uuid.UUID(saga_id), f"{version}:{index}"))


class Outcome(enum.StrEnum):
    STARTED = "started"
    MOVED = "moved"
    PARKED = "parked"
    IGNORED = "ignored"
    FAILED = "failed"


@dataclass(frozen=True)
class Incoming:
    """A message for one saga: a participant's event, a fired deadline, or an operator's action."""

    type: str
    message_id: str
    payload: Mapping[str, Any]
    kind: str = "event"  # event | deadline | operator
    actor: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message_id": self.message_id,
            "payload": dict(self.payload),
            "kind": self.kind,
            "actor": self.actor,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Incoming:
        return cls(
            data["type"], data["message_id"], data["payload"], data.get("kind", "event"), data.get("actor")
        )


@dataclass(frozen=True)
class Saga:
    """The snapshot of one saga: what its row holds."""

    id: str
    workflow: str
    key: str
    state: str
    status: Status
    version: int
    data: Mapping[str, Any]
    parked: tuple[Mapping[str, Any], ...] = ()
    last_error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def view(self) -> SagaView:
        return SagaView(self.id, self.workflow, self.key, self.data)


@dataclass(frozen=True)
class OutgoingCommand:
    message_id: str
    type: str
    payload: Mapping[str, Any]
    saga_id: str
    workflow: str


@dataclass(frozen=True)
class Deadline:
    state: str
    due_at: datetime


@dataclass(frozen=True)
class Decision:
    """Everything one message changes, for the service layer to write in one transaction.

    ``deadline_changed`` says the saga's pending deadline must be replaced by ``deadline``
    (``None``: no deadline is pending any more).
    """

    saga: Saga
    outcome: Outcome
    previous_state: str | None
    commands: tuple[OutgoingCommand, ...] = ()
    deadline: Deadline | None = None
    deadline_changed: bool = False
    reason: str | None = None
    applied_parked: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, Any]:
        """The decision as the journal keeps it."""
        return {
            "outcome": str(self.outcome),
            "from": self.previous_state,
            "to": self.saga.state,
            "status": str(self.saga.status),
            "commands": [{"type": c.type, "message_id": c.message_id} for c in self.commands],
            "deadline": self.deadline
            and {"state": self.deadline.state, "due_at": self.deadline.due_at.isoformat()},
            "reason": self.reason,
            "applied_parked": list(self.applied_parked),
        }


class _Draft:
    """The saga being changed while one decision is made."""

    def __init__(self, compiled: CompiledWorkflow, saga: Saga, now: datetime) -> None:
        self.compiled = compiled
        self.saga = saga
        self.now = now
        self.commands: list[OutgoingCommand] = []
        self.deadline_changed = False
        self.deadline: Deadline | None = None
        self.applied_parked: list[str] = []

    def merge(self, payload: Mapping[str, Any]) -> None:
        if payload:
            self.saga = replace(self.saga, data={**self.saga.data, **payload})

    def enter(self, dest: str, sends: tuple[Any, ...]) -> None:
        spec = self.compiled.workflow.states[dest]
        self.saga = replace(self.saga, state=dest, status=spec.status)
        view = self.saga.view()
        for build in sends:
            message = build(view)
            index = len(self.commands)
            self.commands.append(
                OutgoingCommand(
                    command_message_id(self.saga.id, self.saga.version, index),
                    message.TYPE,
                    dump(message),
                    self.saga.id,
                    self.saga.workflow,
                )
            )
        self.deadline_changed = True
        self.deadline = Deadline(dest, self.now + spec.deadline) if spec.deadline is not None else None

    def policy_for(self, event_type: str) -> Policy | None:
        """None when the event moves the saga; otherwise what to do with it."""
        state = self.saga.state
        if self.compiled.moves_on(state, event_type):
            return None
        return self.compiled.policies.get((state, event_type), self.compiled.workflow.unexpected)

    def move(self, message: Incoming) -> None:
        fired = self.compiled.fire(self.saga.state, message.type)
        if message.kind == "event":  # a deadline's or operator's payload is not business data
            self.merge(message.payload)
        self.enter(fired.dest, fired.sends)

    def apply_parked(self) -> None:
        """After a move, an event kept for later may fit: apply each that does, oldest first."""
        progress = True
        while progress and not self.saga.finished:
            progress = False
            for index, parked in enumerate(self.saga.parked):
                if self.policy_for(parked["type"]) is None:
                    rest = self.saga.parked[:index] + self.saga.parked[index + 1 :]
                    self.saga = replace(self.saga, parked=rest)
                    self.move(Incoming.from_json(parked))
                    self.applied_parked.append(parked["message_id"])
                    progress = True
                    break


def decide(compiled: CompiledWorkflow, saga: Saga | None, message: Incoming, now: datetime) -> Decision:
    """Decide what ``message`` does to ``saga`` (None: the message starts a new saga)."""
    workflow = compiled.workflow
    if saga is None:
        key = str(message.payload[workflow.key])
        saga_id = saga_id_for(workflow.name, key)
        fresh = Saga(saga_id, workflow.name, key, "", Status.RUNNING, 1, {}, created_at=now, updated_at=now)
        draft = _Draft(compiled, fresh, now)
        draft.merge(message.payload)
        try:
            first = compiled.enter()
            draft.enter(first.dest, first.sends)
        except Exception as error:  # a user's command builder failed: the saga needs an operator
            return _failed(draft.saga, "", error, now)
        return _decision(draft, Outcome.STARTED, None)

    previous = saga.state
    bumped = replace(saga, version=saga.version + 1, updated_at=now)
    if saga.finished:
        return Decision(bumped, Outcome.IGNORED, previous, reason=f"saga is already {saga.status}")
    draft = _Draft(compiled, bumped, now)
    policy = draft.policy_for(message.type)
    if policy is Policy.IGNORE:
        return Decision(
            bumped, Outcome.IGNORED, previous, reason=f"{message.type} is not expected in {previous}"
        )
    if policy is Policy.PARK:
        parked = replace(bumped, parked=(*bumped.parked, message.as_json()))
        return Decision(parked, Outcome.PARKED, previous, reason=f"{message.type} kept until it fits")
    if policy is Policy.FAIL:
        reason = f"{message.type} is not allowed in {previous}"
        return _failed(bumped, previous, reason, now)
    try:
        draft.move(message)
        draft.apply_parked()
    except MachineError as error:  # the compiled tables and the machine disagree: a bug, say so
        return _failed(bumped, previous, error, now)
    except Exception as error:  # a user's command builder raised
        return _failed(bumped, previous, error, now)
    return _decision(draft, Outcome.MOVED, previous)


def _decision(draft: _Draft, outcome: Outcome, previous: str | None) -> Decision:
    return Decision(
        draft.saga,
        outcome,
        previous,
        tuple(draft.commands),
        draft.deadline,
        draft.deadline_changed,
        applied_parked=tuple(draft.applied_parked),
    )


def _failed(saga: Saga, previous: str, error: Exception | str, now: datetime) -> Decision:
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    failed = replace(saga, status=Status.FAILED, last_error=reason, updated_at=now)
    return Decision(failed, Outcome.FAILED, previous or None, deadline_changed=True, reason=reason)
