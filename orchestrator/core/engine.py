"""``decide``: the pure heart. A saga, a message and the time in; a decision, as data, out.

No I/O, no clock reads, no asyncio: the service layer loads the saga, calls ``decide``, and
writes the decision in one transaction. The same journal fed through ``decide`` again gives the
same sagas, which is what makes replay (and ``orchestrator verify``) possible.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from orchestrator.core.branches import (
    answered,
    deadline_kind,
    late_record,
    live,
    named,
    of_group,
    replaced,
    retry_kind,
    undo_name,
    without,
)
from orchestrator.core.children import (
    CHILD_OUTCOMES,
    CancelChild,
    ChildFailed,
    child_record,
    children_of,
    parent_of,
    parent_record,
    saga_route,
    start_route,
)
from orchestrator.core.definitions import (
    CANCEL,
    DEADLINE,
    FINISHED,
    GROUP_DONE,
    GROUP_FAILED,
    GROUP_UNDONE,
    RETRY,
    GroupSpec,
    Policy,
    Retry,
    SagaView,
    Status,
    Undo,
    builder_for,
)
from orchestrator.core.ids import (
    KEYED,
    VERSIONED,
    keyed_command_id,
    reply_id_for,
    saga_id_for,
    versioned_command_id,
)
from orchestrator.core.ingress import Reason, Refused, check_json
from orchestrator.core.machine import CompiledWorkflow, MachineError
from orchestrator.core.messages import dump, load
from orchestrator.core.upcasting import upcast

__all__ = [
    "ACTIONS",
    "OPERATOR",
    "Deadline",
    "Decision",
    "IdKeyMissing",
    "Incoming",
    "Outcome",
    "OutgoingCommand",
    "SagaSnapshot",
    "command_message_id",
    "decide",
    "reply_id_for",
    "saga_id_for",
    "upcast_message",
]


#: An operator's action is a message of type ``operator.<action>``, journaled like any other.
OPERATOR = "operator."
ACTIONS = ("retry", "cancel", "resume", "fire-deadline", "skip")


#: why a saga whose own compensation is over fails when a late success's undo is not confirmed
_UNDO_UNCONFIRMED = (
    "the undo of a late success was refused or not confirmed in time: retry it (its branch"
    " undo:<step>:<command id>, GET /sagas/{id}) or skip it once it is done"
)

#: the types a child saga reports its outcome with (orchestrator.core.children)
_OUTCOME_TYPES = frozenset(cls.TYPE for cls in CHILD_OUTCOMES.values())

#: The statuses a saga never leaves. A failed saga keeps its parked events: ``resume`` applies them.
_CLOSED = FINISHED - {Status.FAILED}


#: the versioned scheme's command id (:mod:`orchestrator.core.ids`), by its older name
command_message_id = versioned_command_id


def _with(saga: SagaSnapshot, **changes: Any) -> SagaSnapshot:
    """``dataclasses.replace`` for the hot path: a copy of the frozen snapshot with ``changes``,
    without running ``__init__`` (replace costs more than the rest of a small decision)."""
    copy = object.__new__(SagaSnapshot)
    copy.__dict__.update(saga.__dict__, **changes)
    return copy


class Outcome(enum.StrEnum):
    STARTED = "started"
    MOVED = "moved"
    PARKED = "parked"
    IGNORED = "ignored"
    FAILED = "failed"
    RETRIED = "retried"  # the waiting state's commands sent again
    LATE_UNDONE = "late_undone"  # a success after its deadline: its undo was sent
    #: the last branch of a saga (its late success's undo) confirmed, and with it the saga closed
    #: (compensated, say) for the first time: it reached its final state while the branch waited
    SETTLED = "settled"
    #: a completed child saga compensated at its parent's request (``saga.CancelChild``)
    REOPENED = "reopened"
    MIGRATED = "migrated"  # moved by an operator to another release of its workflow (migration.py)
    #: an operator's action that does not fit the saga, or an event to park past the saga's
    #: parking cap: never journaled, the saga unchanged
    REFUSED = "refused"
    #: a cancel event (``Workflow.cancelled_by``) for a saga that completed or was compensated:
    #: acked and counted, never journaled, the saga unchanged
    DISCARDED = "discarded"


@dataclass(frozen=True)
class Incoming:
    """A message for one saga: a participant's event, a fired deadline, or an operator's action.

    ``payload`` is as it came, written in schema version ``schema`` (the sender's
    ``x-schema-version``); ``decide`` upcasts it to the schema its event class reads, each time
    it decides it, so the journal and the parked events keep what came and a replay reads an old
    entry through today's upcasters (:mod:`orchestrator.core.upcasting`)."""

    type: str
    message_id: str
    payload: Mapping[str, Any]
    kind: str = "event"  # event | deadline | operator
    actor: str | None = None
    schema: int = 1
    #: the trace context it came with (:func:`orchestrator.core.ingress.trace_of`), opaque here:
    #: what it causes (commands, timers) carries it on. Never journaled, never compared.
    trace: str | None = field(default=None, compare=False)
    #: the saga that started this one as its child (the start's ``x-parent-saga``, taken only
    #: from the orchestrator itself): a start event only (orchestrator.core.children)
    parent: str | None = None

    def as_json(self) -> dict[str, Any]:
        # "schema" only beyond 1: rows written before schema versions (none) read as 1, and the
        # rows of types that never changed stay as they were, byte for byte
        # (set in place: every journaled message passes here, and merging dicts copies them)
        data: dict[str, Any] = {
            "type": self.type,
            "message_id": self.message_id,
            "payload": dict(self.payload),
            "kind": self.kind,
            "actor": self.actor,
        }
        if self.schema != 1:
            data["schema"] = self.schema
        if self.parent:
            data["parent"] = self.parent
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Incoming:
        return cls(
            data["type"],
            data["message_id"],
            data["payload"],
            data.get("kind", "event"),
            data.get("actor"),
            data.get("schema", 1),
            parent=data.get("parent"),
        )


@dataclass(frozen=True)
class SagaSnapshot:
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
    #: the commands the current state sent on entering: what it waits on, what a retry resends
    awaiting: tuple[Mapping[str, Any], ...] = ()
    #: resends so far in the current state
    attempt: int = 0
    #: steps whose deadline passed: a success that still arrives for one gets its undo; and the
    #: compensation a failed saga gave up on at its deadline: its late confirmation carries it on
    timed_out: tuple[str, ...] = ()
    #: the release of its workflow the saga is pinned to: it started on it, and is decided by it
    #: until it finishes (or an operator migrates it to another)
    release: str = "1"
    #: what it waits on besides its state's commands (:mod:`orchestrator.core.branches`): the
    #: awaited undo of a late success, each with its own timers
    branches: tuple[Mapping[str, Any], ...] = ()

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
    #: the trace context of what caused it (opaque), sent on as its ``traceparent``/``tracestate``
    trace: str | None = field(default=None, compare=False)
    #: None: a command to a participant; else a message to the orchestrator itself, to start a
    #: child saga or to another saga (:mod:`orchestrator.core.children`)
    route: str | None = None


@dataclass(frozen=True)
class Deadline:
    """A timer of a saga: its state's deadline, or its next retry (``kind="retry"``)."""

    state: str
    due_at: datetime
    kind: str = "deadline"
    #: the trace context of the message that set it: a fired timer continues that trace
    trace: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Decision:
    """Everything one message changes, for the service layer to write in one transaction.

    ``deadline_changed`` says the saga's pending deadline must be replaced by ``deadline``
    (``None``: no deadline is pending any more).
    """

    saga: SagaSnapshot
    outcome: Outcome
    previous_state: str | None
    commands: tuple[OutgoingCommand, ...] = ()
    deadline: Deadline | None = None
    deadline_changed: bool = False
    reason: str | None = None
    applied_parked: tuple[str, ...] = field(default=())
    retry: Deadline | None = None
    retry_changed: bool = False
    #: events the saga still held parked when it closed (completed or compensated): they are
    #: removed from it by this decision, and the journal lists them
    dropped_parked: tuple[str, ...] = ()
    #: the fields of the saga's data the message (and the parked events it applied) wrote
    merged: tuple[str, ...] = ()
    #: set when the message is journaled (outcome IGNORED, with the reason) and dead-lettered
    #: too: a reply whose key contradicts its saga's
    dead_letter: Reason | None = None
    #: the scheme its commands' ids follow (:mod:`orchestrator.core.ids`), for replay to know
    ids: int = VERSIONED
    #: decided as a cancel event (``Workflow.cancelled_by``): journaled so, for replay to decide
    #: it so again (an entry without it was decided as an ordinary event)
    cancel: bool = False
    #: the branches' timers it sets (a Deadline) or removes (None), by timer kind
    #: (:mod:`orchestrator.core.branches`); the state's own are ``deadline`` and ``retry`` above
    timers: tuple[tuple[str, Deadline | None], ...] = ()

    def summary(self) -> dict[str, Any]:
        """The decision as the journal keeps it."""
        summary = {
            "outcome": str(self.outcome),
            "from": self.previous_state,
            "to": self.saga.state,
            "status": str(self.saga.status),
            # with each payload, so the journal shows exactly what was sent (and verify compares
            # the outbox with it); entries journaled before this have no "payload"
            "commands": [_awaiting(c) for c in self.commands],  # as a state keeps what it waits on
            "deadline": self.deadline
            and {"state": self.deadline.state, "due_at": self.deadline.due_at.isoformat()},
            "retry": self.retry and self.retry.due_at.isoformat(),
            "reason": self.reason,
            "applied_parked": list(self.applied_parked),
            "dropped_parked": list(self.dropped_parked),
            # also says the entry was decided by the declared-fields rule (replay.py)
            "merged": list(self.merged),
            # says the entry was decided by the rules for operators and late confirmations
            # (issue 11, items 5-8): replay.py decides an entry without it as before them; 3:
            # a late success's reply enters the data before its undo is built; 4: that undo is
            # awaited on a branch where the compensation declares done= (issue 28, 2b)
            "operators": 4,
        } | ({"dead_letter": str(self.dead_letter)} if self.dead_letter is not None else {})
        if self.ids != VERSIONED:
            summary["ids"] = self.ids
        if self.cancel:
            summary["cancel"] = 1
        if self.saga.version == 1 or self.outcome is Outcome.MIGRATED:
            summary["release"] = self.saga.release  # for replay and ``state?at=`` to know it
        return summary


@dataclass(frozen=True, slots=True)
class _Ids:
    """How the commands one message causes are named (:mod:`orchestrator.core.ids`): keyed with
    ``key`` over ``cause`` (the message's id), or versioned where ``key`` is None."""

    key: bytes | None
    cause: str

    def command(self, saga: SagaSnapshot, index: int) -> str:
        if self.key is None:
            return versioned_command_id(saga.id, saga.version, index)
        return keyed_command_id(self.key, saga.id, self.cause, index)


class _Draft:
    """The saga being changed while one decision is made."""

    def __init__(
        self,
        compiled: CompiledWorkflow,
        saga: SagaSnapshot,
        now: datetime,
        ids: _Ids,
        merge_all: bool = False,
        before_operators: bool = False,
    ) -> None:
        self.compiled = compiled
        self.saga = saga
        self.now = now
        self.ids = ids
        self.merge_all = merge_all
        self.before_operators = before_operators
        self.merged: list[str] = []
        self.commands: list[OutgoingCommand] = []
        self.deadline_changed = False
        self.deadline: Deadline | None = None
        self.retry_changed = False
        self.retry: Deadline | None = None
        self.applied_parked: list[str] = []
        self.failure: str | None = None
        #: the branches' timers set (a Deadline) or removed (None), by kind
        self.timers: dict[str, Deadline | None] = {}

    def merge(self, event_type: str, payload: Mapping[str, Any], starting: bool = False) -> None:
        """Take an event's payload into the saga's data: its declared fields as its schema reads
        them, less the fields the saga fixed at its start (the key, the start event's fields)
        that the workflow does not let this event update. ``merge_all``: a journal entry from
        before that rule, which merged the payload whole."""
        if not payload or event_type in _OUTCOME_TYPES:  # a child's outcome says no business data
            return
        if self.merge_all:
            self.saga = _with(self.saga, data={**self.saga.data, **payload})
            return
        data = _declared(self.compiled, event_type, payload)
        fixed = frozenset() if starting else self.compiled.fixed_fields(event_type)
        taken = {name: value for name, value in data.items() if name not in fixed}
        if taken:
            self.saga = _with(self.saga, data={**self.saga.data, **taken})
            self.merged.extend(name for name in taken if name not in self.merged)

    def build(self, builders: tuple[Any, ...]) -> list[OutgoingCommand]:
        view = self.saga.view()
        built = []
        for build in builders:
            message = build(view)
            payload = dump(message)
            # The schema may read a value the ingress rules let through as text ("1" * 25 for an
            # int field) into one nothing can encode: fail the saga here, not every later commit.
            check_json(payload, message.TYPE)
            route = None
            child = getattr(build, "child", None)
            if child is not None:
                route = start_route(child, message.SCHEMA)
                self.link_child(child, str(payload[build.child_key]))
            elif message.TYPE == CancelChild.TYPE:
                route = saga_route(payload["saga_id"])
            command = OutgoingCommand(
                self.ids.command(self.saga, len(self.commands)),
                message.TYPE,
                payload,
                self.saga.id,
                self.saga.workflow,
                route=route,
            )
            self.commands.append(command)
            built.append(command)
        return built

    def link_child(self, workflow: str, key: str) -> None:
        """Remember the child saga a start sent from the current state names (its link record)."""
        record = child_record(saga_id_for(workflow, key), workflow, self.saga.state)
        if all(b["name"] != record["name"] for b in self.saga.branches):
            self.saga = _with(self.saga, branches=(*self.saga.branches, record))

    def enter(self, dest: str, sends: tuple[Any, ...], entered: tuple[Any, ...]) -> None:
        spec = self.compiled.workflow.states[dest]
        status = spec.status
        if spec.final and status is Status.FAILED:
            self.halt_groups()  # kept for a resume, their timers ended
        elif spec.final:
            # a group's branches end with the saga; a child's completed ones are kept, for its
            # parent may reopen it (``_cancel_child``) and they are what its compensation undoes
            reopenable = status is Status.COMPLETED and parent_of(self.saga.branches) is not None
            for group in {b["group"] for b in self.saga.branches if "group" in b and not reopenable}:
                self.drop_group(group)
            if any(live(b) for b in self.saga.branches):
                status = Status.COMPENSATING  # closed when its branches are (``_settled``)
            elif any(b.get("given_up") for b in self.saga.branches):
                status = Status.FAILED  # an undo of a late success is still unconfirmed
                self.failure = _UNDO_UNCONFIRMED
        self.saga = _with(self.saga, state=dest, status=status, attempt=0)
        self.build(sends)
        awaiting = self.build(entered)
        self.saga = _with(self.saga, awaiting=tuple(_awaiting(c) for c in awaiting))
        if status is Status.FAILED:
            self.saga = _with(self.saga, last_error=self.failure or f"entered {dest}")
        self.deadline_changed = True
        due = spec.due(self.now, self.saga.data)
        self.deadline = Deadline(dest, due) if due is not None else None
        self.retry_changed = True
        self.retry = None
        if spec.retry is not None and awaiting:
            self.retry = Deadline(dest, self.now + spec.retry.delay(0), "retry")
        group = self.compiled.workflow.group_of(dest)
        if group is not None:  # last: compensating a group may move the saga on at once
            if dest == group.name:
                self.open_group(group)
            else:
                self.undo_group(group, entering=True)

    # -- parallel groups (orchestrator.core.branches) --------------------------------------------

    def drop_group(self, group: str) -> None:
        """A group's records go (with any timer they still have); a branch given up on at its
        deadline leaves a ``late`` record, by which its late success is told and undone."""
        kept: list[Mapping[str, Any]] = []
        for branch in self.saga.branches:
            if branch.get("group") != group:
                kept.append(branch)
                continue
            self.end_timers(branch["name"])
            if branch["phase"] == "timed_out" and branch["step"] in self.compiled.workflow.late_success:
                kept.append(late_record(branch))
        self.saga = _with(self.saga, branches=tuple(kept))

    def halt_groups(self) -> None:
        """The saga fails: its groups' branches wait no more (their timers end) until a resume."""
        self.saga, timers = _halted(self.saga)
        self.timers.update(timers)

    def set_branch(self, name: str, **changes: Any) -> None:
        self.saga = _with(self.saga, branches=replaced(self.saga.branches, name, **changes))

    def branch_timers(self, name: str, deadline: timedelta | None, retry: Retry | None) -> None:
        if deadline is not None:
            self.timers[deadline_kind(name)] = Deadline(self.saga.state, self.now + deadline)
        if retry is not None:
            self.timers[retry_kind(name)] = Deadline(self.saga.state, self.now + retry.delay(0), "retry")

    def end_timers(self, name: str) -> None:
        self.timers[deadline_kind(name)] = None
        self.timers[retry_kind(name)] = None

    def open_group(self, group: GroupSpec) -> None:
        """Every branch's command, in this one decision, each with its own timers; a branch done
        before (a resume into the group) is kept, not run again, and one given up on then leaves
        a ``late`` record, so that the first attempt's success is still told and undone."""
        done = {b["step"]: b for b in of_group(self.saga.branches, group.name) if b["phase"] == "done"}
        late = [
            late_record(b)
            for b in of_group(self.saga.branches, group.name)
            if b["phase"] == "timed_out" and b["step"] in self.compiled.workflow.late_success
        ]
        records: list[Mapping[str, Any]] = []
        for spec in group.branches:
            if spec.name in done:
                records.append(done[spec.name])
                continue
            name = f"{group.name}.{spec.name}"
            self.end_timers(name)  # any left from before a resume: the new ones replace them
            built = self.build((spec.send,))
            records.append(
                {
                    "name": name,
                    "group": group.name,
                    "step": spec.name,
                    "phase": "running",
                    "awaiting": [_awaiting(c) for c in built],
                    "attempt": 0,
                    "order": 0,
                }
            )
            self.branch_timers(name, spec.deadline, spec.retry)
        others = tuple(b for b in self.saga.branches if b.get("group") != group.name)
        self.saga = _with(self.saga, branches=(*others, *late, *records))

    def branch_done(self, group: GroupSpec, branch: Mapping[str, Any]) -> None:
        order = 1 + max((int(b.get("order", 0)) for b in of_group(self.saga.branches, group.name)), default=0)
        self.set_branch(branch["name"], phase="done", awaiting=[], order=order)
        if branch["step"] in self.saga.timed_out:
            self.saga = _with(
                self.saga, timed_out=tuple(s for s in self.saga.timed_out if s != branch["step"])
            )
        if self.saga.state == group.undoing:
            self.undo_group(group)  # being compensated: a success now is undone too
        elif self.saga.state == group.name and all(
            b["phase"] == "done" for b in of_group(self.saga.branches, group.name)
        ):
            self.move(GROUP_DONE)

    def branch_failed(self, group: GroupSpec, branch: Mapping[str, Any], phase: str, why: str) -> None:
        """A branch failed (``failed``), timed out (``timed_out``), or its compensation was
        refused (``undo_refused``) or not confirmed by its deadline (``undo_timed_out``, which
        keeps what it waited on, to send again with its message ids on a resume)."""
        if phase == "undo_refused":
            self.set_branch(branch["name"], phase=phase, awaiting=[])
        else:
            self.set_branch(branch["name"], phase=phase)
        if phase == "timed_out" and branch["step"] in self.compiled.workflow.late_success:
            # its success may still come: undone then, as any step's late success is
            self.saga = _with(self.saga, timed_out=(*self.saga.timed_out, branch["step"]))
        if self.saga.state == group.name:
            self.move(GROUP_FAILED, failure=why)
        elif self.saga.state == group.undoing:
            self.undo_group(group)

    def undo_group(self, group: GroupSpec, entering: bool = False) -> None:
        """The group being compensated: undo the branches done (together, or one at a time, the
        latest done first), wait for those in flight and those being undone; when none is left,
        move on to what the steps before the group need (or to ``failed`` where a compensation
        was refused or not confirmed, the records kept). ``entering``: a resume into it sends
        again the compensations that failed: a refused one anew, one given up on at its
        deadline with its message ids."""
        if entering:
            for branch in of_group(self.saga.branches, group.name):
                if branch["phase"] in ("undo_refused", "undo_timed_out"):
                    self.start_undo(group, branch, again=branch["phase"] == "undo_timed_out")
        while True:
            records = of_group(self.saga.branches, group.name)
            done = [b for b in records if b["phase"] == "done"]
            undoing = any(b["phase"] == "undoing" for b in records)
            if not done or (group.newest_first and undoing):
                break
            chosen = [max(done, key=lambda b: int(b.get("order", 0)))] if group.newest_first else done
            for branch in chosen:
                self.start_undo(group, branch)
        records = of_group(self.saga.branches, group.name)
        if any(b["phase"] in ("running", "undoing", "done") for b in records):
            return
        refused = [b["step"] for b in records if b["phase"] in ("undo_refused", "undo_timed_out")]
        if not refused:
            self.drop_group(group.name)
        if refused:
            said = ", ".join(refused)
            why = f"the compensation of {said} in {group.name} was refused or not confirmed in time"
            self.move(GROUP_FAILED, failure=why)
        else:
            self.move(GROUP_UNDONE)

    def start_undo(self, group: GroupSpec, branch: Mapping[str, Any], again: bool = False) -> None:
        """Compensate a branch: awaited, or sent once, or nothing to send. ``again``: the
        compensation it waited on when its deadline gave up on it, sent with its message ids."""
        spec = group.branch(branch["step"])
        name = branch["name"]
        if spec.undo is not None:
            if again and branch["awaiting"]:
                resent = _resent(self.saga, branch["awaiting"])
                self.commands.extend(resent)
                awaiting = [_awaiting(c) for c in resent]
            else:
                awaiting = [_awaiting(c) for c in self.build((builder_for(spec.undo.send),))]
            self.set_branch(name, phase="undoing", awaiting=awaiting, attempt=0)
            self.branch_timers(name, spec.undo.deadline, spec.undo.retry)
            return
        if spec.undo_sent is not None:
            self.build((spec.undo_sent,))
        self.set_branch(name, phase="undone", awaiting=[])

    def policy_for(self, event_type: str) -> Policy | None:
        """None when the event moves the saga; otherwise what to do with it."""
        state = self.saga.state
        if self.compiled.moves_on(state, event_type):
            return None
        return self.compiled.policies.get((state, event_type), self.compiled.workflow.unexpected)

    def move(self, trigger: str, data: Mapping[str, Any] | None = None, failure: str | None = None) -> None:
        """Fire ``trigger``; ``data`` is business data to merge (an event's payload, never a
        deadline's); ``failure`` is what ``last_error`` says if the move ends the saga failed."""
        previous = self.saga.state
        fired = self.compiled.fire(previous, trigger)
        if data:
            self.merge(trigger, data)
        if trigger in (DEADLINE, CANCEL) and previous in self.compiled.workflow.late_success:
            # the step's command may still succeed: remember to undo it then
            self.saga = _with(self.saga, timed_out=(*self.saga.timed_out, previous))
        if failure is None:
            late = trigger == DEADLINE
            failure = f"no reply in {previous} before its deadline" if late else f"{trigger} in {previous}"
        self.failure = failure
        # a child that failed its compensation may still be resumed and answer: kept as a deadline's is
        gave_up = (
            trigger in (DEADLINE, ChildFailed.TYPE)
            and not self.before_operators
            and self._fails_compensation(fired.dest)
        )
        awaited = self.saga.awaiting
        self.enter(fired.dest, fired.sends, fired.entered)
        if gave_up:
            # The compensation may still be confirmed: remember where the saga failed (a late
            # confirmation carries it on from there, and resume starts there by default) and
            # what it waited on (resume sends the same commands, same message ids).
            timed_out = self.saga.timed_out
            if previous not in timed_out:
                timed_out = (*timed_out, previous)
            self.saga = _with(self.saga, timed_out=timed_out, awaiting=self.saga.awaiting or awaited)

    def _fails_compensation(self, dest: str) -> bool:
        """Whether leaving the current state for ``dest`` gives up on a compensation: the saga
        compensates and ``dest`` is a final failed state."""
        spec = self.compiled.workflow.states[dest]
        return self.saga.status is Status.COMPENSATING and spec.final and spec.status is Status.FAILED

    def apply_parked(self) -> None:
        """After a move, an event kept for later may fit: apply each that does, oldest first."""
        progress = True
        while progress and not self.saga.finished:
            progress = False
            for index, parked in enumerate(self.saga.parked):
                if self.policy_for(parked["type"]) is None:
                    rest = self.saga.parked[:index] + self.saga.parked[index + 1 :]
                    self.saga = _with(self.saga, parked=rest)
                    # parked in the schema it came in: read as the class reads it now
                    event = upcast_message(self.compiled, Incoming.from_json(parked))
                    self.move(event.type, event.payload if event.kind == "event" else None)
                    self.applied_parked.append(parked["message_id"])
                    progress = True
                    break

    def resend_awaited(self, awaited: tuple[Mapping[str, Any], ...]) -> None:
        """The commands this draft just built on entering the state again are the ones the saga waited
        on there when it failed: send those, with their message ids, instead."""
        built = self.commands
        if not awaited or [c.type for c in built] != [c["type"] for c in awaited]:
            return
        if any(c.get("route") for c in awaited):
            return  # to a saga: its inbox took that id, and it answers no duplicate (new ids it takes)
        saga = self.saga
        self.commands = list(_resent(saga, awaited))
        self.saga = _with(saga, awaiting=tuple(dict(c) for c in awaited))


def decide(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot | None,
    message: Incoming,
    now: datetime,
    *,
    replaying: bool = False,
    merge_all: bool = False,
    before_operators: bool = False,
    late_merge: bool = True,
    ids: int | None = None,
    cancels: bool = True,
    awaited_undo: bool = True,
) -> Decision:
    """Decide what ``message`` does to ``saga`` (None: the message starts a new saga); a saga the
    definition cannot decide (it raises: a definition changed under the saga, a bug) fails, with
    the reason, for an operator: nothing raises out of the engine for one saga. Being a pure
    function of its inputs, the same entry replayed fails the same way.

    ``ids``: the scheme its commands' ids follow (:mod:`orchestrator.core.ids`); by default keyed
    where ``compiled`` has the service's id key, else versioned. Replay gives the entry's.
    ``cancels=False``: a cancel event (``Workflow.cancelled_by``) is decided as an ordinary event,
    as a journal entry without the ``cancel`` marker was. ``awaited_undo=False``: a late success's
    undo is sent and not waited for, as before ``"operators": 4``."""
    key = compiled.id_key
    if ids == VERSIONED or (ids is None and key is None):
        key = None
    elif key is None:
        raise IdKeyMissing(f"{message.type} was decided with keyed ids: replaying it needs the id key")
    try:
        decision = _decide(
            compiled,
            saga,
            message,
            now,
            _Ids(key, message.message_id),
            replaying=replaying,
            merge_all=merge_all,
            before_operators=before_operators,
            late_merge=late_merge,
            cancels=cancels,
            awaited_undo=awaited_undo,
        )
    except Exception as error:
        if saga is None or (isinstance(error, Refused) and _unreadable(compiled, message)):
            raise  # about the message, not the saga: the service layer refuses the message
        workflow = compiled.workflow
        reason = (
            f"release {workflow.release} of {workflow.name} cannot decide {message.type} in"
            f" {saga.state}: {type(error).__name__}: {error}"
        )
        bumped = _with(saga, version=saga.version + 1, updated_at=now)
        return _told_parent(saga, _failed(bumped, saga.state, reason, now))
    decision = _told_parent(saga, decision)
    if key is not None and decision.commands:
        keyed = object.__new__(Decision)
        keyed.__dict__.update(decision.__dict__, ids=KEYED)
        return keyed
    return decision


class IdKeyMissing(LookupError):
    """A journal entry was decided with keyed ids and the definition replaying it has no id key
    (:meth:`orchestrator.core.routing.Registry.use_id_key`): its commands' ids cannot be told."""


def _unreadable(compiled: CompiledWorkflow, message: Incoming) -> bool:
    """Whether the message itself cannot be upcast to what the definition reads."""
    try:
        upcast_message(compiled, message)
    except Refused:
        return True
    return False


def _decide(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot | None,
    message: Incoming,
    now: datetime,
    ids: _Ids,
    *,
    replaying: bool = False,
    merge_all: bool = False,
    before_operators: bool = False,
    late_merge: bool = True,
    cancels: bool = True,
    awaited_undo: bool = True,
) -> Decision:
    """Decide what ``message`` does to ``saga`` (None: the message starts a new saga).

    A participant's event to park when the saga already holds ``compiled.max_parked`` parked
    events is refused (outcome REFUSED, the saga unchanged). ``replaying``: the message comes
    from the journal, so it was taken when it came; the cap it passed then is not asked again
    (the setting may have changed since).

    An event's declared fields enter the saga's data as its schema reads them; after the start,
    the key and the start event's fields change only where the workflow declares ``updates``,
    and an event whose key field names another saga's key is journaled as ignored and
    dead-lettered (``Decision.dead_letter``). ``merge_all``: decide as before that rule (a journal
    entry written then, see replay.py): every payload merged whole, the key never compared.

    A compensation given up on by its deadline is remembered in ``timed_out`` with what it waited
    on; its late confirmation carries the failed saga on from there. An operator's ``retry``
    counts as a resend (``attempt``); ``resume`` starts by default where the saga failed, sends
    the commands it waited on there with their message ids (new ones for ``new_attempt``) and
    forgets the steps given up on that it takes up again. ``before_operators``: decide as before
    those rules (a journal entry written then, see replay.py).

    A step's success that arrives after its deadline gave up on the step is undone; its declared
    fields enter the data first, so the undo can name what it undoes (the charge's id).
    ``late_merge=False``: as before that (a journal entry written then).

    The message's payload is first upcast to the schema version its event class reads
    (:func:`upcast_message`); a payload that cannot be raises ``Refused`` (the service layer
    refused such a message before it got here). A parked event is kept as it came."""
    workflow = compiled.workflow
    given = message
    message = upcast_message(compiled, message)
    if saga is None:
        key = str(message.payload[workflow.key])
        saga_id = saga_id_for(workflow.name, key)
        fresh = SagaSnapshot(
            saga_id,
            workflow.name,
            key,
            "",
            Status.RUNNING,
            1,
            {},
            created_at=now,
            updated_at=now,
            release=workflow.release,
            branches=(parent_record(message.parent, message.message_id),) if message.parent else (),
        )
        draft = _Draft(compiled, fresh, now, ids, merge_all, before_operators)
        try:
            draft.merge(workflow.starts_on.TYPE, message.payload, starting=True)
            first = compiled.enter()
            draft.enter(first.dest, first.sends, first.entered)
        except Exception as error:  # a user's command builder failed: the saga needs an operator
            return _failed(draft.saga, "", error, now)
        return _decision(draft, Outcome.STARTED, None)

    previous = saga.state
    bumped = _with(saga, version=saga.version + 1, updated_at=now)
    if message.type.startswith(OPERATOR):
        return _operate(compiled, bumped, previous, message, now, ids, merge_all, before_operators)
    if message.kind != "event" and "branch" in message.payload:
        return _branch_timer(compiled, bumped, previous, message, now, ids)
    if message.parent and message.type == workflow.starts_on.TYPE and message.kind == "event":
        return _started_again(saga, bumped, message)
    if message.kind == "event" and not merge_all:
        contradiction = _key_contradiction(compiled, saga, message)
        if contradiction is not None:
            return Decision(
                bumped, Outcome.IGNORED, previous, reason=contradiction, dead_letter=Reason.KEY_MISMATCH
            )
    if cancels and message.kind == "event" and message.type in workflow.cancel_events:
        return _cancelled_by(compiled, saga, bumped, message, now, ids, merge_all, given)
    if message.kind == "event" and message.type == CancelChild.TYPE:
        return _cancel_child(compiled, saga, bumped, message, now, ids, given)
    if saga.branches and message.kind == "event":
        answer = _branch_reply(compiled, bumped, previous, message, now, ids, merge_all)
        if answer is not None:
            return answer
    late = _late_step(compiled, saga, message)
    if late is not None:
        success = message if late_merge else None
        undo = compiled.workflow.late_undos.get(late) if awaited_undo else None
        if undo is not None:
            return _await_undo(compiled, bumped, late, undo, previous, success, now, ids)
        return _undo_late(compiled, bumped, late, previous, success, now, ids)
    if saga.status is Status.FAILED and not before_operators:
        confirmed = _late_confirmation(compiled, bumped, previous, message, now, ids, merge_all)
        if confirmed is not None:
            return confirmed
    if message.type in _OUTCOME_TYPES and not _answers(saga.awaiting, message):
        # a child's outcome moves a state only as the reply to the start or cancel it sent: the
        # same type may answer another child step's command, or a cancel nothing waits on now
        reason = f"{message.type} answers no command {previous} waits on"
        return Decision(bumped, Outcome.IGNORED, previous, reason=reason)
    if saga.finished:
        return Decision(bumped, Outcome.IGNORED, previous, reason=f"saga is already {saga.status}")
    if previous not in workflow.states:
        # The workflow as loaded has no such state (a step renamed or removed since the saga
        # entered it): nothing here can decide the saga. It fails, for an operator to resume it
        # into a state that exists, rather than ignore every message it gets from now on.
        why = f"{previous} is not a state of workflow {workflow.name} as loaded"
        return _failed(bumped, previous, f"{why}: {message.type} cannot be decided", now)
    if message.kind == "event" and message.type not in workflow.events:
        # a reply to a command nobody waits for (a compensation without done=, a command sent on
        # entering a final state), or any other type the workflow takes nowhere: journaled on
        # the saga it is correlated to, never dead-lettered
        reason = f"{message.type} is not an event of workflow {workflow.name}: nothing waits for it"
        return Decision(bumped, Outcome.IGNORED, previous, reason=reason)
    if message.type == RETRY:
        return _retry(compiled, bumped, previous, now)
    draft = _Draft(compiled, bumped, now, ids, merge_all, before_operators)
    policy = draft.policy_for(message.type)
    if policy is Policy.IGNORE:
        return Decision(
            bumped, Outcome.IGNORED, previous, reason=f"{message.type} is not expected in {previous}"
        )
    if policy is Policy.PARK:
        # A fired timer is never refused: fire_due_deadlines journals every decision it gets.
        if len(saga.parked) >= compiled.max_parked and message.kind == "event" and not replaying:
            reason = (
                f"parking full: {len(saga.parked)} events parked for this saga"
                f" (ORCHESTRATOR_MAX_PARKED={compiled.max_parked})"
            )
            return Decision(saga, Outcome.REFUSED, previous, reason=reason)
        parked = _with(bumped, parked=(*bumped.parked, given.as_json()))
        return Decision(parked, Outcome.PARKED, previous, reason=f"{message.type} kept until it fits")
    if policy is Policy.FAIL:
        reason = f"{message.type} is not allowed in {previous}"
        return _failed(bumped, previous, reason, now)
    try:
        draft.move(message.type, message.payload if message.kind == "event" else None)
        draft.apply_parked()
    except MachineError as error:  # fired where the machine has no move: a bug, say so
        return _failed(bumped, previous, error, now)
    except Exception as error:  # a user's command builder raised
        return _failed(bumped, previous, error, now)
    return _decision(draft, Outcome.MOVED, previous)


def upcast_message(compiled: CompiledWorkflow, message: Incoming) -> Incoming:
    """``message`` with its payload in the schema version its event class in ``compiled`` reads
    (the message itself where it is there already, or is no event of the workflow: a timer, an
    operator's action, a reply nobody waits for). Raises ``Refused`` where it cannot be."""
    cls = compiled.workflow.events.get(message.type)
    if cls is None or message.schema == cls.SCHEMA:
        return message
    payload = upcast(cls, message.payload, message.schema)
    return replace(message, payload=payload, schema=cls.SCHEMA)  # its parent and trace kept


def _declared(compiled: CompiledWorkflow, event_type: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as its event's schema reads it: the declared fields only, JSON-ready (the same
    value whichever way the event came in: ``"3"`` for an int field is stored as ``3``)."""
    cls = compiled.workflow.events.get(event_type)
    if cls is None:  # not an event of this workflow: it declares nothing
        return {}
    data = dump(load(cls, payload))
    check_json(data, event_type)  # "1" * 25 for an int field: fail the saga, not every commit
    return data


def _key_contradiction(compiled: CompiledWorkflow, saga: SagaSnapshot, message: Incoming) -> str | None:
    """Why ``message`` cannot be for ``saga``: its key field names another saga. None: it fits."""
    key = compiled.workflow.key
    cls = compiled.workflow.events.get(message.type)
    if cls is None or key not in getattr(cls, "__dataclass_fields__", {}):
        return None
    given = message.payload.get(key)
    if given is None or str(given) == saga.key:
        return None
    return f"{message.type} says {key}={str(given)!r} but saga {saga.id} has {key}={saga.key!r}"


def _awaiting(command: OutgoingCommand) -> dict[str, Any]:
    """A command as a saga keeps what it waits on and the journal lists what it sent; ``route``
    only on a message to a saga (orchestrator.core.children)."""
    awaited = {"message_id": command.message_id, "type": command.type, "payload": dict(command.payload)}
    if command.route:
        awaited["route"] = command.route
    return awaited


def _late_step(compiled: CompiledWorkflow, saga: SagaSnapshot, message: Incoming) -> str | None:
    """The timed-out step this message is the late success of, if any."""
    if message.kind != "event":
        return None
    grouped = compiled.workflow.grouped
    for step in saga.timed_out:
        if step in grouped:
            continue  # told by its reply id (a ``late`` record), never by type: see _branch_reply
        late = compiled.workflow.late_success.get(step)  # None: a compensation given up on
        if late is not None and late[0] == message.type:
            if message.type in _OUTCOME_TYPES and not _child_of(saga, step, message):
                continue  # another child step's saga completed, not this one's
            return step
    return None


def _child_of(saga: SagaSnapshot, step: str, message: Incoming) -> bool:
    """Whether a child's outcome comes from the child saga that ``step`` started (its payload
    names it; only the orchestrator sends outcomes, orchestrator.core.children)."""
    child = message.payload.get("saga_id")
    return any(c["saga_id"] == child and c["step"] == step for c in children_of(saga.branches))


def _given_up(compiled: CompiledWorkflow, saga: SagaSnapshot) -> str | None:
    """The compensating state a failed saga gave up on at its deadline, if that is how it failed."""
    current = compiled.workflow.states.get(saga.state)  # none: it failed at its start
    if saga.status is not Status.FAILED or current is None or not current.final:
        return None
    for state in reversed(saga.timed_out):
        spec = compiled.workflow.states.get(state)
        if spec is not None and spec.status is Status.COMPENSATING:
            return state
    return None


def _reopen(compiled: CompiledWorkflow, saga: SagaSnapshot, state: str) -> SagaSnapshot:
    """The failed saga back in the compensation it gave up on, for that compensation's outcome."""
    return _with(
        saga,
        state=state,
        status=compiled.workflow.states[state].status,
        last_error=None,
        timed_out=tuple(s for s in saga.timed_out if s != state),
    )


def _late_confirmation(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    previous: str,
    message: Incoming,
    now: datetime,
    ids: _Ids,
    merge_all: bool = False,
) -> Decision | None:
    """A failed saga gave up on a compensation at its deadline; this event confirms it after all:
    it is proof the compensation happened, so the saga carries on from that state as if the
    confirmation had come in time. None: the message is no such confirmation."""
    state = _given_up(compiled, saga) if message.kind == "event" else None
    if state is None or not compiled.moves_on(state, message.type):
        return None
    if message.type in _OUTCOME_TYPES and not _answers(saga.awaiting, message):
        return None  # another child's outcome: only the answer to this state's cancel confirms it
    if compiled.workflow.states[compiled.fire(state, message.type).dest].status is Status.FAILED:
        # The compensation failed after all: the saga stays failed, and forgets the commands it
        # waited on there, so that a resume sends them anew (their replies were taken already:
        # sent again with the same ids, they would come back as duplicates and change nothing).
        forgotten = _with(saga, awaiting=())
        reason = f"{message.type}: {state} failed after its deadline too; the saga stays failed"
        return Decision(forgotten, Outcome.IGNORED, previous, reason=reason)
    draft = _Draft(compiled, _reopen(compiled, saga, state), now, ids, merge_all)
    try:
        draft.move(message.type, message.payload)
        draft.apply_parked()
    except Exception as error:  # a user's command builder raised
        return _failed(saga, previous, error, now)
    return _decision(draft, Outcome.MOVED, previous, f"{message.type} confirmed {state} after its deadline")


def _undo_late(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    step: str,
    previous: str,
    success: Incoming | None,
    now: datetime,
    ids: _Ids,
) -> Decision:
    """The step went through after all, after its deadline gave up on it: undo it now, built from
    the data with ``success``'s declared fields in it (None: a journal entry from before that)."""
    draft = _Draft(compiled, _with(saga, timed_out=tuple(s for s in saga.timed_out if s != step)), now, ids)
    _, undo = compiled.workflow.late_success[step]
    try:
        if success is not None:
            draft.merge(success.type, success.payload)
        draft.build(undo)
    except Exception as error:
        return _failed(saga, previous, error, now)
    reason = f"{step} succeeded after its deadline: undone"
    return Decision(
        draft.saga,
        Outcome.LATE_UNDONE,
        previous,
        tuple(draft.commands),
        reason=reason,
        merged=tuple(draft.merged),
    )


def _await_undo(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    step: str,
    undo: Undo,
    previous: str,
    success: Incoming | None,
    now: datetime,
    ids: _Ids,
) -> Decision:
    """The step went through after all, after the saga gave up on it: undo it on a branch of its
    own, awaited, retried and bounded by the compensation's deadline like any compensation,
    whatever the saga does meanwhile. A closed saga is compensating again until it is confirmed
    (``_settled``); a failed one stays failed."""
    draft = _Draft(compiled, _with(saga, timed_out=tuple(s for s in saga.timed_out if s != step)), now, ids)
    try:
        if success is not None:
            draft.merge(success.type, success.payload)
        built = draft.build((builder_for(undo.send),))
    except Exception as error:
        return _failed(saga, previous, error, now)
    name = undo_name(step, built[0].message_id)
    reopened = saga.status in _CLOSED or any(b.get("reopened") for b in saga.branches)
    branch = {
        "name": name,
        "step": step,
        "awaiting": [_awaiting(c) for c in built],
        "attempt": 0,
        "given_up": False,
        # it opened a saga already counted as finished: its settling is no second finish
        "reopened": reopened,
    }
    status = Status.COMPENSATING if saga.status in _CLOSED else saga.status
    undone = _with(draft.saga, branches=(*saga.branches, branch), status=status)
    timers: list[tuple[str, Deadline | None]] = []
    if undo.deadline is not None:
        timers.append((deadline_kind(name), Deadline(saga.state, now + undo.deadline)))
    if undo.retry is not None:
        timers.append((retry_kind(name), Deadline(saga.state, now + undo.retry.delay(0), "retry")))
    reason = f"{step} succeeded after the saga gave up on it: undone, awaiting {undo.done.TYPE}"
    return Decision(
        undone,
        Outcome.LATE_UNDONE,
        previous,
        tuple(draft.commands),
        reason=reason,
        merged=tuple(draft.merged),
        timers=tuple(timers),
    )


def _branch_reply(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    previous: str,
    message: Incoming,
    now: datetime,
    ids: _Ids,
    merge_all: bool = False,
) -> Decision | None:
    """A reply to a branch's command, told by its reply id: the branch confirmed (``done``) or
    refused (``failed``: the saga fails, for an operator). None: no branch's reply, or a type
    that is neither outcome (decided as any other event)."""
    branch = answered(saga.branches, message.message_id, lambda command: reply_id_for(command, message.type))
    if branch is not None and "group" in branch:
        # a group's step, or while the group is compensated its compensation
        return _group_outcome(
            compiled, saga, previous, branch, message.type, message.payload, now, ids, merge_all
        )
    if branch is not None and branch.get("late"):
        # a group's step given up on at its deadline succeeded after all: undone, told by its
        # reply id from a sibling that awaits the same type
        step = branch["step"]
        late = compiled.workflow.late_success.get(step)
        if late is None or late[0] != message.type:
            return None
        rest = _with(saga, branches=without(saga.branches, branch["name"]))
        undo = compiled.workflow.late_undos.get(step)
        if undo is not None:
            return _await_undo(compiled, rest, step, undo, previous, message, now, ids)
        return _undo_late(compiled, rest, step, previous, message, now, ids)
    undo = compiled.workflow.late_undos.get(branch["step"]) if branch is not None else None
    if branch is None or undo is None:
        return None
    refused = undo.failed is not None and message.type == undo.failed.TYPE
    if message.type != undo.done.TYPE and not refused:
        return None
    name, step = branch["name"], branch["step"]
    closed = ((deadline_kind(name), None), (retry_kind(name), None))
    draft = _Draft(compiled, saga, now, ids, merge_all)
    try:
        draft.merge(message.type, message.payload)
    except Exception as error:
        return _failed(saga, previous, error, now)
    rest = _with(draft.saga, branches=without(saga.branches, name))
    merged = tuple(draft.merged)
    if refused:
        why = f"{message.type}: the undo of {step}'s late success was refused; an operator must see to it"
        kept = {**branch, "given_up": True, "refused": True, "awaiting": []}
        kept_saga = _with(draft.saga, branches=tuple(kept if b is branch else b for b in saga.branches))
        return _branch_gave_up(compiled, kept_saga, previous, why, closed, merged)
    reason = f"{message.type} confirmed the undo of {step}'s late success"
    return _undo_confirmed(compiled, rest, branch, previous, reason, merged)


def _undo_confirmed(
    compiled: CompiledWorkflow,
    rest: SagaSnapshot,
    branch: Mapping[str, Any],
    previous: str,
    reason: str,
    merged: tuple[str, ...] = (),
) -> Decision:
    """A late success's undo confirmed (by its reply, or an operator's skip): ``rest`` is the saga
    without its branch, settled (``_settled``); outcome ``settled`` where that closes the saga for
    the first time (a saga the branch reopened was counted finished before)."""
    settled = _settled(compiled, rest)
    closing = settled.status is not rest.status and settled.status in _CLOSED and not branch.get("reopened")
    name = branch["name"]
    return Decision(
        settled,
        Outcome.SETTLED if closing else Outcome.MOVED,
        previous,
        reason=reason,
        merged=merged,
        timers=((deadline_kind(name), None), (retry_kind(name), None)),
    )


def _group_outcome(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    previous: str,
    branch: Mapping[str, Any],
    kind: str,
    payload: Mapping[str, Any],
    now: datetime,
    ids: _Ids,
    merge_all: bool = False,
    who: str | None = None,
) -> Decision | None:
    """``kind`` (with ``payload``) as the outcome of what a group's branch waits on: its step's
    reply, or its compensation's; a reply, or an operator's skip (``who``). None: no outcome of it."""
    group = compiled.workflow.groups.get(branch["group"])
    if group is None:
        return None
    spec = group.branch(branch["step"])
    phase = branch["phase"]
    waiting = phase in ("running", "timed_out")
    if waiting and kind == spec.done.TYPE:
        outcome = "done"
    elif waiting and spec.failed is not None and kind == spec.failed.TYPE:
        outcome = "failed"
    elif phase == "undoing" and spec.undo is not None and kind == spec.undo.done.TYPE:
        outcome = "undone"
    elif (
        phase == "undoing"
        and spec.undo is not None
        and spec.undo.failed is not None
        and kind == spec.undo.failed.TYPE
    ):
        outcome = "undo_refused"
    elif phase == "undo_timed_out" and spec.undo is not None and kind == spec.undo.done.TYPE:
        outcome = "undone"  # confirmed after its deadline after all
    else:
        return None
    draft = _Draft(compiled, saga, now, ids, merge_all)
    said = f"{kind}: {spec.name} {outcome} in {group.name}"
    if saga.status is Status.FAILED:
        # the saga waits for an operator: the branch only records what happened, for a resume
        # (a success is then compensated, a confirmed compensation not sent again)
        phases = {"done": "done", "undone": "undone", "failed": "failed", "undo_refused": "undo_refused"}
        try:
            draft.merge(kind, payload)
        except Exception as error:
            return _failed(saga, previous, error, now)
        draft.set_branch(branch["name"], phase=phases[outcome], awaiting=[])
        if outcome == "done":
            timed_out = tuple(s for s in draft.saga.timed_out if s != spec.name)
            draft.saga = _with(draft.saga, timed_out=timed_out)
        return _decision(draft, Outcome.IGNORED, previous, f"{said}; the saga stays failed")
    try:
        draft.merge(kind, payload)
        draft.end_timers(branch["name"])
        if outcome == "done":
            draft.branch_done(group, branch)
        elif outcome == "undone":
            draft.set_branch(branch["name"], phase="undone", awaiting=[])
            draft.undo_group(group)
        else:
            what = "failed" if outcome == "failed" else "was not compensated"
            why = f"{kind}: {spec.name} {what} in {group.name}"
            draft.branch_failed(group, branch, outcome, why)
        draft.apply_parked()
    except Exception as error:  # a user's command builder raised
        return _failed(saga, previous, error, now)
    return _decision(draft, Outcome.MOVED, previous, f"{who}: {said}" if who else said)


def _operate_undo(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    previous: str,
    action: str,
    args: Mapping[str, Any],
    now: datetime,
    ids: _Ids,
    who: str,
    branch: Mapping[str, Any],
    undo: Undo,
) -> Decision:
    """An operator's ``retry`` of a late success's undo (a refused one anew, one given up on at
    its deadline with its message ids unless ``new_attempt``), or ``skip`` of it with its
    ``done`` outcome: what an operator does for a saga failed on such an undo."""
    name = branch["name"]
    if action == "skip":
        if args.get("outcome") != undo.done.TYPE:
            return Decision(saga, Outcome.REFUSED, previous, reason=f"{name} takes {undo.done.TYPE}")
        return _undo_confirmed(
            compiled, _with(saga, branches=without(saga.branches, name)), branch, previous, who
        )
    if action != "retry":
        return Decision(saga, Outcome.REFUSED, previous, reason=f"{name}: retry or skip it")
    draft = _Draft(compiled, saga, now, ids)
    if branch.get("refused") or args.get("new_attempt") or not branch["awaiting"]:
        try:
            commands = draft.build((builder_for(undo.send),))
        except Exception as error:
            return _failed(saga, previous, error, now)
    else:
        commands = list(_resent(saga, branch["awaiting"]))
    again = {
        **{k: v for k, v in branch.items() if k != "refused"},
        "awaiting": [_awaiting(c) for c in commands],
        "attempt": int(branch.get("attempt", 0)) + 1,
        "given_up": False,
    }
    draft.saga = _with(draft.saga, branches=tuple(again if b is branch else b for b in saga.branches))
    draft.branch_timers(name, undo.deadline, undo.retry)
    return Decision(
        draft.saga, Outcome.RETRIED, previous, tuple(commands), reason=who, timers=tuple(draft.timers.items())
    )


def _operate_branch(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    previous: str,
    action: str,
    args: Mapping[str, Any],
    now: datetime,
    ids: _Ids,
    who: str,
    merge_all: bool = False,
) -> Decision:
    """An operator's ``retry``, ``fire-deadline`` or ``skip`` of one branch of a parallel group
    (``branch``: ``<group>.<step>``), as its retry timer, its deadline or its reply would do it."""
    name = str(args["branch"])

    def refuse(why: str) -> Decision:
        return Decision(saga, Outcome.REFUSED, previous, reason=why)

    branch = named(saga.branches, name)
    undo = compiled.workflow.late_undos.get(branch["step"]) if branch is not None else None
    if branch is not None and "group" not in branch and not branch.get("late") and undo is not None:
        return _operate_undo(compiled, saga, previous, action, args, now, ids, who, branch, undo)
    group = (
        compiled.workflow.groups.get(branch["group"]) if branch is not None and "group" in branch else None
    )
    if branch is None or group is None or saga.status is Status.FAILED:
        if branch is not None and group is not None:
            return refuse(f"saga is failed: resume it, and its group {group.name} with it")
        names = ", ".join(b["name"] for b in saga.branches if not b.get("late")) or "none"
        return refuse(f"{name} is no branch of this saga; its branches: {names}")
    if not live(branch):
        return refuse(f"{name} is {branch['phase']}: it waits on nothing")
    if action == "retry":
        fresh = bool(args.get("new_attempt"))
        commands = _resent(saga, branch["awaiting"], ids if fresh else None)
        attempt = int(branch.get("attempt", 0)) + 1
        branches = replaced(saga.branches, name, attempt=attempt, awaiting=[_awaiting(c) for c in commands])
        return Decision(_with(saga, branches=branches), Outcome.RETRIED, previous, commands, reason=who)
    if action == "fire-deadline":
        fired = Incoming(DEADLINE, f"{name}:{saga.version}", {"branch": name}, kind="deadline")
        decision = _group_timer(compiled, saga, previous, fired, now, ids, branch)
        return replace(decision, reason=f"{who}: {decision.reason}")
    if action == "skip":
        trigger = str(args.get("outcome") or "")
        data = args.get("data") or {}
        event = compiled.workflow.events.get(trigger)
        if data and event is not None:
            data = upcast(event, data, args.get("schema", 1))
        decided = _group_outcome(compiled, saga, previous, branch, trigger, data, now, ids, merge_all, who)
        if decided is not None:
            return decided
        spec = group.branch(branch["step"])
        takes = [spec.done, spec.failed] if branch["phase"] == "running" else []
        if branch["phase"] == "undoing" and spec.undo is not None:
            takes = [spec.undo.done, spec.undo.failed]
        said = ", ".join(e.TYPE for e in takes if e is not None)
        return refuse(f"{trigger or 'no outcome'} is not an outcome of {name}; it takes {said}")
    return refuse(f"{action} does not name a branch: retry, fire-deadline and skip do")


def _group_timer(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    previous: str,
    message: Incoming,
    now: datetime,
    ids: _Ids,
    branch: Mapping[str, Any],
) -> Decision:
    """A group branch's timer: its retry resends what it waits on (same message ids); its
    deadline fails the branch (``timed_out``), or, while it is compensated, its compensation."""
    group = compiled.workflow.groups.get(branch["group"])
    name, phase = branch["name"], branch["phase"]
    if group is None or phase not in ("running", "undoing"):
        return Decision(saga, Outcome.IGNORED, previous, reason=f"{name} waits no more")
    spec = group.branch(branch["step"])
    draft = _Draft(compiled, saga, now, ids)
    if message.kind == "retry":
        retry = spec.retry if phase == "running" else (spec.undo.retry if spec.undo is not None else None)
        attempt = int(branch.get("attempt", 0)) + 1
        draft.set_branch(name, attempt=attempt)
        if retry is not None:
            draft.timers[retry_kind(name)] = Deadline(saga.state, now + retry.delay(attempt), "retry")
        commands = _resent(saga, branch["awaiting"])
        return Decision(
            draft.saga,
            Outcome.RETRIED,
            previous,
            commands,
            reason=f"{name}: resend {attempt}",
            timers=tuple(draft.timers.items()),
        )
    draft.end_timers(name)
    if phase == "running":
        why = f"no reply to {spec.name} in {group.name} before its deadline"
        outcome = "timed_out"
    else:
        why = f"no reply to the compensation of {spec.name} in {group.name} before its deadline"
        outcome = "undo_timed_out"
    try:
        draft.branch_failed(group, branch, outcome, why)
        draft.apply_parked()
    except Exception as error:  # a user's command builder raised
        return _failed(saga, previous, error, now)
    return _decision(draft, Outcome.MOVED, previous, why)


def _resent(
    saga: SagaSnapshot, awaited: Iterable[Mapping[str, Any]], ids: _Ids | None = None
) -> tuple[OutgoingCommand, ...]:
    """The commands ``saga`` waits on (``awaited``), to send again: with their message ids (a
    participant takes them as duplicates), or new ones from ``ids`` (a new attempt)."""
    return tuple(
        OutgoingCommand(
            ids.command(saga, index) if ids is not None else c["message_id"],
            c["type"],
            c["payload"],
            saga.id,
            saga.workflow,
            route=c.get("route"),
        )
        for index, c in enumerate(awaited)
    )


def _settled(compiled: CompiledWorkflow, saga: SagaSnapshot) -> SagaSnapshot:
    """``saga`` with a branch gone: with none waiting or given up on left, a saga in a final
    state has that state's status again (compensating while they waited; failed where an undo's
    deadline failed it: in a completed or compensated state nothing else fails a saga)."""
    spec = compiled.workflow.states.get(saga.state)
    if any(live(b) for b in saga.branches) or spec is None or not spec.final or spec.status is Status.FAILED:
        return saga
    if any(b.get("given_up") for b in saga.branches):  # nothing waits, and an undo is not confirmed
        return _with(saga, status=Status.FAILED, last_error=saga.last_error or _UNDO_UNCONFIRMED)
    if saga.status in (Status.COMPENSATING, Status.FAILED):
        return _with(saga, status=spec.status, last_error=None)
    return saga


def _branch_timer(
    compiled: CompiledWorkflow, saga: SagaSnapshot, previous: str, message: Incoming, now: datetime, ids: _Ids
) -> Decision:
    """A branch's timer fired: its retry resends its commands (same message ids); its deadline
    fails the saga, for an operator, and keeps the branch (``given_up``): a confirmation that
    still comes settles it."""
    name = str(message.payload["branch"])
    branch = named(saga.branches, name)
    if branch is not None and "group" in branch:
        return _group_timer(compiled, saga, previous, message, now, ids, branch)
    undo = compiled.workflow.late_undos.get(branch["step"]) if branch is not None else None
    if branch is None or undo is None or branch.get("given_up"):
        return Decision(
            saga,
            Outcome.IGNORED,
            previous,
            reason=f"{name} waits no more",
        )
    commands = _resent(saga, branch["awaiting"])
    if message.kind == "retry":
        attempt = int(branch.get("attempt", 0)) + 1
        again = {**branch, "attempt": attempt}
        resent = _with(saga, branches=tuple(again if b is branch else b for b in saga.branches))
        timers: tuple[tuple[str, Deadline | None], ...] = ()
        if undo.retry is not None:
            timers = ((retry_kind(name), Deadline(saga.state, now + undo.retry.delay(attempt), "retry")),)
        return Decision(
            resent, Outcome.RETRIED, previous, commands, reason=f"{name}: resend {attempt}", timers=timers
        )
    kept = {**branch, "given_up": True}
    why = (
        f"no {undo.done.TYPE} for {', '.join(c.type for c in commands)} (the undo of {branch['step']}'s"
        " late success) before its deadline; an operator must see to it"
    )
    kept_saga = _with(saga, branches=tuple(kept if b is branch else b for b in saga.branches))
    return _branch_gave_up(
        compiled, kept_saga, previous, why, ((deadline_kind(name), None), (retry_kind(name), None))
    )


def _branch_gave_up(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    previous: str,
    why: str,
    timers: tuple[tuple[str, Deadline | None], ...],
    merged: tuple[str, ...] = (),
) -> Decision:
    """A late success's undo was refused or not confirmed (its branch kept, ``given_up``). A
    saga in its final state fails now, for an operator; one still compensating goes on (its own
    replies must not be lost to a failed status) and fails when it reaches its final state
    (``_Draft.enter``)."""
    spec = compiled.workflow.states.get(saga.state)
    if spec is not None and not spec.final and saga.status is not Status.FAILED:
        return Decision(
            saga,
            Outcome.MOVED,
            previous,
            reason=f"{why}; the saga fails when it ends",
            merged=merged,
            timers=timers,
        )
    failed = _with(saga, status=Status.FAILED, last_error=why)
    return Decision(
        failed,
        Outcome.FAILED,
        previous,
        deadline_changed=True,
        retry_changed=True,
        reason=why,
        merged=merged,
        timers=timers,
    )


def _retry(compiled: CompiledWorkflow, saga: SagaSnapshot, previous: str, now: datetime) -> Decision:
    """Send the waiting state's commands again, with the same message ids, and set the next retry."""
    spec = compiled.workflow.states.get(saga.state)  # decide() fails a saga whose state is gone
    if saga.finished or spec is None or spec.retry is None or not saga.awaiting:
        return Decision(saga, Outcome.IGNORED, previous, retry_changed=True, reason="nothing to retry")
    commands = _resent(saga, saga.awaiting)
    attempt = saga.attempt + 1
    retry = Deadline(saga.state, now + spec.retry.delay(attempt), "retry")
    return Decision(
        _with(saga, attempt=attempt),
        Outcome.RETRIED,
        previous,
        commands,
        retry=retry,
        retry_changed=True,
        reason=f"resend {attempt}",
    )


def _operate(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    previous: str,
    message: Incoming,
    now: datetime,
    ids: _Ids,
    merge_all: bool = False,
    before_operators: bool = False,
) -> Decision:
    """An operator's action, decided like an event: journaled with who asked and why, or refused
    (outcome REFUSED, with the reason) where it does not fit the saga as it stands."""
    action = message.type.removeprefix(OPERATOR)
    args = message.payload
    said = f": {args['reason']}" if args.get("reason") else ""
    who = f"{action} by {message.actor or 'an operator'}{said}"

    def refuse(why: str) -> Decision:
        return Decision(saga, Outcome.REFUSED, previous, reason=why)

    state = saga.state
    if action == "resume":
        if before_operators:
            return _resume(
                compiled, saga, previous, args.get("step") or state, who, now, ids, merge_all, True
            )
        step = args.get("step") or _given_up(compiled, saga) or state
        return _resume(
            compiled,
            saga,
            previous,
            step,
            who,
            now,
            ids,
            merge_all,
            new_attempt=bool(args.get("new_attempt")),
        )
    if args.get("branch") and (not saga.finished or saga.status is Status.FAILED):
        return _operate_branch(compiled, saga, previous, action, args, now, ids, who, merge_all)
    given_up = _given_up(compiled, saga) if action == "skip" and not before_operators else None
    as_it_was = saga  # a skip that fails to move leaves the saga failed where it failed
    if given_up is not None:
        # The compensation the saga gave up on at its deadline: an operator who knows how it
        # ended takes that as its outcome, as its late reply would be taken.
        saga = _reopen(compiled, saga, given_up)
        state = given_up
    if saga.finished:
        return refuse(
            f"saga is already {saga.status}" + (": resume it" if saga.status is Status.FAILED else "")
        )
    if action == "retry":
        if not saga.awaiting:
            return refuse(f"nothing to retry: {state} waits on no command")
        if before_operators:  # an operator's resend was not counted then
            commands = _resent(saga, saga.awaiting)
            return Decision(saga, Outcome.RETRIED, previous, commands, reason=who)
        # A resend like the retry timer's: same message ids, counted in ``attempt``; a new
        # attempt (``new_attempt``) gets new message ids, so a participant takes it afresh.
        fresh = bool(args.get("new_attempt"))
        commands = _resent(saga, saga.awaiting, ids if fresh else None)
        resent = _with(saga, attempt=saga.attempt + 1, awaiting=tuple(_awaiting(c) for c in commands))
        return Decision(resent, Outcome.RETRIED, previous, commands, reason=who)
    data: Mapping[str, Any] | None = None
    if action == "cancel":
        cannot = _cannot_cancel(compiled, saga)
        if cannot is not None:
            return refuse(cannot)
        trigger = CANCEL
    elif action == "fire-deadline":
        current = compiled.workflow.states.get(state)
        if current is None or not current.timed or not compiled.moves_on(state, DEADLINE):
            return refuse(f"no deadline is pending in {state}")
        trigger = DEADLINE
    elif action == "skip":
        trigger = str(args.get("outcome") or "")
        if trigger in (GROUP_DONE, GROUP_FAILED, GROUP_UNDONE):
            return refuse(f"{trigger} is the group's own: skip a branch's outcome (branch=<group>.<step>)")
        if not compiled.moves_on(state, trigger):
            takes = sorted(e for s, e in compiled.moves if s == state and not e.startswith("saga."))
            return refuse(
                f"{trigger or 'no outcome'} is not an outcome of {state}; it takes {', '.join(takes)}"
            )
        data = args.get("data") or None
        event = compiled.workflow.events.get(trigger)
        if data and event is not None:  # written in the outcome's schema then (none said: 1)
            data = upcast(event, data, args.get("schema", 1))
        carries_key = compiled.workflow.key in getattr(event, "__dataclass_fields__", {})
        if data and carries_key and not merge_all:
            # the data the outcome would have carried, for this saga: its key is the saga's
            data = {**data, compiled.workflow.key: saga.key}
    else:
        return refuse(f"unknown action {action!r}")
    draft = _Draft(compiled, saga, now, ids, merge_all, before_operators)
    try:
        draft.move(trigger, data, failure=who)
        draft.apply_parked()
    except Exception as error:  # a user's command builder raised
        return _failed(as_it_was, previous, error, now)
    return _decision(draft, Outcome.MOVED, previous, who)


def _cannot_cancel(compiled: CompiledWorkflow, saga: SagaSnapshot) -> str | None:
    """Why ``saga`` cannot be cancelled as it stands (None: it can): the one rule for an
    operator's cancel and a cancel event."""
    if saga.finished:
        return f"saga is already {saga.status}" + (": resume it" if saga.status is Status.FAILED else "")
    if saga.status is Status.COMPENSATING:
        return f"saga is already compensating (in {saga.state})"
    if not compiled.moves_on(saga.state, CANCEL):
        return f"{saga.state} has no cancel route: the workflow declares no on_cancel or deadline for it"
    return None


def _cancelled_by(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    bumped: SagaSnapshot,
    message: Incoming,
    now: datetime,
    ids: _Ids,
    merge_all: bool = False,
    given: Incoming | None = None,
) -> Decision:
    """A cancel event (``Workflow.cancelled_by``): the operator's cancel, asked for by a message.
    Its declared fields enter the data first, so a compensation can read them (a reason). A
    failed saga keeps it parked: a resume cancels it instead of going on (``_resume``)."""
    previous = saga.state
    if saga.status in _CLOSED:  # nothing to cancel, and nothing to journal: counted only
        reason = f"{message.type}: saga is already {saga.status}"
        return Decision(saga, Outcome.DISCARDED, previous, reason=reason, cancel=True)
    current = compiled.workflow.states.get(saga.state)
    if saga.status is Status.FAILED and current is not None and not current.final:
        kept = _with(bumped, parked=(*bumped.parked, (given or message).as_json()))
        reason = f"{message.type} kept: the saga is failed, and a resume cancels it"
        return Decision(kept, Outcome.PARKED, previous, reason=reason, cancel=True)
    cannot = _cannot_cancel(compiled, bumped)
    if cannot is not None:
        reason = f"{message.type} cancels nothing: {cannot}"
        return Decision(bumped, Outcome.IGNORED, previous, reason=reason, cancel=True)
    who = f"cancel by {message.type}"
    draft = _Draft(compiled, bumped, now, ids, merge_all)
    try:
        draft.merge(message.type, message.payload)
        draft.move(CANCEL, failure=who)
        draft.apply_parked()
    except Exception as error:  # a user's command builder raised
        return replace(_failed(bumped, previous, error, now), cancel=True)
    return replace(_decision(draft, Outcome.MOVED, previous, who), cancel=True)


def _answers(awaiting: Iterable[Mapping[str, Any]], message: Incoming) -> bool:
    return any(reply_id_for(c["message_id"], message.type) == message.message_id for c in awaiting)


def _to_parent(saga: SagaSnapshot, reason: str | None = None) -> OutgoingCommand | None:
    """The outcome a child saga in a final status owes its parent: the reply (its id as section 6
    derives it) to the parent's last command to it, its start or its cancel. None: no parent,
    or the saga is not in a final status."""
    link = parent_of(saga.branches) if saga.branches else None
    outcome = CHILD_OUTCOMES.get(str(saga.status)) if link is not None else None
    if link is None or outcome is None:
        return None
    payload: dict[str, Any] = {"saga_id": saga.id, "workflow": saga.workflow, "key": saga.key}
    if saga.status is not Status.COMPLETED:
        payload["reason"] = reason or saga.last_error
    return OutgoingCommand(
        reply_id_for(link["reply_to"], outcome.TYPE),
        outcome.TYPE,
        payload,
        saga.id,
        saga.workflow,
        route=saga_route(link["saga_id"]),
    )


def _told_parent(before: SagaSnapshot | None, decision: Decision) -> Decision:
    """``decision`` with the child's outcome for its parent where it enters a final status (or
    another final state): sent each time, under the same id for the same question, so a parent
    takes it once."""
    saga = decision.saga
    if not saga.branches or decision.outcome in (Outcome.REFUSED, Outcome.DISCARDED):
        return decision
    if before is not None and before.status is saga.status and before.state == saga.state:
        return decision
    told = _to_parent(saga)
    return decision if told is None else replace(decision, commands=(*decision.commands, told))


def _started_again(saga: SagaSnapshot, bumped: SagaSnapshot, message: Incoming) -> Decision:
    """A parent's start for a saga that exists already: its own child started anew (the parent
    resumed into the step, or retried it with new ids) is told its outcome from now on, at once
    if it has one; a saga another started, or nobody, answers that it is not the parent's (the
    parent's step fails), and is left as it is."""
    previous = saga.state
    parent = str(message.parent)
    link = parent_of(saga.branches)
    if link is None or link["saga_id"] != parent:
        why = f"a {saga.workflow} saga with key {saga.key} exists, and saga {parent} did not start it"
        refusal = OutgoingCommand(
            reply_id_for(message.message_id, ChildFailed.TYPE),
            ChildFailed.TYPE,
            {"saga_id": saga.id, "workflow": saga.workflow, "key": saga.key, "reason": why},
            saga.id,
            saga.workflow,
            route=saga_route(parent),
        )
        return Decision(bumped, Outcome.IGNORED, previous, (refusal,), reason=why)
    asked = _with(bumped, branches=replaced(bumped.branches, "parent", reply_to=message.message_id))
    told = _to_parent(asked)
    why = "started again by its parent: its outcome answers this start" + (", told at once" if told else "")
    return Decision(asked, Outcome.IGNORED, previous, (told,) if told else (), reason=why)


def _cancel_child(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    bumped: SagaSnapshot,
    message: Incoming,
    now: datetime,
    ids: _Ids,
    given: Incoming,
) -> Decision:
    """The parent compensates its step that started this saga. Whatever the answer, it goes to
    this cancel (the link's ``reply_to``): a running saga is cancelled as by an operator; a
    completed one is reopened and compensated from its end (``Workflow.reopen``); a compensated
    one answers at once; a failed one answers that it is failed and keeps the cancel for a resume
    (``_resume``); one already compensating answers when it is done."""
    previous = saga.state
    link = parent_of(saga.branches)
    if link is None or message.payload.get("parent") != link["saga_id"]:
        why = f"{message.type} from saga {message.payload.get('parent')!r}, which did not start this one"
        return Decision(bumped, Outcome.IGNORED, previous, reason=why)
    asked = _with(bumped, branches=replaced(bumped.branches, "parent", reply_to=message.message_id))
    if saga.status is Status.COMPLETED:
        reopen = compiled.workflow.reopen
        if reopen is None:
            why = f"{compiled.workflow.name} has no way back from completed: nothing compensates it"
            told = _to_parent(_with(asked, status=Status.FAILED), why)
            return Decision(asked, Outcome.IGNORED, previous, (told,) if told else (), reason=why)
        dest, sends = reopen
        draft = _Draft(compiled, _with(asked, status=Status.COMPENSATING), now, ids)
        try:
            draft.enter(dest, sends, compiled.workflow.states[dest].on_enter)
        except Exception as error:  # a user's command builder raised
            return _failed(asked, previous, error, now)
        return _decision(draft, Outcome.REOPENED, previous, "compensated at its parent's request")
    current = compiled.workflow.states.get(saga.state)
    if saga.status is Status.COMPENSATED or (
        saga.status is Status.FAILED and current is not None and current.final
    ):
        if saga.status is Status.FAILED:  # kept: a resume of it, forward or not, cancels it
            asked = _with(asked, parked=(*asked.parked, given.as_json()))
        told = _to_parent(asked)
        why = f"{message.type}: saga is already {saga.status}; its parent is told"
        return Decision(asked, Outcome.IGNORED, previous, (told,) if told else (), reason=why)
    if saga.status is Status.COMPENSATING:
        why = f"{message.type}: saga is already compensating (in {saga.state}); its parent is told when done"
        return Decision(asked, Outcome.IGNORED, previous, reason=why)
    decision = _cancelled_by(compiled, saga, asked, message, now, ids, given=given)
    if decision.outcome is Outcome.PARKED:  # a failed saga: its parent learns so now
        told = _to_parent(decision.saga)
        return replace(decision, commands=(told,) if told else ())
    return decision


def _resume(
    compiled: CompiledWorkflow,
    saga: SagaSnapshot,
    previous: str,
    step: str,
    who: str,
    now: datetime,
    ids: _Ids,
    merge_all: bool = False,
    before_operators: bool = False,
    *,
    new_attempt: bool = False,
) -> Decision:
    """A failed saga enters ``step`` again as if it had just arrived there: its commands are sent
    again and its deadline starts over. Resumed into the compensation it gave up on at its
    deadline, the commands it waited on there keep their message ids (a participant that took
    them takes them as duplicates) unless the operator asks for a ``new_attempt``; after any other
    failure a reply to them may have been taken, so they are new. The steps it takes up again are
    no longer given up on
    (``timed_out``): resumed into a step, none is; resumed into a compensation, the steps still
    given up on stay so. ``before_operators``: as before those rules, new message ids always and
    ``timed_out`` kept."""
    if saga.status is not Status.FAILED:
        return Decision(
            saga, Outcome.REFUSED, previous, reason=f"saga is {saga.status}: only a failed saga resumes"
        )
    spec = compiled.workflow.states.get(step)
    if spec is None or spec.final:
        choices = ", ".join(s.name for s in compiled.workflow.states.values() if not s.final)
        what = "a final state" if spec is not None else "not a state of " + compiled.workflow.name
        return Decision(
            saga, Outcome.REFUSED, previous, reason=f"{step} is {what}; resume from one of {choices}"
        )
    resumed = _with(saga, last_error=None)
    if not before_operators:
        timed_out: tuple[str, ...] = ()
        if spec.status is Status.COMPENSATING:
            states = compiled.workflow.states
            timed_out = tuple(
                s for s in saga.timed_out if s not in states or states[s].status is not Status.COMPENSATING
            )
        resumed = _with(resumed, timed_out=timed_out)
    # Only a compensation given up at its deadline is resent with its message ids: nothing
    # answered those. A saga that failed otherwise may have taken the reply already (its next
    # command could not be built), and the same ids would only bring that reply back as a
    # duplicate.
    given_up = _given_up(compiled, saga)
    draft = _Draft(compiled, resumed, now, ids, merge_all, before_operators)
    for group in {b["group"] for b in saga.branches if "group" in b}:
        spec_of = compiled.workflow.groups.get(group)
        if spec_of is None or step not in (spec_of.name, spec_of.undoing):
            draft.drop_group(group)  # resumed elsewhere: the group's records go (late ones stay)
    cancelling = compiled.workflow.cancel_events | {CancelChild.TYPE}
    cancel = next((p for p in saga.parked if p["type"] in cancelling), None)
    if cancel is not None and compiled.moves_on(step, CANCEL) and spec.status is not Status.COMPENSATING:
        # cancelled while it was failed: resumed into ``step`` only to be cancelled from there,
        # without sending that step's commands again
        try:
            event = upcast_message(compiled, Incoming.from_json(cancel))
            draft.saga = _with(
                draft.saga,
                state=step,
                status=spec.status,
                parked=tuple(p for p in draft.saga.parked if p is not cancel),
            )
            draft.merge(event.type, event.payload)
            draft.move(CANCEL, failure=f"cancel by {event.type}, kept while the saga was failed")
            draft.applied_parked.append(cancel["message_id"])
            draft.apply_parked()
        except Exception as error:
            return _failed(saga, previous, error, now)
        return _decision(draft, Outcome.MOVED, previous, f"{who}; then cancel by {event.type}")
    try:
        draft.enter(step, (), spec.on_enter)
        if not before_operators and not new_attempt and step == given_up:
            draft.resend_awaited(saga.awaiting)
        draft.apply_parked()
    except Exception as error:
        return _failed(saga, previous, error, now)
    return _decision(draft, Outcome.MOVED, previous, who)


def _decision(draft: _Draft, outcome: Outcome, previous: str | None, reason: str | None = None) -> Decision:
    saga = draft.saga
    dropped: tuple[str, ...] = ()
    if saga.parked and saga.status in _CLOSED:  # nothing will apply them any more
        dropped = tuple(p["message_id"] for p in saga.parked)
        saga = _with(saga, parked=())
    return Decision(
        saga,
        outcome,
        previous,
        tuple(draft.commands),
        draft.deadline,
        draft.deadline_changed,
        applied_parked=tuple(draft.applied_parked),
        retry=draft.retry,
        retry_changed=draft.retry_changed,
        reason=reason,
        dropped_parked=dropped,
        merged=tuple(draft.merged),
        timers=tuple(draft.timers.items()),
    )


def _failed(saga: SagaSnapshot, previous: str, error: Exception | str, now: datetime) -> Decision:
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    halted, timers = _halted(saga)
    failed = _with(halted, status=Status.FAILED, last_error=reason, updated_at=now)
    return Decision(
        failed,
        Outcome.FAILED,
        previous or None,
        deadline_changed=True,
        retry_changed=True,
        reason=reason,
        timers=tuple(timers.items()),
    )


def _halted(saga: SagaSnapshot) -> tuple[SagaSnapshot, dict[str, Deadline | None]]:
    """``saga`` as it fails: its groups' branches wait no more, their timers end. A branch in
    flight is given up on (``timed_out``: its success, recorded while the saga is failed, is
    compensated on a resume); a compensation in flight too (``undo_timed_out``: a resume sends
    it again with its message ids)."""
    if not any("group" in b for b in saga.branches):
        return saga, {}
    timers: dict[str, Deadline | None] = {}
    branches: list[Mapping[str, Any]] = []
    timed_out = list(saga.timed_out)
    for branch in saga.branches:
        phase = branch.get("phase")
        if "group" in branch and phase in ("running", "undoing"):
            timers[deadline_kind(branch["name"])] = None
            timers[retry_kind(branch["name"])] = None
            branch = {**branch, "phase": "timed_out" if phase == "running" else "undo_timed_out"}
            if phase == "running" and branch["step"] not in timed_out:
                timed_out.append(branch["step"])
        branches.append(branch)
    return _with(saga, branches=tuple(branches), timed_out=tuple(timed_out)), timers
