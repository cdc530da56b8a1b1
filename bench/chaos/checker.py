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

from orchestrator.core.children import started_workflow
from orchestrator.core.engine import saga_id_for

__all__ = [
    "Check",
    "Command",
    "Effects",
    "Entry",
    "Evidence",
    "LedgerRow",
    "Move",
    "SagaRow",
    "Wire",
    "check",
    "check_effects",
    "reply_id",
]

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
    #: set on a message the orchestrator sends itself (a child saga's start, outcome or cancel):
    #: it goes into its own queue, never to the tapped exchanges
    route: str | None = None


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


@dataclass(frozen=True)
class LedgerRow:
    """A row of ``payment.ledger``: ``kind`` is ``charge`` or ``refund``."""

    order_id: str
    kind: str
    amount_cents: int


@dataclass(frozen=True)
class Move:
    """A row of ``inventory.stock_moves``: ``kind`` is ``reserve`` or ``release``."""

    order_id: str
    sku: str
    delta: int
    kind: str


@dataclass
class Effects:
    """What the participants did, from their own tables (the kit's example services), and what
    each order asked for: the journal says what the orchestrator decided, these say what a
    customer would see, and a command carried out twice shows only here."""

    ledger: list[LedgerRow]
    moves: list[Move]
    #: ``shipping.shipments``, one order id per row
    shipments: list[str]
    #: ``inventory.stock``: SKU -> units on hand at the end
    stock: dict[str, int]
    #: what every SKU had before the run (the example inventory's INITIAL_STOCK)
    initial_stock: int
    #: order key -> SKU -> units, as its start event asked
    lines: dict[str, dict[str, int]]
    #: order key -> the amount its start event asked to charge
    amounts: dict[str, int]


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
    #: the participants' business tables, when they keep any (``--participants kit``)
    effects: Effects | None = None
    #: with ``ha``: the ERROR lines and tracebacks the replicas and participants logged; every
    #: fault of that scenario is one the service rides out, so there must be none
    log_errors: list[str] | None = None


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
    by_key: dict[tuple[str, str], SagaRow] = {}
    for saga in e.sagas:
        by_key[saga.id, saga.key] = saga

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
                if mid not in sent_on_wire and c.route is None
            ),
        ),
        _check(
            "children_once",
            "every child saga a step started exists, was started once, by that start, and ended as"
            " its parent needs",
            _children(e, by_id, journal),
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
    if e.log_errors is not None:
        results.append(
            _check("no_error_logged", "no ERROR line or traceback for a fault ridden out", e.log_errors)
        )
    if e.effects is not None:
        results += check_effects(e.effects, {s.key: s.status for s in e.sagas})
    for result in results:
        if result.name in e.known and not result.ok:
            result.known_bug = e.known[result.name]
    return results


def check_effects(effects: Effects, status: dict[str, str]) -> list[Check]:
    """The business effects, order by order (``status``: saga key -> final status).

    A redelivered command that a participant carried out again, or an undo that ran twice or not
    at all, leaves the journal looking right and only shows in these tables. Orders that ended
    neither completed nor compensated are judged only where their status does not matter (at
    most one charge, no SKU reserved twice): ``expected_outcome`` already names them."""
    charges: dict[str, list[int]] = defaultdict(list)
    refunds: dict[str, list[int]] = defaultdict(list)
    for row in effects.ledger:
        (charges if row.kind == "charge" else refunds)[row.order_id].append(row.amount_cents)
    reserves: dict[tuple[str, str], int] = defaultdict(int)
    net: dict[str, int] = defaultdict(int)
    for move in effects.moves:
        if move.kind == "reserve":
            reserves[move.order_id, move.sku] += 1
        net[move.order_id] += move.delta
    shipped: dict[str, int] = defaultdict(int)
    for order_id in effects.shipments:
        shipped[order_id] += 1
    orders = sorted(set(status) | set(charges) | set(refunds) | set(net) | set(shipped))

    def described(order: str) -> str:
        return f"{order} ({status.get(order, 'no saga')})"

    def charged_once() -> Iterable[str]:
        for order in orders:
            if len(charges[order]) > 1:
                yield f"{described(order)} charged {len(charges[order])} times: {charges[order]}"
            elif status.get(order) == "completed" and charges[order] != [effects.amounts.get(order)]:
                yield f"{described(order)} charged {charges[order]}, asked {effects.amounts.get(order)}"

    def refunded() -> Iterable[str]:
        for order in orders:
            state = status.get(order)
            if state == "compensated" and sorted(refunds[order]) != sorted(charges[order]):
                yield f"{described(order)}: charged {charges[order]}, refunded {refunds[order]}"
            elif state != "compensated" and refunds[order]:
                yield f"{described(order)}: refunded {refunds[order]}, charged {charges[order]}"

    def reserved_once() -> Iterable[str]:
        for (order, sku), count in sorted(reserves.items()):
            if count > 1:
                yield f"{described(order)} reserved {sku} {count} times"

    def moves_net() -> Iterable[str]:
        for order in orders:
            state = status.get(order)
            units = sum(effects.lines.get(order, {}).values())
            if state == "completed" and net[order] != -units:
                yield f"{described(order)} holds {-net[order]} units, asked {units}"
            elif state == "compensated" and net[order] != 0:
                yield f"{described(order)} still holds {-net[order]} units"

    def shipped_once() -> Iterable[str]:
        for order in orders:
            if shipped[order] != (1 if status.get(order) == "completed" else 0):
                yield f"{described(order)} shipped {shipped[order]} times"

    def on_hand() -> Iterable[str]:
        taken: dict[str, int] = defaultdict(int)
        for order, state in status.items():
            if state == "completed":
                for sku, units in effects.lines.get(order, {}).items():
                    taken[sku] += units
        for sku in sorted(set(effects.stock) | set(taken)):
            want = effects.initial_stock - taken[sku]
            if effects.stock.get(sku, effects.initial_stock) != want:
                took = f"completed orders took {taken[sku]}"
                yield f"{sku}: {effects.stock.get(sku)} on hand, {want} expected ({took})"

    return [
        _check(
            "charged_once",
            "no order charged twice; every completed order charged once, its amount",
            charged_once(),
        ),
        _check(
            "refunded_once",
            "every charge of a compensated order refunded exactly once, for its amount; no other refund",
            refunded(),
        ),
        _check("reserved_once", "no order reserved one SKU twice", reserved_once()),
        _check(
            "stock_moves",
            "a compensated order's stock moves sum to zero, a completed order's to minus its units",
            moves_net(),
        ),
        _check("shipped_once", "one shipment per completed order, none for any other", shipped_once()),
        _check(
            "stock_on_hand", "every SKU's stock is its initial less the completed orders' units", on_hand()
        ),
    ]


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


def _children(e: Evidence, by_id: dict[str, SagaRow], journal: dict[str, list[Entry]]) -> Iterable[str]:
    """Each child start a parent journaled has its saga, whose first entry took that very start
    and which took no other start; a completed parent's child completed, a compensated one's
    did not stay completed (it was compensated, or it failed the step: then it is a finding of
    ``final``)."""
    for saga_id, entries in sorted(journal.items()):
        parent = by_id.get(saga_id)
        for c, route in ((c, c.route) for x in entries for c in x.commands if c.route):
            if not route.startswith("start:"):
                continue
            workflow, _ = started_workflow(route.removeprefix("start:"))
            child_id = saga_id_for(workflow, parent.key) if parent is not None else None
            child = by_id.get(child_id or "")
            taken = journal.get(child_id or "", [])
            starts = [x for x in taken if x.outcome == "started"]
            if child is None or not starts:
                yield f"{saga_id}: started {workflow} {child_id} by {c.message_id}, which has no saga"
                continue
            if len(starts) != 1 or starts[0].message_id != c.message_id:
                ids = ", ".join(x.message_id for x in starts)
                yield f"{child_id}: started by {ids}, not once by its parent's {c.message_id}"
            if parent is not None and parent.status == "completed" and child.status != "completed":
                yield f"{child_id} is {child.status} though its parent {saga_id} completed"
            if parent is not None and parent.status == "compensated" and child.status == "completed":
                yield f"{child_id} is completed though its parent {saga_id} was compensated"


def _unanswered(
    e: Evidence, commands_journaled: dict[str, tuple[str, Command]], taken: set[str]
) -> Iterable[str]:
    for mid, (saga, c) in sorted(commands_journaled.items()):
        if c.route is not None and c.route.startswith("saga:"):
            continue  # a child's outcome is a reply itself; a cancel is answered by an outcome
        if not any(reply_id(mid, r) in taken for r in e.replies.get(c.type, ())):
            yield f"{saga} {c.type} {mid}: no reply journaled"


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])
