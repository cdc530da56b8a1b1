"""The test kit for teams writing workflows: no broker, no database, a clock you move by hand.

    from orchestrator.testing import WorkflowTestKit

    kit = WorkflowTestKit(OrderSaga.workflow)
    kit.publish(OrderPlaced("o-1", "c-1", [Line("sku", 1)], 500))
    assert kit.sent_types() == ["inventory.ReserveStock"]
    kit.advance(timedelta(seconds=31))            # the reserve deadline passes
    assert kit.saga("o-1").status == "compensated"

Every call goes through the service's own message bus (its unit of work and fault policy), over
the in-memory store, so a workflow that passes here behaves the same against RabbitMQ and
PostgreSQL. Time moves only by ``advance``: a retry's pause is not waited for. What a saga sends
to another (a child saga's start, its outcome, its parent's cancel) is delivered at once, after
the call that sent it, and is in ``sent`` too; load the child's workflow beside its parent's.

A public module (see :mod:`orchestrator`): ``WorkflowTestKit``; ``ActionRefused``, which
:meth:`WorkflowTestKit.act` raises for an action that does not fit the saga (the REST API's 409);
``MemoryStore``, which one kit can hand the next (``WorkflowTestKit(..., store=kit.store)``: new
definitions over what old ones left); and the types the kit takes and hands back, named so that a
test's helpers can be annotated: ``SagaSnapshot`` (``kit.saga(key)``: state, status, data, ...),
``OutgoingCommand`` (each command in ``kit.sent``), ``BatchResult`` and ``Verdict`` (what
``publish``, ``reply`` and ``deliver`` give), ``Envelope`` (what ``deliver`` takes), ``Applied``
(what ``start`` and ``act`` give) and ``JournalEntry`` (``kit.journal(saga)``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from orchestrator.adapters.memory import MemoryStore
from orchestrator.core.branches import replies_of
from orchestrator.core.children import started_workflow, target_of
from orchestrator.core.definitions import Workflow
from orchestrator.core.engine import OutgoingCommand, SagaSnapshot, reply_id_for, saga_id_for
from orchestrator.core.ingress import Limits
from orchestrator.core.machine import DEFAULT_MAX_PARKED
from orchestrator.core.messages import Message, dump
from orchestrator.core.replay import verify
from orchestrator.core.routing import Registry
from orchestrator.service.batch import BatchResult, Envelope, Verdict
from orchestrator.service.bus import MessageBus
from orchestrator.service.faults import GaveUp
from orchestrator.service.operations import ActionRefused, Applied, OperatorAction
from orchestrator.service.store import JournalEntry

__all__ = [
    "ActionRefused",
    "Applied",
    "BatchResult",
    "Envelope",
    "JournalEntry",
    "MemoryStore",
    "OutgoingCommand",
    "SagaSnapshot",
    "Verdict",
    "WorkflowTestKit",
]


class WorkflowTestKit:
    """Workflows run over the in-memory store, driven by hand: ``publish`` or ``reply`` events,
    ``advance`` the clock, look at ``sent`` and ``saga(key)``. Call ``close()`` when done."""

    def __init__(
        self,
        *workflows: Workflow,
        now: datetime | None = None,
        max_parked: int = DEFAULT_MAX_PARKED,
        store: MemoryStore | None = None,
        unchecked_replies: Iterable[str] = (),
    ) -> None:
        """``store``: another kit's, to run new definitions on what old ones left (a deploy).
        ``unchecked_replies``: services whose replies are taken without a section 6 reply id, as
        ``ORCHESTRATOR_UNCHECKED_REPLIES`` lets them by."""
        self.registry = Registry(workflows, max_parked)
        self.store = store or MemoryStore()
        self.now = now or datetime(2026, 1, 1, tzinfo=UTC)
        self.sent: list[OutgoingCommand] = []
        #: messages between sagas (orchestrator.core.children) not delivered yet
        self._internal: list[OutgoingCommand] = []
        self.dead: list[tuple[Envelope, str]] = []
        #: the same bus as the service's: its unit of work and fault policy, with a clock moved by
        #: hand and no waiting between tries
        self.bus = MessageBus(
            self.registry,
            self.store,
            outbox=_Sent(self.sent, self._internal),
            clock=lambda: self.now,
            sleep=_no_wait,
            limits=Limits(unchecked_replies=frozenset(unchecked_replies)),
        )
        self._loop = asyncio.new_event_loop()

    def close(self) -> None:
        self._loop.close()

    def publish(
        self,
        message: Message,
        *,
        correlation_id: str | None = None,
        message_id: str | None = None,
        workflow: str | None = None,
    ) -> BatchResult:
        """Deliver one event, as a participant would publish it: a reply to a saga that exists
        (named by ``correlation_id``, or else by its key) gets, unless ``message_id`` says
        otherwise, the reply id of the command it answers (docs/protocol.md, section 6): the first
        the saga waits on, or else the last it sent. A reply with any other id is refused as no
        reply to the saga's commands (``not_awaited``), as the service refuses it."""
        envelope = Envelope(
            orjson.dumps(dump(message)),
            message.TYPE,
            message_id or self._reply_id(message, correlation_id) or str(uuid.uuid4()),
            correlation_id,
            workflow,
            schema_version=message.SCHEMA,  # dumped from its class: in the schema it reads
        )
        return self.deliver(envelope)

    def _reply_id(self, message: Message, correlation_id: str | None) -> str | None:
        """The section 6 id of ``message`` as the reply to a command of the saga it is for."""
        saga = self.store.sagas.get(correlation_id) if correlation_id else None
        if saga is None and not correlation_id:
            for compiled in self.registry.by_type.get(message.TYPE, []):
                workflow = compiled.workflow
                key = getattr(message, workflow.key, None)
                if workflow.starts_on.TYPE != message.TYPE and key is not None:
                    saga = self.store.sagas.get(saga_id_for(workflow.name, str(key)))
                    if saga is not None:
                        break
        if saga is None:
            return None
        branch = self._branch_awaiting(saga, message.TYPE)
        if branch is not None:
            return reply_id_for(branch, message.TYPE)
        commands = [c["message_id"] for c in saga.awaiting] or [
            c["message_id"] for e in self.store.journals.get(saga.id, []) for c in e.decision["commands"]
        ][-1:]
        return reply_id_for(commands[0], message.TYPE) if commands else None

    def _branch_awaiting(self, saga: SagaSnapshot, reply_type: str) -> str | None:
        """The command a branch of the saga (orchestrator.core.branches) waits on whose replies
        include ``reply_type``: a group's step or its compensation, or a late success's undo."""
        compiled = self.registry.for_saga(saga)
        if compiled is None:
            return None
        for branch in saga.branches:
            if branch.get("awaiting") and reply_type in replies_of(compiled.workflow, branch):
                return str(branch["awaiting"][0]["message_id"])
        return None

    def deliver(self, envelope: Envelope) -> BatchResult:
        """Deliver a raw envelope: for tests of bad input."""
        result = self._handle(envelope)
        self._between_sagas()
        return result

    def _handle(self, envelope: Envelope) -> BatchResult:
        result = self._loop.run_until_complete(self.bus.handle([envelope], [0.0]))
        for verdict, reason in zip(result.verdicts, result.reasons, strict=True):
            if verdict is Verdict.DEAD and reason is not None:
                self.dead.append((envelope, reason))
        return result

    def _between_sagas(self) -> None:
        """Deliver what sagas sent each other, as the orchestrator's own queue would, until none
        is left (a child's start may make it finish and answer its parent at once)."""
        while self._internal:
            command = self._internal.pop(0)
            assert command.route is not None
            kind, target = target_of(command.route)
            starting = kind == "start"
            workflow, schema = started_workflow(target) if starting else (None, 1)
            self._handle(
                Envelope(
                    orjson.dumps(command.payload),
                    command.type,
                    command.message_id,
                    None if starting else target,
                    workflow,
                    parent=command.saga_id if starting else None,
                    schema_version=schema,
                )
            )

    def start(
        self, workflow: str, key: str, data: dict[str, Any], actor: str = "test", schema_version: int = 1
    ) -> Applied:
        """Start a saga as ``POST /sagas`` does: ``data`` in schema version ``schema_version``
        of the starting event (absent: 1, as the request's ``schema_version``)."""
        applied = self._loop.run_until_complete(
            self.bus.start(workflow, key, data, actor, schema_version=schema_version)
        )
        self._between_sagas()
        return applied

    def act(self, saga: SagaSnapshot, action: str, actor: str = "test", **arguments: Any) -> Applied:
        """An operator's action (retry, cancel, resume, fire-deadline, skip), as the REST API
        takes it; raises ActionRefused where it does not fit the saga."""
        request = OperatorAction(action, actor, **arguments)
        applied = self._loop.run_until_complete(self.bus.act(saga.id, request))
        self._between_sagas()
        return applied

    def advance(self, by: timedelta) -> list[BatchResult]:
        """Move the clock; every deadline that falls due on the way fires, in order."""
        target = self.now + by
        fired = []
        while True:
            due = self._loop.run_until_complete(self.store.next_deadline(self.registry.loaded()))
            if due is None or due > target:
                break
            self.now = max(self.now, due)
            try:
                result = self._loop.run_until_complete(self.bus.fire_due())
            except GaveUp as gave_up:  # the workflow's own error, as the test should see it
                raise gave_up.error from None
            fired.append(result)
            self._between_sagas()
            if not result.decisions:  # due, yet nothing fired: never loop on it
                break
        self.now = target
        return fired

    def saga(self, key: str, workflow: str | None = None) -> SagaSnapshot:
        name = workflow or next(iter(self.registry.workflows))
        found = self.store.sagas.get(saga_id_for(name, key))
        if found is None:
            raise KeyError(f"no {name} saga with key {key!r}")
        return found

    def journal(self, saga: SagaSnapshot) -> list[JournalEntry]:
        return list(self.store.journals.get(saga.id, []))

    def sent_types(self) -> list[str]:
        return [c.type for c in self.sent]

    def take_sent(self) -> list[OutgoingCommand]:
        sent = list(self.sent)
        self.sent.clear()  # the list the bus hands commands to
        return sent

    def replay_differences(self, saga: SagaSnapshot) -> list[str]:
        """What replaying the saga's journal gives that ``saga`` (its row), its pending timers,
        the commands its journal records and its unsent commands do not, as ``orchestrator
        verify`` reports it (empty: all is well)."""
        compiled = self.registry.for_saga(saga)
        assert compiled is not None, f"release {saga.release} of {saga.workflow} is not loaded"
        records = self._loop.run_until_complete(self.store.records(saga.id))
        return verify(compiled, replace(records, saga=saga), self.registry.releases_of(saga.workflow))

    def reply(self, command: OutgoingCommand, event: Message) -> BatchResult:
        """Answer a command the way a participant does: same correlation id, a stable reply id."""
        reply_id = reply_id_for(command.message_id, event.TYPE)
        return self.publish(event, correlation_id=command.saga_id, message_id=reply_id)


class _Sent:
    """The kit's relay: what each commit sends, in order, in the kit's ``sent``."""

    def __init__(self, sent: list[OutgoingCommand], internal: list[OutgoingCommand]) -> None:
        self.sent = sent
        self.internal = internal

    def submit(self, commands: Iterable[OutgoingCommand], received_at: float | None = None) -> None:
        for command in commands:
            self.sent.append(command)
            if command.route is not None:
                self.internal.append(command)


async def _no_wait(seconds: float) -> None:
    """Time in the kit moves by hand: a retry's pause is not waited for."""
