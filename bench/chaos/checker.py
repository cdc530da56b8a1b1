"""What a chaos run must show, judged from evidence alone: the journal, the wire, the CLI.

Pure: the runner collects an ``Evidence`` (tables read, tap drained, ``orchestrator verify`` run)
and ``check`` judges it, so the unit tests can hand it evidence of a bug and see it fail. Every
check says how many cases it found and shows a few, because "3 sagas lost" is only useful with
the saga ids.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.core.engine import saga_id_for

__all__ = ["Check", "Command", "Entry", "Evidence", "SagaRow", "Wire", "check", "reply_id"]

FINAL = frozenset({"completed", "compensated", "failed"})
EXAMPLES = 5


@dataclass(frozen=True)
class SagaRow:
    id: str
    key: str
    status: str
    state: str


@dataclass(frozen=True)
class Command:
    type: str
    message_id: str


@dataclass(frozen=True)
class Entry:
    """One journal row, reduced to what the checks read."""

    saga_id: str
    seq: int
    kind: str
    message_type: str
    message_id: str
    outcome: str
    commands: tuple[Command, ...] = ()


@dataclass(frozen=True)
class Wire:
    """One message the tap saw: ``exchange`` is ``commands`` or ``events`` (namespace cut off);
    ``key`` is the start event's business key, read from its body, else None."""

    exchange: str
    type: str
    message_id: str
    correlation_id: str | None
    key: str | None = None


@dataclass
class Evidence:
    workflow: str
    #: the business keys whose start event the broker confirmed
    published: set[str]
    sagas: list[SagaRow]
    journal: list[Entry]
    wire: list[Wire]
    #: command type -> the reply types a participant may answer it with
    replies: dict[str, tuple[str, ...]]
    #: success reply type -> (its undo command type, that undo's reply type)
    undo: dict[str, tuple[str, str]]
    #: the statuses the scenario means to reach; any other final status is a finding
    expected: frozenset[str] = frozenset({"completed", "compensated"})
    outbox_left: int = 0
    verify_exit: int | None = None
    verify_output: str = ""
    #: the dead-letter table's rows, described: the suite sends nothing a participant or the
    #: orchestrator should refuse, so any row is a message that went nowhere
    dead_letters: list[str] = field(default_factory=list)
    #: processes (replicas, responders) that exited when no fault stopped them
    crashes: list[str] = field(default_factory=list)
    #: known orchestrator bugs by check name: the check still fails, the report names the bug
    known: dict[str, str] = field(default_factory=dict)


@dataclass
class Check:
    name: str
    what: str
    found: int
    examples: list[str]
    known_bug: str | None = None

    @property
    def ok(self) -> bool:
        return self.found == 0


def reply_id(command_id: str, reply_type: str) -> str:
    """The reply's message id a participant derives from its command (docs/protocol.md, 6)."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{command_id}:{reply_type}"))


def _check(name: str, what: str, cases: Iterable[str]) -> Check:
    listed = list(cases)
    return Check(name, what, len(listed), listed[:EXAMPLES])


def check(evidence: Evidence) -> list[Check]:
    """Every check, in the order the report shows them."""
    e = evidence
    by_id = {s.id: s for s in e.sagas}
    journal: dict[str, list[Entry]] = defaultdict(list)
    for entry in e.journal:
        journal[entry.saga_id].append(entry)
    commands_journaled = {c.message_id: (x.saga_id, c) for x in e.journal for c in x.commands}
    taken = {x.message_id for x in e.journal}
    sent_on_wire = {w.message_id for w in e.wire if w.exchange == "commands"}

    results = [
        _check(
            "final",
            "every saga reached a final status",
            (f"{s.id} ({s.key}) is {s.status} in {s.state}" for s in e.sagas if s.status not in FINAL),
        ),
        _check(
            "expected_outcome",
            f"every final status is one the scenario means ({', '.join(sorted(e.expected))})",
            (
                f"{s.id} ({s.key}) ended {s.status} in {s.state}"
                for s in e.sagas
                if s.status in FINAL and s.status not in e.expected
            ),
        ),
        _check("none_lost", "every start the broker confirmed has a saga", _lost(e, by_id)),
        _check("decided_once", "no message id is decided (journaled) twice", _twice(e.journal)),
        _check(
            "one_id_per_step",
            "no command is sent under two message ids for one step",
            _two_ids(e, commands_journaled),
        ),
        _check(
            "undone",
            "every success of a compensated saga was undone and the undo answered",
            _not_undone(e, by_id, journal),
        ),
        _check(
            "answered",
            "every command the journal sent has its reply journaled",
            _unanswered(e, commands_journaled, taken),
        ),
        _check(
            "on_the_wire",
            "every command the journal sent reached the broker",
            (
                f"{saga} {c.type} {c.message_id}"
                for mid, (saga, c) in sorted(commands_journaled.items())
                if mid not in sent_on_wire
            ),
        ),
        _check(
            "outbox_empty", "the outbox is empty at the end", [f"{e.outbox_left} rows"] * bool(e.outbox_left)
        ),
        _check(
            "verify",
            "`orchestrator verify` finds every saga as its journal says",
            [] if e.verify_exit == 0 else [f"exit {e.verify_exit}: {_tail(e.verify_output)}"],
        ),
        _check("no_dead_letters", "nothing was dead-lettered", e.dead_letters),
        _check("no_crash", "no replica or participant exited without a fault stopping it", e.crashes),
    ]
    for result in results:
        if result.name in e.known and not result.ok:
            result.known_bug = e.known[result.name]
    return results


def _lost(e: Evidence, by_id: dict[str, SagaRow]) -> Iterable[str]:
    starts_seen = {w.key for w in e.wire if w.key is not None}
    for key in sorted(e.published | starts_seen):
        if saga_id_for(e.workflow, key) not in by_id:
            where = "confirmed" if key in e.published else "seen on the wire"
            yield f"start {key} ({where}) has no saga {saga_id_for(e.workflow, key)}"


def _twice(journal: list[Entry]) -> Iterable[str]:
    seen: dict[str, list[Entry]] = defaultdict(list)
    for entry in journal:
        seen[entry.message_id].append(entry)
    for message_id, entries in sorted(seen.items()):
        if len(entries) > 1:
            where = ", ".join(f"{x.saga_id}#{x.seq} {x.outcome}" for x in entries)
            yield f"{entries[0].message_type} {message_id} decided {len(entries)} times: {where}"


def _two_ids(e: Evidence, commands_journaled: dict[str, tuple[str, Command]]) -> Iterable[str]:
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for mid, (saga, c) in commands_journaled.items():
        ids[saga, c.type].add(mid)
    for w in e.wire:
        if w.exchange == "commands" and w.correlation_id is not None:
            ids[w.correlation_id, w.type].add(w.message_id)
    for (saga, type_), found in sorted(ids.items()):
        if len(found) > 1:
            yield f"{saga} {type_} sent as {', '.join(sorted(found))}"


def _not_undone(e: Evidence, by_id: dict[str, SagaRow], journal: dict[str, list[Entry]]) -> Iterable[str]:
    successes: dict[str, set[str]] = defaultdict(set)
    for saga_id, entries in journal.items():
        successes[saga_id].update(x.message_type for x in entries if x.message_type in e.undo)
    for w in e.wire:  # a success on the wire counts even if the journal never took it
        if w.exchange == "events" and w.type in e.undo and w.correlation_id is not None:
            successes[w.correlation_id].add(w.type)
    for saga_id, types in sorted(successes.items()):
        saga = by_id.get(saga_id)
        if saga is None or saga.status != "compensated":
            continue
        entries = journal.get(saga_id, [])
        sent = {c.type for x in entries for c in x.commands}
        answered = {x.message_type for x in entries}
        for success in sorted(types):
            undo, undone = e.undo[success]
            if undo not in sent:
                yield f"{saga_id} ({saga.key}): {success} taken, {undo} never sent"
            elif undone not in answered:
                yield f"{saga_id} ({saga.key}): {undo} sent, {undone} never taken"


def _unanswered(
    e: Evidence, commands_journaled: dict[str, tuple[str, Command]], taken: set[str]
) -> Iterable[str]:
    for mid, (saga, c) in sorted(commands_journaled.items()):
        if not any(reply_id(mid, r) in taken for r in e.replies.get(c.type, ())):
            yield f"{saga} {c.type} {mid}: no reply journaled"


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])
