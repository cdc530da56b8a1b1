"""What a workflow's definition says about itself, before any saga runs it (``orchestrator check``).

Pure: a :class:`~orchestrator.core.definitions.Workflow` in, findings out, read from the moves
its machine answers (:attr:`CompiledWorkflow.moves`, the same table the engine reads, so the
cancels the compiler derives are in it) and from the definition (states, finals, deadlines). Each
finding names the workflow, and the state and the event it is about where there is one.

Errors (a saga could sit somewhere forever, or the definition says something that cannot happen):

* ``refused``: the definition is refused when compiled (an unknown state, a move declared twice);
* ``no_way_out``: a non-final state without a deadline that no event moves out of (a self-loop
  or an operator's cancel is no way out: without an operator the saga stays there);
* ``never_finishes``: a non-final state whose ways out all lead to states that never reach a
  final state (a cycle without deadline or exit);
* ``unreachable``: a state that neither the initial state nor any move (an event, a deadline, a
  cancel) leads to. A final state of status ``failed`` is not reported: a step saga always has
  one (``failed``) and an ``Undo`` chain its ``<name>_failed``, whether or not anything leads there.

Warnings (true of the definition, maybe intended):

* ``unhandled_event``: an event type the workflow declares (it takes it from the broker) that no
  rule of a reachable non-final state handles, the start event apart: each one is ignored, parked or fails
  its saga, as the workflow's ``unexpected`` says;
* ``uncompensated_step``: in a step saga (a ``Saga`` subclass), a step without a compensation
  followed by a step that can fail (``failed=`` or a deadline): when that one fails, this step
  stays done. Read from the class's ``Step`` objects: a compiled workflow does not say which of
  its states are steps (a free machine's states have no compensation to declare), so a free
  ``Workflow`` gets no such finding;
* ``reply_not_awaited``: a command nobody waits for, sent on a move into a final state (the
  move's own ``send=``, the final state's ``send=`` or plain ``compensate=``) or, in a step saga,
  a compensation without ``done=``: its reply, if the participant sends one, is journaled on the
  saga as ignored. One finding per state, event and command: a cancel that sends the same as the
  state's deadline (the cancel the compiler derives from it) is not listed again. A command a
  move sends into a non-final state is not reported: the state may take its reply, and the
  reply's type is not declared anywhere to tell. Nor is a step's undo sent for a late success
  (``late_success``): that is by design, the saga having moved on;
* ``resume_only``: a step saga's ``compensating_<step>`` that no move leads to (its step is the
  last one that can be compensated): an operator's ``resume`` may enter it, and its compensation
  undoes the step's late success, sent once without entering it;
* ``upcaster_missing``: an event class at ``SCHEMA`` n > 1 without an upcaster from some version
  below n: a message of that version or older is dead-lettered (``schema_version``), and a
  journal entry of it cannot be replayed (``verify`` reports it). Intended where no sender and no
  journal holds those versions any more.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, get_type_hints

from orchestrator.core.definitions import CANCEL, DefinitionError, Policy, Status, Workflow
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.steps import ChildStep, Saga, Step
from orchestrator.core.upcasting import registered

__all__ = ["Finding", "Severity", "check", "check_all", "command_label", "saga_class"]


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One thing the check found: ``state`` and ``event`` are None where it is about none."""

    severity: Severity
    code: str
    workflow: str
    message: str
    state: str | None = None
    event: str | None = None

    def line(self) -> str:
        """``error: order: state reserve, event inventory.StockReserved: <message> [code]``."""
        where = ", ".join(
            part
            for part in (
                f"state {self.state}" if self.state is not None else "",
                f"event {self.event}" if self.event is not None else "",
            )
            if part
        )
        place = f"{self.workflow}: {where}: " if where else f"{self.workflow}: "
        return f"{self.severity}: {place}{self.message} [{self.code}]"


def command_label(build: Callable[..., Any]) -> str:
    """A command builder's message type when it declares one, else its name (the type unknown)."""
    message_type = getattr(build, "message_type", None)
    if isinstance(message_type, str) and message_type:
        return message_type
    return f"{getattr(build, '__qualname__', repr(build))} (type unknown)"


def saga_class(workflow: Workflow) -> type[Saga] | None:
    """The ``Saga`` subclass ``workflow`` was compiled from, if it was (a copy made with
    ``with_deadlines`` is not: it is checked as a free machine)."""
    pending: list[type[Saga]] = list(Saga.__subclasses__())
    while pending:
        cls = pending.pop()
        if vars(cls).get("workflow") is workflow:
            return cls
        pending.extend(cls.__subclasses__())
    return None


def check_all(workflows: Iterable[Workflow]) -> list[Finding]:
    """The findings of every workflow, errors first, then warnings, each in workflow order; two
    workflows of one name and release are an error (``orchestrator run`` refuses them), and so
    are several releases of one name none or more than one of which is marked current."""
    found: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    named: dict[str, list[Workflow]] = {}
    for workflow in workflows:
        if (workflow.name, workflow.release) in seen:
            found.append(Finding(Severity.ERROR, "refused", workflow.name, "two workflows are called so"))
            continue
        seen.add((workflow.name, workflow.release))
        named.setdefault(workflow.name, []).append(workflow)
    for workflow in [w for loaded in named.values() for w in loaded]:
        findings = check(workflow)
        if len(named[workflow.name]) > 1:  # say which release each finding is about
            label = f"{workflow.name} release {workflow.release}"
            findings = [dataclasses.replace(f, workflow=label) for f in findings]
        found.extend(findings)
    found.extend(_children_missing(named))
    found.extend(_child_cycles(named))
    for name, loaded in named.items():
        if len(loaded) > 1 and sum(w.current for w in loaded) != 1:
            releases = ", ".join(sorted(w.release for w in loaded))
            found.append(
                Finding(
                    Severity.ERROR,
                    "refused",
                    name,
                    f"releases {releases} are loaded: mark exactly one current=True",
                )
            )
    return sorted(found, key=lambda f: f.severity is not Severity.ERROR)


def _children_missing(named: dict[str, list[Workflow]]) -> list[Finding]:
    """A child step whose workflow is not loaded beside its parent: its start would be refused
    (``unknown_workflow``) and the step would wait until its deadline, every time."""
    return [
        Finding(
            Severity.ERROR,
            "child_not_loaded",
            workflow.name,
            f"starts a {child} saga as its child, and no workflow {child!r} is loaded: load its"
            " module beside this one (--workflows)",
            state,
        )
        for loaded in named.values()
        for workflow in loaded
        for state, child in sorted(workflow.children.items())
        if child not in named
    ]


def _child_cycles(named: dict[str, list[Workflow]]) -> list[Finding]:
    """A workflow that starts itself, through its children: each saga would start another, with
    a key its data gives, and the chain ends only where the data says so."""
    edges = {name: {c for w in loaded for c in w.children.values()} for name, loaded in named.items()}
    found: list[Finding] = []
    for start in sorted(edges):
        path, seen, pending = {start: [start]}, set(), [start]
        while pending:
            at = pending.pop()
            for nxt in sorted(edges.get(at, ())):
                if nxt == start:
                    cycle = " -> ".join([*path[at], start])
                    found.append(
                        Finding(Severity.ERROR, "child_cycle", start, f"a cycle of child sagas: {cycle}")
                    )
                    pending.clear()
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    path[nxt] = [*path[at], nxt]
                    pending.append(nxt)
    return found


def check(workflow: Workflow) -> list[Finding]:
    """What is wrong, or worth knowing, about one workflow's definition: errors, then warnings."""
    try:
        compiled = CompiledWorkflow(workflow)
    except DefinitionError as error:
        return [Finding(Severity.ERROR, "refused", workflow.name, f"the definition is refused: {error}")]
    cls = saga_class(workflow)
    steps = [v for v in vars(cls).values() if isinstance(v, Step)] if cls is not None else []
    graph = _Graph(compiled)
    errors = [*_stuck(graph), *_unreachable(graph)]
    warnings = [
        *_lone_branches(workflow),
        *_resume_only(graph),
        *_unhandled(graph),
        *_uncompensated(workflow, steps),
        *_not_awaited(graph, cls.__name__ if cls is not None else "", steps),
        *_replies_from_elsewhere(workflow, steps),
        *_upcasters_missing(workflow),
    ]
    return errors + warnings


class _Graph:
    """The moves as edges: ``out[state]`` lists (trigger, dest) in the workflow's order."""

    def __init__(self, compiled: CompiledWorkflow) -> None:
        self.compiled = compiled
        self.workflow = compiled.workflow
        self.states = list(self.workflow.states)
        self.out: dict[str, list[tuple[str, str]]] = {name: [] for name in self.states}
        for (source, trigger), fired in compiled.moves.items():
            self.out[source].append((trigger, fired.dest))
        #: the states some saga can be in: the initial one, and where any move from those leads
        self.reachable = self._reach([self.workflow.initial] if self.workflow.initial else [])

    def _reach(self, start: Sequence[str]) -> set[str]:
        seen = set(start)
        pending = list(start)
        while pending:
            for _, dest in self.out[pending.pop()]:
                if dest not in seen:
                    seen.add(dest)
                    pending.append(dest)
        return seen

    def final(self, state: str) -> bool:
        return self.workflow.states[state].final

    def finishes(self) -> set[str]:
        """The states from which some sequence of events and deadlines (no operator) reaches a
        final state."""
        into: dict[str, list[str]] = {name: [] for name in self.states}
        for source, moves in self.out.items():
            for trigger, dest in moves:
                if trigger != CANCEL:
                    into[dest].append(source)
        seen = {name for name in self.states if self.final(name)}
        pending = list(seen)
        while pending:
            for source in into[pending.pop()]:
                if source not in seen:
                    seen.add(source)
                    pending.append(source)
        return seen


def _stuck(graph: _Graph) -> list[Finding]:
    found: list[Finding] = []
    finishes = graph.finishes()
    name = graph.workflow.name
    for state in graph.states:
        spec = graph.workflow.states[state]
        if spec.final:
            continue
        exits = [(t, d) for t, d in graph.out[state] if d != state and t != CANCEL]
        if not exits and spec.deadline is None:
            cancel = [d for t, d in graph.out[state] if t == CANCEL]
            how = f"; only an operator's cancel leads out (to {cancel[0]})" if cancel else ""
            found.append(
                Finding(
                    Severity.ERROR,
                    "no_way_out",
                    name,
                    f"a saga here waits forever: no deadline, and no event moves it out{how}",
                    state,
                )
            )
        elif state not in finishes:
            leads = ", ".join(sorted({d for _, d in exits}))
            said = (
                f"every way out leads to states ({leads}) from which no event or deadline reaches a"
                " final state"
                if exits
                else "its deadline leads back to it, and no event moves it out"
            )
            found.append(
                Finding(Severity.ERROR, "never_finishes", name, f"a saga here never finishes: {said}", state)
            )
    return found


def _compensates_late(workflow: Workflow, state: str) -> str | None:
    """The step whose compensation ``state`` is, where that step's late success is undone (a step
    saga's ``compensating_<step>``): an operator's resume target even where no move leads to it."""
    step = state.removeprefix("compensating_")
    spec = workflow.states[state]
    if step != state and spec.status is Status.COMPENSATING and step in workflow.late_success:
        return step
    return None


def _unreachable(graph: _Graph) -> list[Finding]:
    found: list[Finding] = []
    for state in graph.states:
        spec = graph.workflow.states[state]
        if state in graph.reachable or (spec.final and spec.status is Status.FAILED):
            continue
        if _compensates_late(graph.workflow, state) is not None:
            continue  # a warning of its own (_resume_only)
        sources = sorted({s for s, moves in graph.out.items() for _, d in moves if d == state and s != state})
        if sources:
            said = f"only {', '.join(sources)} lead{'s' * (len(sources) == 1)} to it, and no saga gets there"
        else:
            said = "no event, deadline or cancel leads to it"
        found.append(
            Finding(
                Severity.ERROR,
                "unreachable",
                graph.workflow.name,
                f"no saga can be in this state: it is not where sagas start, and {said}",
                state,
            )
        )
    return found


def _lone_branches(workflow: Workflow) -> list[Finding]:
    """A parallel group of one step is a step that costs a group's bookkeeping."""
    return [
        Finding(
            Severity.WARNING,
            "lone_branch",
            workflow.name,
            f"a parallel group of one step ({group.branches[0].name}): make it a plain step",
            group.name,
        )
        for group in workflow.groups.values()
        if len(group.branches) == 1
    ]


def _resume_only(graph: _Graph) -> list[Finding]:
    """The compensating state of a step saga's last compensated step: no later step can fail, so
    no move leads to it, but it is compiled, an operator may resume a saga into it, and its
    builder is what undoes the step's late success. A correct definition: a warning, not an
    error, so that a gate on ``check`` passes what ``run`` accepts. Not said where a completed
    saga reopened by its parent enters it (``Workflow.reopen``): then it is no resume target only."""
    found: list[Finding] = []
    reopen = graph.workflow.reopen[0] if graph.workflow.reopen is not None else None
    for state in graph.states:
        step = _compensates_late(graph.workflow, state)
        if step is None or state in graph.reachable or state == reopen:
            continue
        found.append(
            Finding(
                Severity.WARNING,
                "resume_only",
                graph.workflow.name,
                f"only an operator's resume enters it: no later step can fail, and a late success of"
                f" {step} is undone by sending its compensation once, without entering this state",
                state,
            )
        )
    return found


#: What the engine does with an event no rule of the saga's state names (the workflow's ``unexpected``).
_UNEXPECTED = {
    Policy.IGNORE: "is journaled as ignored",
    Policy.PARK: "is parked and never fits",
    Policy.FAIL: "fails the saga it comes to",
}


def _unhandled(graph: _Graph) -> list[Finding]:
    workflow = graph.workflow
    found: list[Finding] = []
    grouped = {
        e.TYPE
        for g in workflow.groups.values()
        for b in g.branches
        for e in (b.done, b.failed, *((b.undo.done, b.undo.failed) if b.undo else ()))
        if e is not None
    }
    for event_type in workflow.events:
        if event_type == workflow.starts_on.TYPE or event_type in workflow.cancel_events:
            continue  # a cancel event is handled wherever a cancel is
        if event_type in grouped:
            continue  # a branch's reply: told by its reply id, not by a rule
        handled_in = [r.source for r in workflow.rules if r.event == event_type]
        if any(source in graph.reachable and not graph.final(source) for source in handled_in):
            continue
        said = (
            f"only states where no saga waits ({', '.join(sorted(set(handled_in)))}: unreachable or"
            " final) have a rule for it"
            if handled_in
            else "no state has a rule for it"
        )
        found.append(
            Finding(
                Severity.WARNING,
                "unhandled_event",
                workflow.name,
                f"declared (taken from the broker) but handled nowhere: {said}; each one"
                f" {_UNEXPECTED[workflow.unexpected]} (unexpected={workflow.unexpected})",
                event=event_type,
            )
        )
    return found


def _upcasters_missing(workflow: Workflow) -> list[Finding]:
    found: list[Finding] = []
    for event_type, cls in workflow.events.items():
        chain = registered(cls)
        missing = [version for version in range(1, cls.SCHEMA) if version not in chain]
        if missing:
            last = missing[-1]
            found.append(
                Finding(
                    Severity.WARNING,
                    "upcaster_missing",
                    workflow.name,
                    f"schema {cls.SCHEMA} has no upcaster from {last} to {last + 1}: a message of"
                    f" schema {last} or older is dead-lettered (schema_version), and a journal"
                    " entry of one cannot be replayed",
                    event=event_type,
                )
            )
    return found


def _can_fail(s: Step) -> bool:
    return s.failed is not None or s.deadline is not None


def _uncompensated(workflow: Workflow, steps: Sequence[Step]) -> list[Finding]:
    found: list[Finding] = []
    for index, s in enumerate(steps):
        if s.compensation is not None:
            continue
        failing = [later.name for later in steps[index + 1 :] if _can_fail(later)]
        if not failing:
            continue
        found.append(
            Finding(
                Severity.WARNING,
                "uncompensated_step",
                workflow.name,
                f"this step has no compensation, and a later step can fail ({', '.join(failing)}):"
                f" when it does, what {s.name} did is not undone",
                s.name,
                s.done.TYPE,
            )
        )
    return found


def _not_awaited(graph: _Graph, saga: str, steps: Sequence[Step]) -> list[Finding]:
    workflow = graph.workflow
    found: list[Finding] = []
    forgotten: set[str] = set()  # reported per step below, not per move that sends them
    for s in steps:
        comp = s.compensation
        if comp is None or comp.done is not None:
            continue
        forgotten.add(f"{saga}.{comp.method.__name__}")  # its builder's name (steps._builder)
        label = _step_label(comp.method)
        found.append(
            Finding(
                Severity.WARNING,
                "reply_not_awaited",
                workflow.name,
                f"its compensation {label} has no done=: it is sent and nobody waits for its reply,"
                " which is journaled as ignored; an undo that is lost is not sent again",
                s.name,
            )
        )
    said: set[tuple[str, str, str]] = set()
    # a cancel that sends what the same state's deadline sends, to the same state, is said once
    moves = sorted(graph.compiled.moves.items(), key=lambda move: move[0][1] == CANCEL)
    for (source, trigger), fired in moves:
        if not graph.final(fired.dest):
            continue
        for build in [*fired.sends, *fired.entered]:
            where = (source, fired.dest, command_label(build))
            if getattr(build, "__qualname__", None) in forgotten or (trigger == CANCEL and where in said):
                continue
            said.add(where)
            found.append(
                Finding(
                    Severity.WARNING,
                    "reply_not_awaited",
                    workflow.name,
                    f"sends {command_label(build)} on the way into final state {fired.dest}: nobody"
                    " waits for its reply, which is journaled as ignored",
                    source,
                    trigger,
                )
            )
    return found


def _service(message_type: str) -> str:
    return message_type.split(".", 1)[0]


def _replies_from_elsewhere(workflow: Workflow, steps: Sequence[Step]) -> list[Finding]:
    """A reply whose type names another service than its command's: a participant answers under
    its own prefix, and the broker's topic permissions (docs/security.md) refuse it anything else,
    so that one service cannot answer for another."""
    found: list[Finding] = []
    for s in steps:
        if isinstance(s, ChildStep):  # its outcome comes from the orchestrator itself
            continue
        pairs: list[tuple[Callable[..., Any], tuple[type[Any] | None, ...]]] = [
            (s.method, (s.done, s.failed))
        ]
        if s.compensation is not None:
            pairs.append((s.compensation.method, (s.compensation.done, s.compensation.failed)))
        for method, replies in pairs:
            command = _step_label(method)
            if "." not in command or " " in command:  # the type unknown: nothing to compare
                continue
            for reply in replies:
                reply_type = getattr(reply, "TYPE", None)
                if isinstance(reply_type, str) and _service(reply_type) != _service(command):
                    found.append(
                        Finding(
                            Severity.WARNING,
                            "reply_from_another_service",
                            workflow.name,
                            f"{reply_type} answers {command}, which goes to service {_service(command)}:"
                            f" a reply carries its service's prefix, and with one broker user per service"
                            f" (docs/security.md) {_service(command)} may not publish it",
                            s.name,
                            reply_type,
                        )
                    )
    return found


def _step_label(method: Callable[..., Any]) -> str:
    """A compensation's command type, read from its return annotation as the compiler reads it."""
    try:
        returns = get_type_hints(method).get("return")
    except Exception:  # an annotation that cannot be resolved: name the method instead
        returns = None
    message_type = getattr(returns, "TYPE", None)
    return message_type if isinstance(message_type, str) else f"{method.__qualname__} (type unknown)"
