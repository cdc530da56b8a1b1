"""The message bus: every way in (a batch off the broker, the deadline sweep, a REST start or an
operator's action, the shell, the dead-letter drain, the test kit) goes through here.

Each call is one unit of work: open the transaction, decide, record, commit, and only then hand
on what it caused (:meth:`MessageBus._committed`: the commands to the outbox relay, the timers to
the alarm, the turns of each saga's course to the counts). Writes the service makes on its own
are retried by one fault policy (:mod:`orchestrator.service.faults`); a batch that still fails
is split until the message at fault stands alone, and that message is set aside as a dead letter,
so nothing about one message holds up the others. Requests are tried once: the caller answers
the error (REST's 503) and the request may be sent again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from orchestrator.core.engine import Decision, OutgoingCommand
from orchestrator.core.ingress import DEFAULT_LIMITS, DeadLetter, Envelope, Limits, Reason, Refused, printable
from orchestrator.core.routing import Registry
from orchestrator.service.batch import BatchResult, fire_due_deadlines, process_batch
from orchestrator.service.counts import Counts, count_finished
from orchestrator.service.faults import (
    BARE,
    BATCH,
    DEAD_LETTERS,
    DEADLINES,
    SPLIT,
    Fault,
    FaultPolicy,
    GaveUp,
    attempt,
)
from orchestrator.service.migrations import MigrationReport, migrate_sagas
from orchestrator.service.operations import Applied, OperatorAction, apply_action, start_saga
from orchestrator.service.ports import Clock, CommandOutlet, Sleep, TimerOutlet
from orchestrator.service.store import Changes, Store
from orchestrator.service.tracing import Tracer

__all__ = ["MessageBus"]

#: how long the database may be away before it is said as an ERROR: a restart or a failover of a
#: managed PostgreSQL takes from seconds to about a minute
DATABASE_AWAY_ERROR_SECONDS = 60.0

log = logging.getLogger("orchestrator.service.bus")


def _unavailable(error: BaseException) -> Fault:
    """A dead letter's bare record, which nothing about a message can fail any more: any failure
    of it is the database's."""
    return Fault.UNAVAILABLE


class MessageBus:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        *,
        outbox: CommandOutlet,
        timers: TimerOutlet | None = None,
        counts: Counts | None = None,
        clock: Clock,
        limits: Limits = DEFAULT_LIMITS,
        tracer: Tracer | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.registry = registry
        self.store = store
        self.outbox = outbox
        self.timers = timers
        self.counts = counts or Counts()
        self.clock = clock
        self.limits = limits
        #: None unless tracing is on (docs/tracing.md)
        self.tracer = tracer
        self.sleep = sleep
        #: why the last batch could not commit while the database is away, else None (readiness)
        self.database_trouble: str | None = None
        #: since when (time.monotonic) batches cannot commit, the database away; None: they can
        self._away_since: float | None = None
        #: whether this stretch of the database being away was logged as an ERROR already
        self._away_said = False
        #: when a batch last committed (time.monotonic)
        self.last_commit = time.monotonic()

    def _away(self, size: int, error: BaseException, pause: float | None) -> None:
        """The database is away: a WARNING when it goes (a restart or a failover the service rides
        out is no ERROR, issue 29), an ERROR once it has been away ``DATABASE_AWAY_ERROR_SECONDS``
        (an outage an operator should hear of), the retries between them DEBUG."""
        now = time.monotonic()
        if self._away_since is None:
            self._away_since = now
            log.warning("batch of %d cannot commit (%s), retrying in %.1fs", size, error, pause)
        elif not self._away_said and now - self._away_since >= DATABASE_AWAY_ERROR_SECONDS:
            self._away_said = True
            log.error("batches have not committed for %.0fs (%s); retrying", now - self._away_since, error)
        else:
            log.debug("batch of %d cannot commit (%s), retrying in %.1fs", size, error, pause)

    # ways in -------------------------------------------------------------------------------------
    async def handle(
        self,
        envelopes: Sequence[Envelope],
        arrived: Sequence[float],
        held: Collection[str] = (),
        fences: Sequence[tuple[int, int] | None] | None = None,
    ) -> BatchResult:
        """A batch of messages, decided and committed whatever fails on the way: one verdict per
        message. ``arrived`` is when each came in (time.monotonic): step latency runs from there.
        ``held``: sagas with messages set aside (BUSY), which this batch's messages for them
        wait behind. ``fences``: per message, the (partition, epoch) it was taken under."""
        fenced = list(fences) if fences is not None else None
        return await self._commit(list(envelopes), list(arrived), BATCH, self.store.classify, held, fenced)

    async def fire_due(self) -> BatchResult:
        """One round of the deadline sweep: timers due now fired, in one transaction.
        :class:`~orchestrator.service.faults.GaveUp` when it could not commit."""

        async def fire() -> BatchResult:
            return await fire_due_deadlines(self.registry, self.store, self.clock(), tracer=self.tracer)

        def note(fault: Fault, error: BaseException, pause: float | None) -> None:
            if pause is not None:
                log.info("deadline sweep met a concurrent transaction (%s), again", error)

        result = await attempt(fire, self.store.classify, DEADLINES, note, self.sleep)
        self._committed(result.commands, result.decisions)
        return result

    async def start(
        self,
        workflow: str,
        key: str,
        data: Mapping[str, Any],
        actor: str,
        schema_version: int = 1,
        trace: str | None = None,
    ) -> Applied:
        """Start a saga as its starting event would (REST, the shell, the test kit)."""
        applied = await start_saga(
            self.registry,
            self.store,
            workflow,
            key,
            data,
            actor,
            self.clock(),
            schema_version=schema_version,
            trace=trace,
            tracer=self.tracer,
        )
        self._committed(applied.commands, applied.decisions)
        if applied.created:
            self.counts.operator_actions["start"] += 1
        return applied

    async def act(self, saga_id: str, action: OperatorAction) -> Applied:
        """An operator's action on a saga (REST, the shell, the test kit)."""
        applied = await apply_action(self.registry, self.store, saga_id, action, self.clock(), self.tracer)
        self._committed(applied.commands, applied.decisions)
        self.counts.operator_actions[action.name] += 1
        return applied

    async def migrate(
        self,
        workflow: str,
        from_release: str,
        to_release: str,
        states: Mapping[str, str],
        *,
        actor: str,
        apply: bool = False,
        saga_ids: Sequence[str] | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> MigrationReport:
        """Sagas moved between releases of their workflow (REST, the shell); their new states'
        deadlines armed at once, not at the next sweep."""
        report = await migrate_sagas(
            self.registry,
            self.store,
            workflow,
            from_release,
            to_release,
            states,
            actor=actor,
            now=self.clock(),
            apply=apply,
            saga_ids=saga_ids,
            after=after,
            limit=limit,
        )
        self._committed(report.commands, report.decisions)
        return report

    async def record_dead_letters(self, letters: list[DeadLetter], *, bare: bool = False) -> bool:
        """Dead letters the broker set aside, recorded in one transaction: True once committed,
        False when the database refused them. While it is away, tried again with backoff.
        ``bare``: letters cut to what any database takes (no body, no properties), tried until
        they are recorded, as a batch's bare dead letter is."""

        async def save() -> None:
            async with self.store.transaction() as tx:
                await tx.save(Changes(dead_letters=letters))

        def note(fault: Fault, error: BaseException, pause: float | None) -> None:
            said = printable(error)[:300]
            if pause is None:
                log.error("could not record %d dead letters: %s", len(letters), said)
            else:
                log.error("cannot record %d dead letters (%s), retrying in %.1fs", len(letters), said, pause)

        classify, policy = (_unavailable, BARE) if bare else (self.store.classify, DEAD_LETTERS)
        try:
            await attempt(save, classify, policy, note, self.sleep)
        except GaveUp:
            return False
        return True

    # the unit of work ----------------------------------------------------------------------------
    def _committed(
        self,
        commands: Iterable[OutgoingCommand],
        decisions: Sequence[Decision],
        received_at: float | None = None,
    ) -> None:
        """The one place that hands on what a commit caused. Should that fail, nothing is lost:
        the outbox sweep and the alarm's safety sweep find it all in the database."""
        try:
            self.outbox.submit(commands, received_at)
            if self.timers is not None:
                self.timers.committed(decisions)
            count_finished(self.counts, decisions, self.registry.workflows)
        except Exception:
            log.exception("committed, but what it caused could not be handed on now; the sweeps will")

    async def _commit(
        self,
        envelopes: list[Envelope],
        arrived: list[float],
        policy: FaultPolicy,
        classify: Callable[[BaseException], Fault],
        held: Collection[str] = (),
        fences: list[tuple[int, int] | None] | None = None,
    ) -> BatchResult:
        """``process_batch`` by the policy, failures read by ``classify``; given up, the batch is
        split."""

        async def decide_and_commit() -> BatchResult:
            return await process_batch(
                self.registry, self.store, envelopes, self.clock(), self.limits, self.tracer, held, fences
            )

        def note(fault: Fault, error: BaseException, pause: float | None) -> None:
            self.counts.batch_failures[fault.value] += 1
            if fault is Fault.UNAVAILABLE:  # nothing is acked; the batch waits for the database
                self.database_trouble = printable(error)[:300]
                self._away(len(envelopes), error, pause)
            elif pause is not None:
                log.warning(
                    "batch of %d failed (%s: %s), again in %.2fs", len(envelopes), fault.value, error, pause
                )

        try:
            result = await attempt(decide_and_commit, classify, policy, note, self.sleep)
        except GaveUp as gave_up:
            return await self._isolate(envelopes, arrived, gave_up.fault, gave_up.error, held, fences)
        if self._away_since is not None:
            log.warning("batches commit again, after %.1fs", time.monotonic() - self._away_since)
        self.database_trouble, self._away_since, self._away_said = None, None, False
        self.last_commit = time.monotonic()
        self._committed(result.commands, result.decisions, min(arrived) if arrived else None)
        for service, message_id, saga_id in result.unchecked:
            self.counts.unchecked_replies[service] += 1
            log.warning(
                "took %s's message %s without a section 6 reply id (ORCHESTRATOR_UNCHECKED_REPLIES):"
                " its id should be uuid5(NAMESPACE_OID, '<command message_id>:<reply type>')",
                service,
                message_id,
                extra={"saga_id": saga_id, "message_id": message_id},
            )
        return result

    async def _isolate(
        self,
        envelopes: list[Envelope],
        arrived: list[float],
        fault: Fault,
        error: BaseException,
        held: Collection[str] = (),
        fences: list[tuple[int, int] | None] | None = None,
    ) -> BatchResult:
        """Split a failing batch in halves until the message at fault stands alone; set it aside.
        A message of the first half that had to wait (BUSY) holds its sagas for the second."""
        if len(envelopes) > 1:
            half = len(envelopes) // 2
            first, second = (fences[:half], fences[half:]) if fences is not None else (None, None)
            left = await self._commit(
                envelopes[:half], arrived[:half], SPLIT, self.store.classify, held, first
            )
            waiting = set(held).union(*left.waits)
            right = await self._commit(
                envelopes[half:], arrived[half:], SPLIT, self.store.classify, waiting, second
            )
            return _joined(left, right)
        envelope = envelopes[0]
        if envelope.refused is not None:  # even its dead letter failed: record it bare
            log.error("could not record the dead letter of %s: %s", printable(envelope.message_id), error)
            bare = Envelope(
                body=b"", message_id=envelope.message_id, type=envelope.type, refused=envelope.refused
            )
            return await self._commit([bare], arrived, BARE, _unavailable, (), fences)
        reason = Reason.DATABASE_REFUSED if fault is Fault.MESSAGE else Reason.FAILED_REPEATEDLY
        refused = Refused(reason, f"{type(error).__name__}: {error}")
        log.error(
            "message %s failed its batch (%s); setting it aside",
            printable(envelope.message_id),
            refused,
            extra={"message_id": envelope.message_id},
        )
        return await self._commit([envelope.refuse(refused)], arrived, SPLIT, self.store.classify, (), fences)


def _joined(left: BatchResult, right: BatchResult) -> BatchResult:
    return BatchResult(
        verdicts=left.verdicts + right.verdicts,
        refusals=left.refusals + right.refusals,
        commands=left.commands + right.commands,
        decisions=left.decisions + right.decisions,
        journal=left.journal + right.journal,
        waits=left.waits + right.waits,
        unchecked=left.unchecked + right.unchecked,
    )
