"""The service layer for what an operator (or the REST API) asks: start a saga, act on one.

Each request is one transaction, like a batch of events: lock the saga, let the pure engine
decide, write the decision with its journal entry (kind ``operator``, with who asked and why).
An action the engine refuses writes nothing and raises :class:`ActionRefused` with its reason.
The caller hands the resulting commands to the relay and the decisions to the deadline alarm.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from orchestrator.core.definitions import Status, Workflow
from orchestrator.core.engine import (
    ACTIONS,
    OPERATOR,
    Decision,
    Incoming,
    Outcome,
    OutgoingCommand,
    SagaSnapshot,
    decide,
    saga_id_for,
)
from orchestrator.core.ingress import Refused, check_json
from orchestrator.core.messages import InvalidPayload, dump, load
from orchestrator.core.routing import Registry
from orchestrator.core.upcasting import upcast
from orchestrator.service.store import Changes, Store, Tombstone
from orchestrator.service.tracing import Tracer, decided

__all__ = [
    "ACTIONS",
    "ActionRefused",
    "Applied",
    "BadRequest",
    "OperatorAction",
    "SagaNotFound",
    "apply_action",
    "start_saga",
]


class SagaNotFound(LookupError):
    """No saga has this id."""


class BadRequest(ValueError):
    """The request names something that does not exist or carries data that does not fit."""


class ActionRefused(Exception):
    """The action does not fit the saga as it stands; the text says why."""


@dataclass(frozen=True)
class OperatorAction:
    name: str
    actor: str
    reason: str | None = None
    #: resume: the state to resume from (default: the state the saga failed in)
    step: str | None = None
    #: skip: the event type to take as the current step's outcome
    outcome: str | None = None
    #: skip: business data that outcome carries; its declared fields enter the saga's data as a
    #: reply's would (the key and the start event's fields only where the workflow says so)
    data: Mapping[str, Any] = field(default_factory=dict)
    #: retry, resume: send the commands with new message ids, as a new attempt a participant
    #: takes afresh (default: the same message ids, which a participant takes as duplicates)
    new_attempt: bool = False
    #: retry, fire-deadline, skip: the branch of a parallel group it is about (``<group>.<step>``)
    branch: str | None = None

    def payload(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "reason": self.reason,
            "step": self.step,
            "outcome": self.outcome,
            "data": dict(self.data),
            "branch": self.branch,
        }
        if self.new_attempt:
            values["new_attempt"] = True
        return {k: v for k, v in values.items() if v not in (None, {})}


@dataclass
class Applied:
    saga: SagaSnapshot
    created: bool
    commands: list[OutgoingCommand]
    decisions: list[Decision]
    #: the id the request was journaled under, for the log lines about it
    message_id: str = ""
    #: a start for a key whose saga was archived: its tombstone (``saga`` is made of it, no data)
    archived: Tombstone | None = None


async def start_saga(
    registry: Registry,
    store: Store,
    workflow: str,
    key: str,
    data: Mapping[str, Any],
    actor: str,
    now: datetime,
    schema_version: int = 1,
    trace: str | None = None,
    tracer: Tracer | None = None,
) -> Applied:
    """Start a saga as its starting event would; the same key again returns the saga it started,
    or, when that saga was archived, what its tombstone says of it (nothing starts again).

    ``data`` is written in schema version ``schema_version`` of the starting event (1, as an
    event without ``x-schema-version``): it is upcast to the class's schema first, by the same
    upcasters and with the same refusals as an event over AMQP, and journaled at that schema.
    ``trace``: the request's trace context, which the saga's first commands and timers carry on
    (under a ``decide`` span of ``tracer``'s when there is one)."""
    compiled = registry.workflows.get(workflow)
    if compiled is None:
        raise BadRequest(f"unknown workflow {workflow!r}; known: {', '.join(sorted(registry.workflows))}")
    spec = compiled.workflow
    if not key:
        raise BadRequest("key must not be empty")
    try:
        data = upcast(spec.starts_on, data, schema_version)
    except Refused as refused:
        raise BadRequest(f"data cannot be read as {spec.starts_on.TYPE}: {refused}") from None
    given = data.get(spec.key)
    if given is not None and str(given) != key:
        raise BadRequest(f"data.{spec.key} is {given!r} but key is {key!r}")
    try:
        # Stored as a participant would have sent it: validated, coerced, nothing extra.
        payload = dump(load(spec.starts_on, {**data, spec.key: key}))
    except InvalidPayload as error:
        raise BadRequest(f"data does not fit {spec.starts_on.TYPE}: {error}") from None
    saga_id = saga_id_for(spec.name, key)
    span = None
    if tracer is not None:
        attributes = {
            "orchestrator.saga.id": saga_id,
            "orchestrator.workflow": spec.name,
            "orchestrator.message.type": spec.starts_on.TYPE,
            "messaging.message.id": f"api-start:{saga_id}",
        }
        span = tracer.start(f"decide {spec.starts_on.TYPE}", trace, attributes)
        trace = span.trace
    message = Incoming(
        spec.starts_on.TYPE,
        f"api-start:{saga_id}",
        payload,
        kind="operator",
        actor=actor,
        schema=spec.starts_on.SCHEMA,
        trace=trace,
    )
    for attempt in range(2):
        try:
            async with store.transaction() as tx:
                existing = (await tx.lock_sagas([saga_id])).get(saga_id)
                if existing is not None:
                    if span is not None:  # started before: nothing decided
                        span.end()
                    return Applied(existing, False, [], [], message.message_id)
                gone = (await tx.tombstones([saga_id])).get(saga_id)
                if gone is not None:
                    if span is not None:
                        span.end()
                    return Applied(_of_tombstone(gone), False, [], [], message.message_id, gone)
                decision = decide(compiled, None, message, now)
                if span is not None:
                    decided(span, [decision])
                    span = None
                changes = Changes()
                changes.record(message, decision, now)
                changes.inbox[message.message_id] = saga_id
                await tx.save(changes)
                return Applied(decision.saga, True, changes.commands, [decision], message.message_id)
        except Exception:
            if attempt:  # a second failure is not a race any more: let it be seen
                raise
            # The starting event, or the same request, may have created it meanwhile (the
            # journal's key refused ours): look again, and take that one.
    raise AssertionError("unreachable")


def _of_tombstone(gone: Tombstone) -> SagaSnapshot:
    """The archived saga as far as its tombstone knows it: where it ended, not its data."""
    return SagaSnapshot(
        id=gone.saga_id,
        workflow=gone.workflow,
        key=gone.key,
        state=gone.state,
        status=Status(gone.status),
        version=gone.version,
        data={},
        created_at=gone.created_at,
        updated_at=gone.finished_at,
        release=gone.release,
    )


async def apply_action(
    registry: Registry,
    store: Store,
    saga_id: str,
    action: OperatorAction,
    now: datetime,
    tracer: Tracer | None = None,
) -> Applied:
    """An operator's action on a saga, decided and committed as a message of its own. With a
    ``tracer`` it is decided in an ``operator <action>`` span, whose context the commands it sends
    carry on: a trace of its own (the saga's start context is not kept on its row), named by the
    saga id, from which the participants' work on those commands hangs."""
    if action.name not in ACTIONS:
        raise BadRequest(f"unknown action {action.name!r}; actions: {', '.join(ACTIONS)}")
    message_id = f"operator:{uuid.uuid4()}"
    span = None
    if tracer is not None:
        attributes = {
            "orchestrator.saga.id": saga_id,
            "orchestrator.operator.action": action.name,
            "messaging.message.id": message_id,
        }
        span = tracer.start(f"operator {action.name}", None, attributes)
    message = Incoming(
        OPERATOR + action.name,
        message_id,
        action.payload(),
        kind="operator",
        actor=action.actor,
        trace=span.trace if span is not None else None,
    )
    try:
        applied = await _apply(registry, store, saga_id, action, message, now)
    except Exception as error:
        if span is not None:
            span.fail(f"{type(error).__name__}: {error}")
            span.end()
        raise
    if span is not None:
        decided(span, applied.decisions)
    return applied


async def _apply(
    registry: Registry, store: Store, saga_id: str, action: OperatorAction, message: Incoming, now: datetime
) -> Applied:
    async with store.transaction() as tx:
        saga = (await tx.lock_sagas([saga_id])).get(saga_id)
        if saga is None:
            raise SagaNotFound(f"no saga {saga_id}")
        compiled = registry.for_saga(saga)
        if compiled is None:
            if saga.workflow in registry.workflows:
                raise ActionRefused(
                    f"saga is on release {saga.release} of {saga.workflow}, which this service does"
                    f" not load (it loads release {registry.workflows[saga.workflow].workflow.release})"
                )
            raise ActionRefused(f"workflow {saga.workflow!r} is not loaded by this service")
        _check_names(compiled.workflow, action)
        if action.name == "skip" and action.data:
            # the outcome's data is written in its event's schema of today: say which, so that a
            # replay after that event's schema moved on upcasts it (absent: 1)
            schema = compiled.workflow.events[str(action.outcome)].SCHEMA
            if schema != 1:
                message = replace(message, payload={**message.payload, "schema": schema})
        decision = decide(compiled, saga, message, now)
        if decision.outcome is Outcome.REFUSED:
            raise ActionRefused(decision.reason or "refused")
        if action.name == "skip":
            _check_outcome_data(compiled.workflow, saga, action)
        changes = Changes()
        changes.record(message, decision, now)
        await tx.save(changes)
    return Applied(decision.saga, False, changes.commands, [decision], message.message_id)


def _check_names(workflow: Workflow, action: OperatorAction) -> None:
    """Names that exist nowhere in the workflow are bad input (422), not a conflict (409)."""
    states, events = workflow.states, workflow.events
    if action.new_attempt and action.name not in ("retry", "resume"):
        raise BadRequest(f"new_attempt is for retry and resume, not {action.name}")
    if action.step is not None and action.step not in states:
        raise BadRequest(f"no state {action.step!r}; states: {', '.join(states)}")
    if action.name == "skip":
        if not action.outcome:
            raise BadRequest("skip needs an outcome: the event type to take as the step's result")
        if action.outcome not in events:
            raise BadRequest(f"no event type {action.outcome!r} in this workflow")


def _check_outcome_data(workflow: Workflow, saga: SagaSnapshot, action: OperatorAction) -> None:
    """A skip's data is what the outcome's event would have carried: it must fit that event, and
    it cannot rename the saga (its key) by merging a different value into the saga's data."""
    event, key_field = workflow.events[str(action.outcome)], workflow.key
    given = action.data.get(key_field)
    if given is not None and str(given) != saga.key:
        raise BadRequest(f"data.{key_field} is {given!r} but the saga's key is {saga.key!r}")
    carries_key = key_field in getattr(event, "__dataclass_fields__", {})
    try:
        read = dump(load(event, {**action.data, **({key_field: saga.key} if carries_key else {})}))
    except InvalidPayload as error:
        raise BadRequest(f"data does not fit {event.TYPE}: {error}") from None
    try:  # the schema may read text into a value nothing can store ("1" * 25 for an int)
        check_json(read, "data")
    except ValueError as error:
        raise BadRequest(f"data does not fit {event.TYPE}: {error}") from None
    # The rule every reply obeys: the start event's fields stay as they started unless the
    # workflow lets this event update them. An operator is told, not silently ignored.
    fixed = workflow.fixed_fields(event.TYPE) - {key_field}
    changed = sorted(n for n in fixed if n in action.data and n in read and read[n] != saga.data.get(n))
    if changed:
        raise BadRequest(
            f"data would change {', '.join(changed)}, fixed since the saga started:"
            f" the workflow does not let {event.TYPE} update them"
        )
