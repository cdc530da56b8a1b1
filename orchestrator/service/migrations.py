"""An operator moves sagas from one release of their workflow to another, with an explicit state
mapping: a dry run first (what would move where, and what cannot), then the same with ``apply``.

Each saga moves in its own right: locked, decided by the pure :func:`orchestrator.core.migration
.migrate`, journaled as an ``operator.migrate`` entry that ``verify`` replays; one that cannot
move (a state with no place in the target, a saga finished meanwhile) is reported and left as
it is, and the others go on. Sagas move in small transactions, so a migration of many does not
hold the hot path's locks for long.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from orchestrator.core.engine import Decision, Incoming, OutgoingCommand, SagaSnapshot
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.migration import MigrationRefused, migrate, migration_message
from orchestrator.core.routing import Registry
from orchestrator.service.operations import BadRequest
from orchestrator.service.store import Changes, Store

__all__ = ["MigrationReport", "Moved", "migrate_sagas"]

#: sagas moved per transaction
BATCH = 200


@dataclass(frozen=True)
class Moved:
    """One saga in a migration: where it was, where it goes (or why it cannot)."""

    saga_id: str
    key: str
    from_state: str
    to_state: str | None
    status: str
    refused: str | None = None


@dataclass
class MigrationReport:
    applied: bool
    sagas: list[Moved] = field(default_factory=list)
    #: more sagas than the page's limit: ask again with ``after`` this (None: that was all)
    next_after: str | None = None
    #: what moving them sends: nothing today (a migration keeps what the saga waits on)
    commands: list[OutgoingCommand] = field(default_factory=list)
    #: the decisions committed (none in a dry run): their timers, for the alarm
    decisions: list[Decision] = field(default_factory=list)

    @property
    def moved(self) -> int:
        return sum(1 for s in self.sagas if s.refused is None)

    @property
    def refused(self) -> int:
        return sum(1 for s in self.sagas if s.refused is not None)


def _check_plan(
    registry: Registry, workflow: str, from_release: str, to_release: str, states: Mapping[str, str]
) -> None:
    """A plan that cannot be right for any saga is bad input, refused before any saga is read."""
    if workflow not in registry.workflows:
        raise BadRequest(f"unknown workflow {workflow!r}; known: {', '.join(sorted(registry.workflows))}")
    if from_release == to_release:
        raise BadRequest(f"the sagas are on release {from_release} already")
    target = registry.releases.get((workflow, to_release))
    if target is None:
        loaded = ", ".join(sorted(r for w, r in registry.releases if w == workflow))
        raise BadRequest(f"release {to_release} of {workflow} is not loaded here (loaded: {loaded})")
    source = registry.releases.get((workflow, from_release))
    for old, new in states.items():
        if source is not None and old not in source.workflow.states:
            raise BadRequest(f"{old!r} is not a state of release {from_release} of {workflow}")
        spec = target.workflow.states.get(new)
        if spec is None:
            raise BadRequest(f"{new!r} is not a state of release {to_release} of {workflow}")
        if spec.final:
            raise BadRequest(f"{new!r} is a final state: a migration leaves a saga in flight")


async def migrate_sagas(
    registry: Registry,
    store: Store,
    workflow: str,
    from_release: str,
    to_release: str,
    states: Mapping[str, str],
    *,
    actor: str,
    now: datetime,
    apply: bool = False,
    saga_ids: Sequence[str] | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> MigrationReport:
    """Move the sagas in flight or failed on ``from_release`` (or those of ``saga_ids``) to
    ``to_release``, each state mapped by ``states`` (a state the target has keeps its name
    unless mapped). Without ``apply`` nothing is written and nothing is locked: the report says
    what would happen. ``limit``: at most that many sagas, in id order after ``after`` (a page;
    the report's ``next_after`` is where the next one starts)."""
    _check_plan(registry, workflow, from_release, to_release, states)
    target = registry.releases[(workflow, to_release)]
    report = MigrationReport(applied=apply)
    if saga_ids is not None:
        ids = list(saga_ids)
    else:
        ids = await store.movable(workflow, from_release, after, None if limit is None else limit + 1)
        if limit is not None and len(ids) > limit:
            ids = ids[:limit]
            report.next_after = ids[-1]

    def message() -> Incoming:
        return migration_message(f"migrate:{uuid.uuid4()}", from_release, to_release, states, actor)

    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        if not apply:  # a dry run reads without locks: the hot path never waits for it
            _decide(report, target, await store.get_sagas(chunk), chunk, message, now)
            continue
        changes = Changes()
        async with store.transaction() as tx:
            moves = _decide(report, target, await tx.lock_sagas(chunk), chunk, message, now)
            for incoming, decision in moves:
                changes.record(incoming, decision, now)
                report.decisions.append(decision)
            if changes:
                await tx.save(changes)
        report.commands.extend(changes.commands)
    return report


def _decide(
    report: MigrationReport,
    target: CompiledWorkflow,
    current: Mapping[str, SagaSnapshot],
    chunk: Sequence[str],
    message: Callable[[], Incoming],
    now: datetime,
) -> list[tuple[Incoming, Decision]]:
    """Where each saga of ``chunk`` goes (or why it cannot), added to ``report``; the moves, for
    an applied migration to record (a dry run writes them nowhere)."""
    moves = []
    for saga_id in chunk:
        saga = current.get(saga_id)
        if saga is None:
            report.sagas.append(Moved(saga_id, "", "", None, "", "no such saga"))
            continue
        incoming = message()
        try:
            decision = migrate(target, saga, incoming, now)
        except MigrationRefused as refused:
            report.sagas.append(Moved(saga.id, saga.key, saga.state, None, str(saga.status), str(refused)))
            continue
        report.sagas.append(
            Moved(saga.id, saga.key, saga.state, decision.saga.state, str(decision.saga.status))
        )
        moves.append((incoming, decision))
    return moves
