"""The service layer: a batch of incoming messages in, one transaction out.

For each message: parse it, find its saga, skip it if its id was taken before, let the pure
engine decide, and gather everything into one :class:`~orchestrator.service.store.Changes`, written in
one transaction. Messages that cannot be taken get a dead-letter reason instead. Nothing here
knows about RabbitMQ: the consumer hands in envelopes and acks by the verdicts it gets back.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from orchestrator.core.branches import named, timer_branch
from orchestrator.core.children import CancelChild
from orchestrator.core.definitions import DEADLINE, RETRY
from orchestrator.core.engine import (
    Decision,
    Incoming,
    Outcome,
    OutgoingCommand,
    SagaSnapshot,
    decide,
    reply_id_for,
)
from orchestrator.core.ids import timer_message_id
from orchestrator.core.ingress import (
    DEFAULT_LIMITS,
    MAX_KEY_LENGTH,
    Envelope,
    Limits,
    Reason,
    Refused,
    check_json,
    dead_letter_of,
)
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.routing import Registry, Target
from orchestrator.service.store import Changes, JournalEntry, SagasBusy, Store
from orchestrator.service.tombstones import archived_refusal, live_starts
from orchestrator.service.tracing import Span, Tracer, decided

__all__ = ["BatchResult", "Envelope", "Verdict", "fire_due_deadlines", "process_batch"]


class Verdict(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    DEAD = "dead"
    #: for a saga pinned to a release of its workflow this process does not load (a rolling
    #: deploy): neither decided nor refused here, but given back to the queue for a process that
    #: loads it
    LEFT = "left"
    #: for a saga whose row another transaction holds (or behind such a message): neither decided
    #: nor refused, set aside and taken again after a pause; never a failure, never dead-lettered
    BUSY = "busy"
    #: from a partition this replica no longer holds at the epoch it took it (handed over since
    #: it was taken): not decided here, given back to the queue for the partition's new owner
    FENCED = "fenced"


class _Leave(Exception):
    """The message is for a saga this process cannot decide, and another may: leave it."""

    def __init__(self, saga: SagaSnapshot) -> None:
        super().__init__(f"saga {saga.id} is on release {saga.release} of {saga.workflow}, not loaded here")
        self.saga = saga


@dataclass
class BatchResult:
    verdicts: list[Verdict] = field(default_factory=list)
    #: per message, why it was dead-lettered (None where it was not)
    refusals: list[Refused | None] = field(default_factory=list)
    commands: list[OutgoingCommand] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    #: the journal entries committed (a fired timer's carries its due time and message id)
    journal: list[JournalEntry] = field(default_factory=list)
    #: per message, the sagas a BUSY one is for (empty for the others): messages for them that
    #: come later must wait behind it, so that each saga still takes its messages in order
    waits: list[frozenset[str]] = field(default_factory=list)
    #: the messages taken without a section 6 reply id from a service that may still send such
    #: (``Limits.unchecked_replies``): (service, message id, saga id)
    unchecked: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def reasons(self) -> list[str | None]:
        """Per message, the dead-letter detail (None where it was not dead-lettered)."""
        return [r.detail if r is not None else None for r in self.refusals]

    def refuse(self, index: int, refused: Refused) -> None:
        self.verdicts[index] = Verdict.DEAD
        # without its frames: process_batch's and _parse's hold this result and the whole batch,
        # a reference cycle that only a (rare) full collection frees, message bodies and all
        self.refusals[index] = refused.without_frames()


@dataclass
class _Parsed:
    index: int
    envelope: Envelope
    payload: dict[str, Any]
    type: str
    message_id: str
    #: the workflows that take it, each with the saga id its key gives and whether it starts one
    keyed: list[Target]
    #: why no workflow takes this type (unknown_type, unknown_workflow): held until it is known
    #: whether its correlation id names a saga of ours, which journals it instead
    unrouted: Refused | None = None

    def narrow(self, live: list[Target]) -> None:
        """Only the workflows whose saga is not archived take it."""
        self.keyed = live


def _parse(index: int, envelope: Envelope, registry: Registry) -> _Parsed:
    if envelope.refused is not None:
        raise envelope.refused
    if not envelope.type:
        raise Refused(Reason.NO_TYPE, "message has no type property")
    if not envelope.message_id:
        raise Refused(Reason.NO_MESSAGE_ID, "message has no message_id property")
    try:
        payload = orjson.loads(envelope.body)
    except orjson.JSONDecodeError as error:
        raise Refused(Reason.NOT_JSON, f"body is not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise Refused(Reason.NOT_AN_OBJECT, "body is not a JSON object")
    try:
        check_json(payload, "body")
    except ValueError as error:
        raise Refused(Reason.UNSTORABLE, str(error)) from None
    try:
        targets = registry.route(
            envelope.type, payload, workflow_header=envelope.workflow, schema=envelope.schema_version
        )
    except Refused as refused:
        if envelope.correlation_id and refused.reason in (Reason.UNKNOWN_TYPE, Reason.UNKNOWN_WORKFLOW):
            return _Parsed(index, envelope, payload, envelope.type, envelope.message_id, [], refused)
        raise
    for target in targets:
        key = target.payload.get(target.workflow.workflow.key)  # as upcast
        if key is not None and len(str(key)) > MAX_KEY_LENGTH:
            raise Refused(
                Reason.KEY_TOO_LONG,
                f"{target.workflow.workflow.key} is {len(str(key))} characters, over {MAX_KEY_LENGTH}",
            )
    return _Parsed(index, envelope, payload, envelope.type, envelope.message_id, targets)


async def process_batch(
    registry: Registry,
    store: Store,
    envelopes: Sequence[Envelope],
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
    tracer: Tracer | None = None,
    held: Collection[str] = (),
    fences: Sequence[tuple[int, int] | None] | None = None,
) -> BatchResult:
    """Decide every message of the batch and commit all of it in one transaction; ``limits`` are
    the service's, by which a refused message's dead letter keeps its body.

    A message for a saga whose row another transaction holds, or for a saga in ``held`` (one
    whose earlier messages wait so already), is BUSY: not decided, and the rest go on.

    ``fences``: per message, the (partition, epoch) it was taken under (None: from no partition).
    They are checked first, and held until the commit; a message whose fence no longer holds
    (its partition handed over since) is FENCED, neither decided nor recorded.

    With a ``tracer``, each message decided gets a ``decide`` span (a child of the context it came
    with), whose context its commands and timers carry on, and a ``commit`` span under it for the
    batch's commit. Without one, the context it came with is carried on as it is.

    The batch is one unit of work of the store (:meth:`~orchestrator.service.store.Store.batch`).
    Where its save finds sagas locked elsewhere (:class:`SagasBusy`), nothing was written, and it
    is decided again with those sagas held: each round holds at least one more, and their number
    bounds the rounds."""
    held = set(held)
    while True:
        try:
            return await _decide_and_save(registry, store, envelopes, now, limits, tracer, held, fences)
        except SagasBusy as busy:
            if busy.saga_ids <= held:  # found busy again: nothing new to hold, so no progress
                raise
            held |= busy.saga_ids


async def _decide_and_save(
    registry: Registry,
    store: Store,
    envelopes: Sequence[Envelope],
    now: datetime,
    limits: Limits,
    tracer: Tracer | None,
    held: Collection[str],
    fences: Sequence[tuple[int, int] | None] | None,
) -> BatchResult:
    result = BatchResult(
        verdicts=[Verdict.ACCEPTED] * len(envelopes),
        refusals=[None] * len(envelopes),
        waits=[frozenset()] * len(envelopes),
    )
    parsed: list[_Parsed] = []
    for index, envelope in enumerate(envelopes):
        try:
            parsed.append(_parse(index, envelope, registry))
        except Refused as refused:
            result.refuse(index, refused)

    # a held saga's messages wait whatever its row says: not read, so not locked or checked
    wanted = {w for p in parsed for w in _saga_ids(p)}.difference(held)

    changes = Changes()
    traced: list[str | None] = []  # the decide spans' contexts, for the commit spans under them
    committing = 0
    async with store.batch() as tx:
        if fences is not None and any(fences):
            holding = await tx.fence({f for f in fences if f is not None})
            lost = {i for i, f in enumerate(fences) if f is not None and f not in holding}
            if lost:
                for index in lost:
                    result.verdicts[index] = Verdict.FENCED
                    result.refusals[index] = None
                parsed = [p for p in parsed if p.index not in lost]
                wanted = {w for p in parsed for w in _saga_ids(p)}.difference(held)
        current, seen = await tx.read_batch(wanted, (p.message_id for p in parsed))
        missing = wanted - current.keys()  # archived, maybe: one more read, only then
        archived = await tx.tombstones(missing) if missing else {}
        busy = set(tx.busy) | set(held)
        # A message for a saga that exists is taken only as the reply to a command that saga sent
        # (docs/protocol.md, section 6): the commands it waits on as read (a message before it in
        # this batch may move the saga on, but cannot answer a command sent after the read), or
        # else any its journal records. Those are looked up only for what the waits do not explain.
        # (message index, saga id): answered by what the saga waits on, as read
        explained: set[tuple[int, str]] = set()
        asking: set[str] = set()
        for p in parsed:
            if p.message_id in seen:
                continue
            for saga_id in _existing(p, current, registry):
                saga = current[saga_id]
                if _answers(p, saga.awaiting, ()) or any(
                    _answers(p, b["awaiting"], ()) for b in saga.branches
                ):
                    explained.add((p.index, saga_id))
                else:
                    asking.add(saga_id)
        sent = await tx.sent_commands(asking) if asking else {}
        for p in parsed:
            if busy:
                ids = _saga_ids(p)
                if ids & busy:  # later messages for any of its sagas wait behind it
                    busy |= ids
                    result.verdicts[p.index] = Verdict.BUSY
                    result.waits[p.index] = frozenset(ids)
                    continue
            live = live_starts(p.keyed, archived)
            if p.message_id in seen or p.message_id in changes.inbox or live is None:
                result.verdicts[p.index] = Verdict.DUPLICATE
                changes.duplicates.append(p.message_id)
                continue
            p.narrow(live)
            try:
                targets = _targets(p, registry, current)
            except Refused as refused:
                result.refuse(
                    p.index, archived_refusal(refused, p.envelope.correlation_id, p.keyed, archived)
                )
                continue
            except _Leave:
                result.verdicts[p.index] = Verdict.LEFT
                continue
            # a saga that exists takes it only as the reply it says it is (a saga started earlier in
            # this batch has sent nothing yet: nothing of it is explained)
            unanswered = next(
                (
                    s
                    for compiled, s in targets
                    if s is not None
                    and not _starts(p, compiled)
                    and (p.index, s.id) not in explained
                    and not _answers(p, (), sent.get(s.id, ()))
                ),
                None,
            )
            if unanswered is not None and not _let_by(p, unanswered.id, limits, result):
                why = _foreign(p, unanswered, registry) or _not_asked(p)
                result.refuse(p.index, _unanswered(why, unanswered.id))
                continue
            span = _decide_span(tracer, p, targets) if tracer is not None else None
            # journaled as it came, with its schema version: decide() upcasts it
            message = Incoming(
                p.type,
                p.message_id,
                p.payload,
                schema=p.envelope.schema_version,
                trace=p.envelope.trace if span is None else span.trace,
                parent=p.envelope.parent,
            )
            try:
                decisions = [decide(compiled, saga, message, now) for compiled, saga in targets]
            except Refused as refused:  # decide() upcasts: a class _parse did not read it with
                result.refuse(p.index, refused)
                _refused_span(span, refused)
                continue
            full = [d.reason for d in decisions if d.outcome is Outcome.REFUSED]
            if full:  # past a saga's parking cap: dead-lettered, recorded for none of its sagas
                result.refuse(p.index, Refused(Reason.PARKING_FULL, full[0] or "parking full"))
                _refused_span(span, Refused(Reason.PARKING_FULL, full[0] or "parking full"))
                continue
            if span is not None:
                decided(span, decisions)
                traced.append(span.trace)
            first_saga: str | None = None
            for decision in decisions:
                result.decisions.append(decision)
                first_saga = first_saga or decision.saga.id
                if decision.outcome is Outcome.DISCARDED:  # counted, never journaled
                    continue
                current[decision.saga.id] = decision.saga
                changes.record(message, decision, now)
            wrong = next((d for d in decisions if d.dead_letter is not None), None)
            if wrong is not None and wrong.dead_letter is not None:  # journaled, and dead-lettered
                result.refuse(p.index, Refused(wrong.dead_letter, wrong.reason or str(wrong.dead_letter)))
                continue  # not in the inbox, as no dead letter is: fixed and sent again, it is taken
            changes.inbox[p.message_id] = first_saga
        for index, refusal in enumerate(result.refusals):
            if refusal is not None and result.verdicts[index] is not Verdict.FENCED:
                changes.dead_letters.append(dead_letter_of(envelopes[index], refusal, limits=limits))
        if changes:
            committing = time.time_ns()
            await tx.save(changes)
    if traced and tracer is not None:
        size = {"orchestrator.batch.size": len(envelopes)}
        tracer.record("commit", traced, committing, time.time_ns(), size)
    result.commands = changes.commands
    result.journal = changes.journal
    return result


def _saga_ids(p: _Parsed) -> set[str]:
    """The sagas a message may be for: the one its correlation id names, those its key names."""
    ids = {t.saga_id for t in p.keyed if t.saga_id}
    if p.envelope.correlation_id:
        ids.add(p.envelope.correlation_id)
    return ids


def _foreign(p: _Parsed, saga: SagaSnapshot, registry: Registry) -> Refused | None:
    """Why a message that names ``saga`` is nothing its workflow takes (no workflow takes its
    type, or the saga's does not), or None when it is an event of the saga's workflow, or a
    start (found by its key), or for a release not loaded here (left to one that loads it)."""
    compiled = registry.for_saga(saga)
    if compiled is None and saga.workflow in registry.workflows:
        return None  # a release not loaded here, whose events this process cannot tell: left
    if p.unrouted is not None:
        return p.unrouted
    if p.keyed and all(t.starts for t in p.keyed):
        return None
    if compiled is None or p.type in compiled.workflow.events:
        return None
    return Refused(Reason.NOT_AWAITED, f"{p.type} is not an event of workflow {saga.workflow}")


def _answers(p: _Parsed, awaiting: Iterable[Mapping[str, Any]], sent: Collection[str]) -> bool:
    """Whether the message's id is the reply id (docs/protocol.md, section 6) of a command the
    saga waits on (``awaiting``), or of one of ``sent`` (the command ids its journal records)."""
    for command in awaiting:
        if reply_id_for(command["message_id"], p.type) == p.message_id:
            return True
    return any(reply_id_for(command, p.type) == p.message_id for command in sent)


def _existing(p: _Parsed, current: Mapping[str, SagaSnapshot], registry: Registry) -> list[str]:
    """The sagas that exist among those the message may be decided for, where it starts none
    and is none of their signals: each must have sent the command it answers."""
    found = []
    cid = p.envelope.correlation_id
    starting = bool(p.keyed) and all(t.starts for t in p.keyed)
    if cid and not starting and cid in current:
        found.append(cid)
    if not cid:
        found.extend(t.saga_id for t in p.keyed if t.saga_id and t.saga_id in current and not t.starts)
    return [saga_id for saga_id in found if not _signal(p.type, current[saga_id], registry)]


def _signal(type_: str, saga: SagaSnapshot, registry: Registry) -> bool:
    if type_ == CancelChild.TYPE:  # the engine takes it only from the saga's parent
        return True
    compiled = registry.for_saga(saga)
    return compiled is not None and type_ in compiled.workflow.unasked


def _starts(p: _Parsed, compiled: CompiledWorkflow) -> bool:
    """Whether the message starts a saga of ``compiled``, or is one of its signals or cancel
    events, or a parent's cancel: each is taken without answering a command."""
    return (
        p.type in compiled.workflow.unasked
        or p.type == CancelChild.TYPE
        or any(t.starts and t.workflow is compiled for t in p.keyed)
    )


def _not_asked(p: _Parsed) -> Refused:
    return Refused(Reason.NOT_AWAITED, f"{p.type} is no reply to a command of its saga")


def _let_by(p: _Parsed, saga_id: str, limits: Limits, result: BatchResult) -> bool:
    """Whether a message that answers none of its saga's commands is let by all the same: its
    service (its type's prefix) is in ORCHESTRATOR_UNCHECKED_REPLIES, while it moves to section
    6 reply ids; recorded, to be logged and counted."""
    service = p.type.split(".", 1)[0].lower()
    if service not in limits.unchecked_replies:
        return False
    result.unchecked.append((service, p.message_id, saga_id))
    return True


def _unanswered(refused: Refused, saga_id: str) -> Refused:
    return Refused(
        refused.reason,
        f"{refused.detail}; and it answers no command saga {saga_id} sent: a reply's message_id is"
        " uuid5(NAMESPACE_OID, '<command message_id>:<reply type>') (docs/protocol.md, section 6)",
    )


def _decide_span(
    tracer: Tracer, p: _Parsed, targets: Sequence[tuple[CompiledWorkflow, SagaSnapshot | None]]
) -> Span:
    compiled, saga = targets[0]
    attributes: dict[str, str | int | bool] = {
        "messaging.system": "rabbitmq",
        "messaging.message.id": p.message_id,
        "messaging.destination.name": p.envelope.exchange,
        "messaging.rabbitmq.destination.routing_key": p.envelope.routing_key,
        "orchestrator.message.type": p.type,
        "orchestrator.workflow": compiled.workflow.name,
    }
    if saga is not None:
        attributes["orchestrator.saga.id"] = saga.id
        attributes["orchestrator.state.before"] = saga.state
    return tracer.start(f"decide {p.type}", p.envelope.trace, attributes, kind="consumer")


def _refused_span(span: Span | None, refused: Refused) -> None:
    if span is not None:
        span.fail(f"{refused.reason}: {refused.detail}")
        span.end()


async def fire_due_deadlines(
    registry: Registry, store: Store, now: datetime, limit: int = 500, tracer: Tracer | None = None
) -> BatchResult:
    """Feed every deadline due by ``now`` through the engine as a journaled message.

    A deadline only fires if its saga is still in the state it was set for; otherwise the saga
    moved on and the row is stale (it is removed all the same). The version is not compared with
    the saga's: parked and ignored events bump it without leaving the state, and the deadline
    still holds. It is compared with a timer of the same kind that a decision of this sweep set
    or cancelled already (a deadline and a retry of one saga both due): that write is newer, the
    row is superseded, and neither fires nor removes it.

    The sagas are locked first, in id order, as a batch of messages locks them, and the timer rows
    are read after (:meth:`~orchestrator.service.store.Transaction.claim_due`): one lock order everywhere.

    A timer fires in the trace of the message that set it (its row keeps that context): with a
    ``tracer``, a ``fire <kind>`` span there, and the ``decide`` span under it.
    """
    result = BatchResult()
    changes = Changes()
    traced: list[str | None] = []
    committing = 0
    async with store.transaction() as tx:
        current, due = await tx.claim_due(now, limit, registry.loaded())
        if not due:
            return result
        for deadline in due:
            timer = (deadline.saga_id, deadline.kind)
            pending = changes.deadlines.get(timer)
            if pending is not None and pending[1] > deadline.version:
                continue  # set anew (or cancelled) by this sweep's own decision: that write stands
            saga = current.get(deadline.saga_id)
            compiled = registry.for_saga(saga) if saga is not None else None
            if saga is not None and compiled is None:
                continue  # not a release of this process (claim_due leaves those): never removed
            # a branch's timer is the branch's while it waits, in any state or status
            branch = timer_branch(deadline.kind)
            if branch is not None:
                stale = saga is None or named(saga.branches, branch[0]) is None
            else:
                stale = saga is None or saga.finished or saga.state != deadline.state
            if stale or compiled is None or saga is None:
                changes.deadlines[timer] = (None, deadline.version)
                continue
            retry = deadline.kind == "retry" if branch is None else branch[1]
            message_id = timer_message_id(compiled.id_key, deadline.saga_id, deadline.kind, deadline.version)
            trace, span = deadline.trace, None
            if tracer is not None:
                attributes: dict[str, str | int | bool] = {
                    "orchestrator.saga.id": saga.id,
                    "orchestrator.workflow": saga.workflow,
                    "orchestrator.timer.kind": deadline.kind,
                    "orchestrator.timer.due_at": deadline.due_at.isoformat(),
                    "orchestrator.state.before": saga.state,
                    "messaging.message.id": message_id,
                }
                fired = tracer.start(f"fire {deadline.kind}", trace, attributes)
                fired.end()
                span = tracer.start(f"decide {RETRY if retry else DEADLINE}", fired.trace, attributes)
                trace = span.trace
            payload = {"state": deadline.state, "due_at": deadline.due_at.isoformat()}
            if branch is not None:
                payload["branch"] = branch[0]
            message = Incoming(
                RETRY if retry else DEADLINE,
                message_id,
                payload,
                kind="retry" if retry else "deadline",
                trace=trace,
            )
            decision = decide(compiled, saga, message, now)
            if span is not None:
                decided(span, [decision])
                traced.append(span.trace)
            current[saga.id] = decision.saga
            changes.record(message, decision, now)
            if branch is not None:
                if deadline.kind not in dict(decision.timers):
                    changes.deadlines[timer] = (None, deadline.version)
            elif not (decision.retry_changed if retry else decision.deadline_changed):
                changes.deadlines[timer] = (None, deadline.version)
            result.decisions.append(decision)
        committing = time.time_ns()
        await tx.save(changes)
    if traced and tracer is not None:
        size = {"orchestrator.batch.size": len(traced)}
        tracer.record("commit", traced, committing, time.time_ns(), size)
    result.commands = changes.commands
    result.journal = changes.journal
    return result


def _targets(
    p: _Parsed, registry: Registry, current: Mapping[str, SagaSnapshot]
) -> list[tuple[CompiledWorkflow, SagaSnapshot | None]]:
    """The sagas a message goes to, with the saga (None where the message starts it).

    A start event (its type starts every workflow it is routed to) is identified by its key
    alone: a ``correlation_id`` on it is not read. Any other event is a reply: its
    ``correlation_id`` names its saga, and one naming no saga is refused (``unknown_saga``),
    whatever its key says; a reply without one is matched by its key (the fallback). A reply
    correlated to a saga whose workflow takes no such type goes to that saga all the same, which
    journals it as ignored (a reply nobody waits for): it is never dead-lettered.

    A saga is decided by the release of its workflow it is pinned to; where that release is not
    loaded here but the workflow is (a rolling deploy), the message is left for a process that
    loads it (:class:`_Leave`), never decided by another release nor refused.
    """
    cid = p.envelope.correlation_id
    starting = bool(p.keyed) and all(t.starts for t in p.keyed)
    if cid and not starting:
        correlated = current.get(cid)
        header = p.envelope.workflow
        if correlated is None:
            if p.unrouted is not None:
                raise p.unrouted
            raise Refused(Reason.UNKNOWN_SAGA, f"correlation id {cid!r} names no saga")
        compiled = registry.for_saga(correlated)
        if header is not None and header != correlated.workflow:
            raise Refused(
                Reason.UNKNOWN_WORKFLOW,
                f"x-workflow {header!r} but correlation id {cid!r} names a {correlated.workflow} saga",
            )
        if compiled is None:
            if correlated.workflow in registry.workflows:
                raise _Leave(correlated)
            raise Refused(Reason.UNKNOWN_WORKFLOW, f"workflow {correlated.workflow!r} is not loaded here")
        # _parse already validated the payload against every workflow that takes this type.
        return [(compiled, correlated)]
    if p.unrouted is not None:
        raise p.unrouted
    targets: list[tuple[CompiledWorkflow, SagaSnapshot | None]] = []
    for target in p.keyed:
        compiled, saga_id = target.workflow, target.saga_id
        workflow = compiled.workflow
        saga = current.get(saga_id) if saga_id else None
        if saga is None and not target.starts:
            raise Refused(
                Reason.UNKNOWN_SAGA,
                f"no {workflow.name} saga for {workflow.key}={p.payload.get(workflow.key)!r}",
            )
        if saga is None and saga_id is None:
            raise Refused(Reason.NO_KEY, f"{p.type} starts {workflow.name} but has no {workflow.key!r}")
        if saga is not None:
            pinned = registry.for_saga(saga)
            if pinned is None:
                raise _Leave(saga)
            compiled = pinned
        elif compiled is not registry.workflows[workflow.name]:
            current_release = registry.workflows[workflow.name].workflow.release
            raise Refused(
                Reason.UNKNOWN_TYPE,
                f"{p.type} starts release {workflow.release} of {workflow.name} only, and new"
                f" sagas start on release {current_release}",
            )
        targets.append((compiled, saga))
    return targets
