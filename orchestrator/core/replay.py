"""Rebuild a saga from its journal through its definition: the proof that the row can be trusted.

Pure: the journal holds every message with the time it was decided, so feeding it through
``decide`` again must give back the saga row exactly, and the timers it left pending. The journal
also records every command sent, with its payload: deciding each entry again must send the same
ones (else the workflow is not the one that wrote the journal, or it is not deterministic), and
each unsent command (an outbox row) must be one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from orchestrator.core.branches import deadline_kind, retry_kind
from orchestrator.core.engine import Deadline, IdKeyMissing, OutgoingCommand, SagaSnapshot, decide
from orchestrator.core.ids import VERSIONED
from orchestrator.core.ingress import Refused
from orchestrator.core.journal import DueDeadline, JournalEntry, Records
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.migration import DROPPED, MIGRATE, drop_release, migrate

__all__ = [
    "Rebuilt",
    "command_differences",
    "differences",
    "outbox_differences",
    "rebuild",
    "replay",
    "timer_differences",
    "verify",
]

#: the kinds of timer a saga has, at most one row of each
TIMER_KINDS = ("deadline", "retry")


@dataclass(frozen=True)
class Rebuilt:
    """What a journal gives: the saga, and its pending timers by kind, each with the saga's
    version that set it (as its row in ``deadlines`` holds it)."""

    saga: SagaSnapshot | None
    timers: dict[str, tuple[Deadline, int]] = field(default_factory=dict)
    #: the commands deciding each journal entry again sends, entry by entry in the journal's order
    commands: tuple[tuple[OutgoingCommand, ...], ...] = ()
    #: what deciding each entry again gives, entry by entry, as its journal summary says it:
    #: ``(outcome, to, status)``, for the dry run to compare with what the entry records
    decided: tuple[tuple[str, str, str], ...] = ()


#: the definition of a release of the saga's workflow, by release (None: not loaded)
Releases = Callable[[str], CompiledWorkflow | None]


class ReleaseNotLoaded(LookupError):
    """The journal names a release of the workflow that is not loaded: it cannot be replayed."""


def _start_release(entries: Sequence[JournalEntry]) -> str:
    """The release the saga started on: its first entry says (before releases existed: ``1``)."""
    return str(entries[0].decision.get("release", "1")) if entries else "1"


def rebuild(
    compiled: CompiledWorkflow, entries: Sequence[JournalEntry], releases: Releases | None = None
) -> Rebuilt:
    """The saga its journal gives, and its timers. Every journaled message was taken when it came,
    so none is refused for the parking cap now. A closing entry journaled before closing sagas
    dropped their parked events (its summary has no ``dropped_parked``) keeps them, as its row did.
    An entry journaled before only declared fields entered a saga's data (its summary has no
    ``merged``) is decided as it was then: its payload merged whole, its key not compared. One
    journaled before the rules for operators and late confirmations (no ``operators``) is decided
    as it was then: see ``decide``'s ``before_operators``.

    Timers as the store writes them (``Changes.record``): a decision that changes a kind sets or
    cancels it, and a timer that fired is removed unless the decision it gave set it anew.

    ``releases`` gives the definition of each release of the workflow: the journal is replayed
    through the release the saga started on, and, after a migration entry, the release it moved
    to (:class:`ReleaseNotLoaded` if one is not given). Without it, ``compiled`` decides it all."""
    if releases is not None and entries:
        first = releases(_start_release(entries))
        if first is None:
            raise ReleaseNotLoaded(f"release {_start_release(entries)} is not loaded")
        compiled = first
    saga: SagaSnapshot | None = None
    timers: dict[str, tuple[Deadline, int]] = {}
    sent: list[tuple[OutgoingCommand, ...]] = []
    decided: list[tuple[str, str, str]] = []
    for entry in entries:
        before_declared = "merged" not in entry.decision
        if entry.message.type == MIGRATE and saga is not None:
            to_release = str(entry.message.payload["to_release"])
            target = releases(to_release) if releases is not None else None
            if target is None:
                raise ReleaseNotLoaded(f"release {to_release} (migrated to) is not loaded")
            compiled = target
            decision = migrate(compiled, saga, entry.message, entry.recorded_at)
        elif entry.message.type == DROPPED and saga is not None:
            decision = drop_release(saga, entry.message, entry.recorded_at)
        else:
            decision = decide(
                compiled,
                saga,
                entry.message,
                entry.recorded_at,
                replaying=True,
                merge_all=before_declared,
                before_operators="operators" not in entry.decision,
                late_merge=entry.decision.get("operators", 0) >= 3,
                ids=entry.decision.get("ids", VERSIONED),
                cancels="cancel" in entry.decision,
                awaited_undo=entry.decision.get("operators", 0) >= 4,
            )
        if decision.dropped_parked and saga is not None and "dropped_parked" not in entry.decision:
            kept = set(decision.dropped_parked)
            parked = tuple(p for p in saga.parked if p["message_id"] in kept)
            saga = replace(decision.saga, parked=parked)
        else:
            saga = decision.saga
        sent.append(decision.commands)
        decided.append((str(decision.outcome), decision.saga.state, str(decision.saga.status)))
        changed = {"deadline": decision.deadline_changed, "retry": decision.retry_changed}
        for kind, timer in (("deadline", decision.deadline), ("retry", decision.retry)):
            if changed[kind]:
                if timer is None:
                    timers.pop(kind, None)
                else:
                    timers[kind] = (timer, saga.version)
        for kind, timer in decision.timers:  # a branch's (orchestrator.core.branches)
            if timer is None:
                timers.pop(kind, None)
            else:
                timers[kind] = (timer, saga.version)
        fired = entry.message.kind
        branch = entry.message.payload.get("branch") if fired in TIMER_KINDS else None
        if branch is not None:
            row = deadline_kind(str(branch)) if fired == "deadline" else retry_kind(str(branch))
            if row not in dict(decision.timers):
                timers.pop(row, None)
        elif fired in TIMER_KINDS and not changed[fired]:
            timers.pop(fired, None)
    return Rebuilt(saga, timers, tuple(sent), tuple(decided))


def replay(
    compiled: CompiledWorkflow, entries: Sequence[JournalEntry], releases: Releases | None = None
) -> SagaSnapshot | None:
    """The saga its journal gives (:func:`rebuild` without the timers)."""
    return rebuild(compiled, entries, releases).saga


def differences(row: SagaSnapshot | None, rebuilt: SagaSnapshot | None) -> list[str]:
    """Field by field, what the journal says and the row does not."""
    if row is None or rebuilt is None:
        return [] if row is rebuilt else [f"row {row!r} but journal rebuilds {rebuilt!r}"]
    found = []
    for field_ in fields(SagaSnapshot):
        mine, theirs = getattr(row, field_.name), getattr(rebuilt, field_.name)
        if field_.name == "parked":
            mine, theirs = list(mine), list(theirs)
        if mine != theirs:
            found.append(f"{field_.name}: row has {mine!r}, journal gives {theirs!r}")
    return found


def _timer(state: str, due_at: Any, version: int) -> str:
    return f"{state} due {due_at.isoformat()} (version {version})"


def timer_differences(rows: Iterable[DueDeadline], implied: Mapping[str, tuple[Deadline, int]]) -> list[str]:
    """Kind by kind, the pending timer rows that are not what the journal leaves pending."""
    held = {row.kind: row for row in rows}
    found = []
    for kind in sorted(set(TIMER_KINDS) | set(held) | set(implied)):
        row, pending = held.get(kind), implied.get(kind)
        mine = row and _timer(row.state, row.due_at, row.version)
        theirs = pending and _timer(pending[0].state, pending[0].due_at, pending[1])
        if mine != theirs:
            found.append(f"timer {kind}: row has {mine or 'none'}, journal gives {theirs or 'none'}")
    return found


_UNRECORDED = object()


def _described(type_: str, payload: Any) -> str:
    return f"{type_} {'(payload not recorded)' if payload is _UNRECORDED else repr(payload)}"


def command_differences(
    entries: Sequence[JournalEntry], produced: Sequence[Sequence[OutgoingCommand]]
) -> list[str]:
    """Entry by entry, the commands the journal records that deciding the entry again (``produced``,
    :attr:`Rebuilt.commands`) does not send with the same message id, type and payload, and the
    ones it sends that the journal does not record. A row can match its journal while what was
    sent does not: a builder changed since (a field added, an amount computed anew) leaves state
    and data alone. Message ids follow the saga's version and the command's place, so a command
    is matched by its id. An entry journaled before commands' payloads were recorded (no
    ``payload``) is compared by id and type only."""
    found = []
    for entry, commands in zip(entries, produced, strict=True):
        recorded = {
            c["message_id"]: (c["type"], c.get("payload", _UNRECORDED))
            for c in entry.decision.get("commands") or []
        }
        now = {c.message_id: (c.type, dict(c.payload)) for c in commands}
        # where each went: a participant (None) or another saga (orchestrator.core.children)
        routes = {c["message_id"]: c.get("route") for c in entry.decision.get("commands") or []}
        routed = {c.message_id: c.route for c in commands}
        for message_id in dict.fromkeys([*recorded, *now]):
            was, sends = recorded.get(message_id), now.get(message_id)
            where = f"journal #{entry.seq} ({entry.message.type}): command {message_id}:"
            if was is None and sends is not None:
                found.append(f"{where} the workflow now sends {_described(*sends)}, the journal records none")
            elif sends is None and was is not None:
                found.append(f"{where} recorded {_described(*was)} but the workflow now sends none")
            elif was is not None and sends is not None:
                (was_type, was_payload), (type_, payload) = was, sends
                if was_type != type_:
                    found.append(
                        f"{where} recorded {_described(*was)} but the workflow now sends {_described(*sends)}"
                    )
                elif was_payload is not _UNRECORDED and was_payload != payload:
                    found.append(
                        f"{where} recorded {_described(*was)} but the workflow now sends {payload!r}"
                    )
                elif routes.get(message_id) != routed.get(message_id):
                    found.append(
                        f"{where} recorded to {routes.get(message_id) or 'a participant'} but the workflow"
                        f" now sends it to {routed.get(message_id) or 'a participant'}"
                    )
    return found


def outbox_differences(
    rows: Iterable[OutgoingCommand], saga: SagaSnapshot, entries: Sequence[JournalEntry]
) -> list[str]:
    """The outbox rows that are not a command the journal records as sent by this saga, with the
    same message id, type and payload. A journaled command missing from the outbox was sent (the
    relay removes what the broker confirmed): that is no difference. An entry journaled before
    commands' payloads were recorded (no ``payload``) is compared by id and type only."""
    journaled: dict[str, list[tuple[str, Any]]] = {}
    routes: dict[str, str | None] = {}
    for entry in entries:
        for command in entry.decision.get("commands") or []:
            journaled.setdefault(command["message_id"], []).append(
                (command["type"], command.get("payload", _UNRECORDED))
            )
            routes[command["message_id"]] = command.get("route")
    found = []
    for row in rows:
        described = f"{row.message_id} {row.type} {dict(row.payload)!r}"
        if row.workflow != saga.workflow:
            found.append(f"outbox {described}: of workflow {row.workflow!r}, the saga's is {saga.workflow!r}")
            continue
        recorded = journaled.get(row.message_id)
        if not recorded:
            found.append(f"outbox {described}: the journal records no command {row.message_id}")
            continue
        if routes.get(row.message_id) != row.route:
            found.append(
                f"outbox {described}: routed {row.route!r}, the journal {routes.get(row.message_id)!r}"
            )
            continue
        if any(t == row.type and (p is _UNRECORDED or p == dict(row.payload)) for t, p in recorded):
            continue
        said = "; ".join(dict.fromkeys(_described(t, p) for t, p in recorded))  # a retry journals it again
        found.append(f"outbox {described}: the journal records {said}")
    return found


def verify(compiled: CompiledWorkflow, records: Records, releases: Releases | None = None) -> list[str]:
    """All that a saga's records hold and its journal does not imply: the row field by field, its
    pending timers, the commands each entry records against those ``compiled`` sends deciding it
    again, and its outbox rows (``orchestrator verify``, the test kit). ``releases``: as for
    :func:`rebuild`; a release the journal needs and that is not loaded is a difference, and so
    is a journal entry the loaded definition cannot upcast (an upcaster removed, or raising on
    it): one difference, not a crash of the whole verify."""
    try:
        rebuilt = rebuild(compiled, records.journal, releases)
    except (ReleaseNotLoaded, IdKeyMissing) as error:
        return [f"journal not replayed: {error}"]
    except Refused as refused:
        return [f"the journal cannot be replayed: {refused}"]
    found = differences(records.saga, rebuilt.saga)
    found += timer_differences(records.timers, rebuilt.timers)
    found += command_differences(records.journal, rebuilt.commands)
    if records.saga is not None:
        found += outbox_differences(records.outbox, records.saga, records.journal)
    return found
