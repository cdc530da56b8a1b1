"""The dry run before a deploy: what new workflow definitions would do to the sagas already written.

``orchestrator check --journals`` reads the journals of the sagas in flight (and, when asked, of
a sample of finished ones) and hands them here one saga at a time. Each journal is decided again
through the definition the new module would decide that saga by (:func:`replay.rebuild`, the
same replay ``orchestrator verify`` runs, never a second one), and compared with what it records.
A deploy that passes ``check`` on definitions alone can still strand sagas halfway: a step
renamed leaves the sagas sitting in it with a state nothing decides; a builder changed sends
participants something the sagas already in flight were not written for. This says so, saga
by saga, before the deploy rather than on each saga's next message after it.

Pure: the journals in, reports out. What is reported (:class:`Change`):

* ``gone_state``: the saga's state, or a state its journal passes through (an entry's ``from``
  or ``to``), is not a state of the new definition. The engine fails such a saga on its next
  message (an operator must resume it into a state that exists);
* ``different_command``: deciding an entry again sends another command than the entry records
  (its type, or its payload where the journal recorded payloads: an entry written before that
  is compared on command types, as ``verify`` does), or one more, or one fewer;
* ``different_outcome``: after an entry, the new definition gives another outcome, state or
  status than the entry records;
* ``no_definition``: the new module has no definition for the saga's workflow and release;
* ``refused``: the new definition raises while deciding the journal (any exception: one saga
  never stops the run);
* ``unchanged``: none of these, the journal replays as it was written.

A saga is *in flight* when its status is running, compensating or failed: a failed saga waits
for an operator, whose ``resume`` decides it by the new definition. What would change for one of
those would break it, and is an error; for a finished saga (completed or compensated), which
nothing decides any more, a change is a warning: sagas like it would go otherwise from now on.
Timers are not compared: a changed deadline leaves the ones already set as they are, and is no
break.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from orchestrator.core.definitions import Status
from orchestrator.core.journal import JournalEntry
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.replay import command_differences, rebuild

__all__ = [
    "IN_FLIGHT",
    "Change",
    "DefinitionFor",
    "DryRun",
    "Finding",
    "Journal",
    "SagaReport",
    "compare",
    "dry_run",
]

#: The definition the new module would decide a saga of ``(workflow, release)`` by; None when it
#: has none. A parameter, so that where releases come from is the caller's business.
DefinitionFor = Callable[[str, str], CompiledWorkflow | None]

#: The statuses of a saga something may still decide: its changes are errors. ``failed`` is one:
#: an operator may resume it, by the new definition.
IN_FLIGHT = frozenset({str(Status.RUNNING), str(Status.COMPENSATING), str(Status.FAILED)})


class Change(enum.StrEnum):
    """What the new definition would do otherwise to one saga (module docstring)."""

    GONE_STATE = "gone_state"
    DIFFERENT_COMMAND = "different_command"
    DIFFERENT_OUTCOME = "different_outcome"
    NO_DEFINITION = "no_definition"
    REFUSED = "refused"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Journal:
    """One saga as the dry run reads it: who it is and where its row stands, and its journal in
    ``seq`` order."""

    saga_id: str
    workflow: str
    release: str
    key: str
    state: str
    status: str
    entries: Sequence[JournalEntry]

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT


@dataclass(frozen=True)
class Finding:
    kind: Change
    detail: str


@dataclass(frozen=True)
class SagaReport:
    """What the dry run found for one saga; no findings: it is unchanged."""

    saga_id: str
    workflow: str
    release: str
    key: str
    state: str
    status: str
    in_flight: bool
    findings: tuple[Finding, ...] = ()

    @property
    def kinds(self) -> tuple[Change, ...]:
        return tuple(f.kind for f in self.findings) or (Change.UNCHANGED,)

    @property
    def severity(self) -> str:
        """``error`` for a saga in flight with findings (it would break), ``warning`` for a finished
        one, ``ok`` for an unchanged one."""
        if not self.findings:
            return "ok"
        return "error" if self.in_flight else "warning"

    def line(self) -> str:
        """``error: order release 1: saga o-7 (id ..., charge, running): <detail> [gone_state]; ...``:
        one line per saga, each finding's detail followed by its kind, as ``check`` ends a
        definition's finding with its code."""
        said = "; ".join(f"{f.detail} [{f.kind}]" for f in self.findings)
        said = said or f"replays as written [{Change.UNCHANGED}]"
        return (
            f"{self.severity}: {self.workflow} release {self.release}: saga {self.key}"
            f" (id {self.saga_id}, {self.state or 'no state'}, {self.status}): {said}"
        )


def _and_more(found: Sequence[str], one: str, many: str) -> str:
    """The first difference: the ones after it mostly follow from it (a saga that went elsewhere
    goes on differing), so they are counted, not listed."""
    more = len(found) - 1
    return found[0] + (f" (and {more} more {one if more == 1 else many})" if more else "")


def _outcome(outcome: str, to: str, status: str) -> str:
    return f"{outcome} to {to or 'no state'} ({status})"


def _gone_states(journal: Journal, compiled: CompiledWorkflow) -> Finding | None:
    states = compiled.workflow.states
    passed: dict[str, None] = {}
    for entry in journal.entries:
        for state in (entry.decision.get("from"), entry.decision.get("to")):
            if state and state not in states:
                passed[state] = None
    current = journal.state if journal.state and journal.state not in states else None
    passed.pop(current or "", None)
    said = []
    if current is not None:
        said.append(f"its state {current} is not a state of the new definition")
    if passed:
        names = ", ".join(passed)
        plural = len(passed) != 1
        said.append(
            f"its journal passes through {'states' if plural else 'state'} {names},"
            f" not {'states' if plural else 'a state'} of the new definition"
        )
    return Finding(Change.GONE_STATE, "; ".join(said)) if said else None


def compare(journal: Journal, definition_for: DefinitionFor) -> SagaReport:
    """One saga's journal decided again by the new definition, compared entry by entry with what
    it records (module docstring). Never raises: whatever the new definition raises is the
    saga's ``refused`` finding."""

    def report(*findings: Finding) -> SagaReport:
        return SagaReport(
            journal.saga_id,
            journal.workflow,
            journal.release,
            journal.key,
            journal.state,
            journal.status,
            journal.in_flight,
            findings,
        )

    try:
        compiled = definition_for(journal.workflow, journal.release)
    except Exception as error:  # the caller's lookup: still one saga's business
        return report(Finding(Change.REFUSED, f"its definition cannot be had: {_error(error)}"))
    if compiled is None:
        return report(
            Finding(
                Change.NO_DEFINITION,
                f"the new module has no definition of workflow {journal.workflow} release {journal.release}",
            )
        )
    findings: list[Finding] = []
    gone = _gone_states(journal, compiled)
    if gone is not None:
        findings.append(gone)
    try:
        # through the release each entry was decided by, where a migration moved the saga
        rebuilt = rebuild(
            compiled, journal.entries, lambda release: definition_for(journal.workflow, release)
        )
        commands = command_differences(journal.entries, rebuilt.commands)
    except Exception as error:  # a definition that raises while deciding: this saga's finding only
        said = f"the new definition raises while deciding it: {_error(error)}"
        findings.append(Finding(Change.REFUSED, said))
        return report(*findings)
    if commands:
        findings.append(Finding(Change.DIFFERENT_COMMAND, _and_more(commands, "difference", "differences")))
    outcomes = []
    for entry, (outcome, to, status) in zip(journal.entries, rebuilt.decided, strict=True):
        recorded = entry.decision
        was = (str(recorded.get("outcome")), str(recorded.get("to") or ""), str(recorded.get("status")))
        if was != (outcome, to, status):
            outcomes.append(
                f"journal #{entry.seq} ({entry.message.type}): recorded {_outcome(*was)},"
                f" the new definition gives {_outcome(outcome, to, status)}"
            )
    if outcomes:
        findings.append(Finding(Change.DIFFERENT_OUTCOME, _and_more(outcomes, "entry", "entries")))
    return report(*findings)


def _error(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


#: The kinds in the order the summary lists them: what breaks a saga first.
KINDS = (
    Change.NO_DEFINITION,
    Change.REFUSED,
    Change.GONE_STATE,
    Change.DIFFERENT_COMMAND,
    Change.DIFFERENT_OUTCOME,
    Change.UNCHANGED,
)


@dataclass
class DryRun:
    """The run so far: the reports of the sagas with findings (errors first when read through
    :meth:`reported`), and the count of sagas per kind, in flight and finished. A saga with
    several findings counts under each of their kinds; the totals count it once."""

    in_flight: int = 0
    finished: int = 0
    breaking: int = 0
    differing: int = 0
    counts: dict[tuple[Change, bool], int] = field(default_factory=dict)
    errors: list[SagaReport] = field(default_factory=list)
    warnings: list[SagaReport] = field(default_factory=list)

    def add(self, report: SagaReport) -> None:
        if report.in_flight:
            self.in_flight += 1
        else:
            self.finished += 1
        for kind in report.kinds:
            self.counts[kind, report.in_flight] = self.counts.get((kind, report.in_flight), 0) + 1
        if report.findings:
            if report.in_flight:
                self.breaking += 1
                self.errors.append(report)
            else:
                self.differing += 1
                self.warnings.append(report)

    @classmethod
    def merged(cls, runs: Iterable[DryRun]) -> DryRun:
        """Runs over disjoint parts of the sagas (one per process) as one, its reports in saga id
        order as each part's are."""
        runs = list(runs)
        whole = cls()
        for run in runs:
            whole.in_flight += run.in_flight
            whole.finished += run.finished
            whole.breaking += run.breaking
            whole.differing += run.differing
            for kind, count in run.counts.items():
                whole.counts[kind] = whole.counts.get(kind, 0) + count
        by_id: Callable[[SagaReport], str] = attrgetter("saga_id")
        whole.errors = list(heapq.merge(*(r.errors for r in runs), key=by_id))
        whole.warnings = list(heapq.merge(*(r.warnings for r in runs), key=by_id))
        return whole

    def reported(self) -> list[SagaReport]:
        """The sagas with findings: those in flight (errors), then finished ones (warnings)."""
        return [*self.errors, *self.warnings]

    def summary(self) -> list[str]:
        """The summary lines: totals, then each kind's count of sagas, in flight and finished."""
        unchanged = sum(self.counts.get((Change.UNCHANGED, flying), 0) for flying in (True, False))
        lines = [
            f"replayed {self.in_flight + self.finished} journals ({self.in_flight} in flight,"
            f" {self.finished} finished): {self.breaking} in flight would break,"
            f" {self.differing} finished would go otherwise, {unchanged} unchanged"
        ]
        width = max(len(kind) for kind in KINDS)
        for kind in KINDS:
            flying, done = self.counts.get((kind, True), 0), self.counts.get((kind, False), 0)
            lines.append(f"  {kind:<{width}}  {flying} in flight, {done} finished")
        return lines


def dry_run(journals: Iterable[Journal], definition_for: DefinitionFor) -> DryRun:
    """Every journal compared (:func:`compare`), as they come: a stream of any length is read
    once and only the sagas with findings are kept."""
    run = DryRun()
    for journal in journals:
        run.add(compare(journal, definition_for))
    return run
