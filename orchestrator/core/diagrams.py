"""A workflow as operators read it: its definition as plain data, and a mermaid state diagram.

Pure. The diagram's edges are the compiled workflow's moves, the machine's own answers (see
:mod:`orchestrator.core.machine`), so it draws what the engine does, derived cancels included;
what the machine does not hold (deadline durations, park/ignore/fail policies, statuses) comes
from the definition. It is not ``transitions``' own mermaid output (``GraphMachine(graph_engine=
"mermaid")``, 0.9): that draws a model's graph (a model attached, with its current state styled),
writes a state's name unquoted after ``as`` (a name with ``:`` or a space breaks the diagram), and
knows nothing of deadlines, policies or statuses, so it could not give this shape without being
parsed and rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from orchestrator.core.definitions import (
    CANCEL,
    DEADLINE,
    GROUP_DONE,
    GROUP_FAILED,
    GROUP_UNDONE,
    GroupSpec,
    StateSpec,
    Status,
    Workflow,
)
from orchestrator.core.machine import Fired

__all__ = ["RuleView", "StateView", "WorkflowView", "describe", "mermaid"]

_PLAIN_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Words mermaid's state grammar reads as keywords, so never used bare as a state id.
_RESERVED = {"state", "note", "end", "direction", "classDef", "class", "as", "left", "right", "of"}


@dataclass(frozen=True)
class RetryView:
    every_seconds: float
    backoff: float
    max_every_seconds: float | None


@dataclass(frozen=True)
class StateView:
    name: str
    status: str
    final: bool
    initial: bool
    deadline_seconds: float | None
    on_deadline: str | None
    retry: RetryView | None
    sends: list[str]
    #: the field of the saga's data whose time the deadline falls due at (None: a duration)
    until: str | None = None
    #: the deadline is the way on (a wait), not a failure
    wait: bool = False


@dataclass(frozen=True)
class RuleView:
    event: str
    source: str
    dest: str | None
    policy: str | None
    sends: list[str]


@dataclass(frozen=True)
class WorkflowView:
    name: str
    description: str
    starts_on: str
    key: str
    initial: str
    unexpected: str
    events: list[str]
    states: list[StateView]
    rules: list[RuleView]
    #: the events that cancel a saga wherever it is (``Workflow.cancelled_by``)
    cancel_on: list[str] = field(default_factory=list)
    #: parallel groups: the state the saga waits in -> its branches (steps), in order
    groups: dict[str, list[str]] = field(default_factory=dict)
    #: child steps: the state that waits for a child saga -> the child's workflow
    children: dict[str, str] = field(default_factory=dict)


def command_name(builder: Any) -> str:
    """What a builder sends: its message type when it declares one, else the builder's name."""
    message_type = getattr(builder, "message_type", None)
    if isinstance(message_type, str):
        return message_type
    return str(getattr(builder, "__qualname__", None) or getattr(builder, "__name__", None) or builder)


def _seconds(value: timedelta | None) -> float | None:
    return value.total_seconds() if value is not None else None


def describe(workflow: Workflow) -> WorkflowView:
    states = [
        StateView(
            name=spec.name,
            status=str(spec.status),
            final=spec.final,
            initial=spec.name == workflow.initial,
            deadline_seconds=_seconds(spec.deadline),
            on_deadline=spec.on_deadline,
            retry=RetryView(
                spec.retry.every.total_seconds(), spec.retry.backoff, _seconds(spec.retry.max_every)
            )
            if spec.retry is not None
            else None,
            sends=[command_name(b) for b in spec.on_enter],
            until=spec.until,
            wait=spec.wait,
        )
        for spec in workflow.states.values()
    ]
    rules = [
        RuleView(
            rule.event,
            rule.source,
            rule.dest,
            str(rule.policy) if rule.policy is not None else None,
            [command_name(b) for b in rule.send],
        )
        for rule in workflow.rules
    ]
    return WorkflowView(
        name=workflow.name,
        description=workflow.description.strip(),
        starts_on=workflow.starts_on.TYPE,
        key=workflow.key,
        initial=workflow.initial or "",
        unexpected=str(workflow.unexpected),
        events=sorted(workflow.events),
        states=states,
        rules=rules,
        cancel_on=sorted(workflow.cancel_events),
        groups={g.name: [b.name for b in g.branches] for g in workflow.groups.values()},
        children=dict(workflow.children),
    )


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


#: A group's triggers, as the diagram says them: (from compensating_<group>, from the group)
_GROUP_LABELS = {
    GROUP_DONE: ("all done", "all done"),
    GROUP_FAILED: ("a compensation failed", "a branch failed or timed out"),
    GROUP_UNDONE: ("all undone", "all undone"),
}


def _group_lines(group: GroupSpec, outer: str) -> list[str]:
    """A group as a composite state: a fork into its branches, each ending in the join, in
    parallel regions (mermaid's ``--``)."""
    lines = [f"    state {outer} {{"]
    for index, branch in enumerate(group.branches):
        if index:
            lines.append("        --")
        inner = f"{outer}__{branch.name}"
        lines.append(f"        {inner}: {_label(f'{branch.name} {command_name(branch.send)}')}")
        lines.append(f"        [*] --> {inner}")
        lines.append(f"        {inner} --> [*]: {_label(branch.done.TYPE)}")
    lines.append("    }")
    return lines


def _deadline_label(spec: StateSpec) -> str:
    """A deadline's edge: how long (or until which field of the data), and whether it is a wait's
    way on rather than a failure."""
    if spec.until is not None:
        when = f"until {spec.until}"
    elif spec.deadline is not None:
        when = _duration(spec.deadline.total_seconds())
    else:
        when = ""
    return f"wait {when}".strip() if spec.wait else f"deadline {when}".strip()


def _label(text: str) -> str:
    """Edge and note text: mermaid ends a label at a newline and reads ``:`` and ``;`` as syntax."""
    return re.sub(r"[\r\n:;#]", " ", text).strip()


def mermaid(workflow: Workflow, moves: Mapping[tuple[str, str], Fired] | None = None) -> str:
    """``stateDiagram-v2`` source: every move, deadline and cancel as an edge, policies as notes.

    ``moves`` are the compiled workflow's (:attr:`~orchestrator.core.machine.CompiledWorkflow.moves`):
    the machine's answers, which include the cancels the compiler derives for states that declare
    none. Without them the edges are the definition's rules, as declared.
    """
    ids: dict[str, str] = {}
    lines = ["stateDiagram-v2"]
    for index, name in enumerate(workflow.states):
        if _PLAIN_ID.match(name) and name not in _RESERVED:
            ids[name] = name
        else:
            ids[name] = f"s{index}"
            lines.append(f'    state "{_label(name).replace(chr(34), chr(39))}" as s{index}')
    for group in workflow.groups.values():
        if ids.get(group.name) == group.name:  # a plain id: a composite state can be drawn
            lines.extend(_group_lines(group, group.name))
    if workflow.initial is not None:
        lines.append(f"    [*] --> {ids[workflow.initial]}: {_label(workflow.starts_on.TYPE)}")
    edges: dict[tuple[str, str], list[str]] = {}
    if moves is None:
        declared = [(r.source, r.event, r.dest) for r in workflow.rules]
    else:
        declared = [(source, event, fired.dest) for (source, event), fired in moves.items()]
    for source, event, dest in declared:
        if dest is None or source not in ids or dest not in ids:
            continue
        if event == DEADLINE:
            label = _deadline_label(workflow.states[source])
        elif event == CANCEL:
            if workflow.states[source].status is Status.COMPENSATING:
                continue  # a compensating saga is not cancelled (the engine refuses it)
            label = " / ".join(["cancel", *sorted(workflow.cancel_events)])
        elif event in _GROUP_LABELS:
            label = _GROUP_LABELS[event][source in workflow.groups]
        else:
            label = event
        labels = edges.setdefault((source, dest), [])
        if label not in labels:
            labels.append(label)
    for (source, dest), labels in edges.items():
        lines.append(f"    {ids[source]} --> {ids[dest]}: {_label(' / '.join(labels))}")
    policies: dict[str, list[str]] = {}
    for state, child in workflow.children.items():  # the link to the child's own diagram
        policies.setdefault(state, []).append(f"child saga {child}")
    for rule in workflow.rules:
        if rule.policy is not None:
            policies.setdefault(rule.source, []).append(f"{rule.policy} {rule.event}")
    for state, notes in policies.items():
        lines.append(f"    note right of {ids[state]}: {_label(', '.join(notes))}")
    for spec in workflow.states.values():
        if spec.final:
            lines.append(f"    {ids[spec.name]} --> [*]")
    by_status: dict[str, list[str]] = {}
    for spec in workflow.states.values():
        by_status.setdefault(str(spec.status), []).append(ids[spec.name])
    styles = {
        "compensating": "fill:#fff3cd,stroke:#b58900",
        "completed": "fill:#d4edda,stroke:#2e7d32",
        "compensated": "fill:#e2e3e5,stroke:#6c757d",
        "failed": "fill:#f8d7da,stroke:#c62828",
    }
    for status, style in styles.items():
        if status in by_status:
            lines.append(f"    classDef status_{status} {style}")
            lines.append(f"    class {','.join(by_status[status])} status_{status}")
    return "\n".join(lines) + "\n"
