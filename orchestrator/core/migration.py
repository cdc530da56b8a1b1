"""Moving a saga between releases of its workflow: an operator's decision, made by a pure function
so that the journal entry it writes replays to the same saga.

Two such moves exist: a **migration**, where an operator maps the saga's state in its release to
a state of another release of the same workflow (``orchestrator sagas migrate``, ``POST
/workflows/{name}/migrations``), and a **dropped release**, where ``orchestrator run
--fail-dropped-releases`` fails the sagas of a release it no longer loads. Neither is a message
``decide`` takes: its entry records what the operator asked, and replay applies it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from orchestrator.core.definitions import FINISHED, Status
from orchestrator.core.engine import Deadline, Decision, Incoming, Outcome, SagaSnapshot
from orchestrator.core.machine import CompiledWorkflow

__all__ = ["DROPPED", "MIGRATE", "MigrationRefused", "drop_release", "migrate", "migration_message"]

#: the journal's message type for a migration between releases
MIGRATE = "operator.migrate"
#: the journal's message type for a saga failed because its release was dropped
DROPPED = "operator.release-dropped"

_MOVABLE = frozenset({Status.RUNNING, Status.COMPENSATING, Status.FAILED})


class MigrationRefused(ValueError):
    """This saga cannot be moved as asked; the message says why (the rest of a migration goes on)."""


def migration_message(
    message_id: str, from_release: str, to_release: str, states: Mapping[str, str], actor: str | None
) -> Incoming:
    payload = {"from_release": from_release, "to_release": to_release, "states": dict(states)}
    return Incoming(MIGRATE, message_id, payload, kind="operator", actor=actor)


def target_state(target: CompiledWorkflow, saga: SagaSnapshot, states: Mapping[str, str]) -> str:
    """Where the saga lands: its state as mapped, or the same name where the target has it."""
    mapped = states.get(saga.state, saga.state)
    spec = target.workflow.states.get(mapped)
    if spec is None:
        how = "is mapped to" if saga.state in states else "has no mapping, and"
        raise MigrationRefused(
            f"state {saga.state!r} {how} {mapped!r}, not a state of release"
            f" {target.workflow.release} of {target.workflow.name}"
        )
    if spec.final:
        raise MigrationRefused(f"{mapped!r} is a final state: a migration leaves a saga in flight")
    return mapped


def migrate(target: CompiledWorkflow, saga: SagaSnapshot, message: Incoming, now: datetime) -> Decision:
    """The saga on ``target``'s release, in the state ``message`` maps its state to.

    Nothing is sent: the participants already hold what the saga sent in its old state, and
    ``awaiting`` keeps those commands (a retry of the new state sends them again, with their
    ids). The new state's deadline runs from now; a pending retry is cancelled. A failed saga
    stays failed, in the mapped state, for an operator to ``resume`` there. Steps given up on
    that the target does not have are forgotten (a late success for them is ignored)."""
    workflow = target.workflow
    payload = message.payload
    if saga.workflow != workflow.name:
        raise MigrationRefused(f"a {saga.workflow} saga cannot move to workflow {workflow.name}")
    if saga.release != payload["from_release"]:
        raise MigrationRefused(f"the saga is on release {saga.release}, not {payload['from_release']}")
    if saga.status not in _MOVABLE:
        raise MigrationRefused(f"the saga is {saga.status}: only sagas in flight or failed move")
    if workflow.release != payload["to_release"]:
        raise MigrationRefused(f"target is release {workflow.release}, not {payload['to_release']}")
    state = target_state(target, saga, payload["states"])
    spec = workflow.states[state]
    status = Status.FAILED if saga.status is Status.FAILED else spec.status
    moved = SagaSnapshot(
        **{
            **saga.__dict__,
            "state": state,
            "status": status,
            "release": workflow.release,
            "version": saga.version + 1,
            "updated_at": now,
            "attempt": 0,
            # a step of a parallel group is no state, but its late success is still undone
            "timed_out": tuple(s for s in saga.timed_out if s in workflow.states or s in workflow.grouped),
        }
    )
    deadline = None
    try:
        due = spec.due(now, moved.data) if status is not Status.FAILED else None
    except ValueError as error:  # a wait until a time the saga's data does not hold
        raise MigrationRefused(str(error)) from None
    if due is not None:
        deadline = Deadline(state, due)
    return Decision(
        moved,
        Outcome.MIGRATED,
        saga.state,
        deadline=deadline,
        deadline_changed=True,
        retry_changed=True,
        reason=f"migrated from release {saga.release} ({saga.state}) to release {workflow.release} ({state})",
    )


def drop_release(saga: SagaSnapshot, message: Incoming, now: datetime) -> Decision:
    """The saga failed because its release is no longer loaded (``run --fail-dropped-releases``)."""
    reason = str(message.payload.get("reason", f"release {saga.release} of {saga.workflow} was dropped"))
    if saga.status in FINISHED:
        return Decision(saga, Outcome.IGNORED, saga.state, reason=f"saga is already {saga.status}")
    failed = SagaSnapshot(
        **{
            **saga.__dict__,
            "status": Status.FAILED,
            "last_error": reason,
            "version": saga.version + 1,
            "updated_at": now,
        }
    )
    return Decision(
        failed, Outcome.FAILED, saga.state, deadline_changed=True, retry_changed=True, reason=reason
    )
