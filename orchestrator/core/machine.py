"""One ``transitions`` machine per workflow, shared by all its sagas.

A saga is a row, not an object kept in memory: while one message is decided, a small model
carrying the saga's state is attached to the workflow's machine, the trigger is fired, and the
model is detached again. The machine's callbacks collect the commands to send into the model, so
the machine stays the single authority on which event moves which state where.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from transitions import Machine, MachineError

from orchestrator.core.definitions import CANCEL, DEADLINE, CommandBuilder, DefinitionError, Rule, Workflow

__all__ = ["DEFAULT_MAX_PARKED", "CompiledWorkflow", "Fired"]

#: How many events one saga may keep parked (``ORCHESTRATOR_MAX_PARKED``): past it, an event its
#: state would park is refused (dead-lettered) instead of growing the saga's row without end.
DEFAULT_MAX_PARKED = 100


@dataclass(eq=False)
class _Model:
    state: str
    sends: list[CommandBuilder] = field(default_factory=list)
    entered: list[CommandBuilder] = field(default_factory=list)


@dataclass(frozen=True)
class Fired:
    """What a trigger did: the state it reached, the transition's own commands, then the ones the
    state sends on entering (the ones a retry sends again)."""

    dest: str
    sends: tuple[CommandBuilder, ...]
    entered: tuple[CommandBuilder, ...] = ()


def _collect(builders: tuple[CommandBuilder, ...], event: Any) -> None:
    event.model.sends.extend(builders)


def _collect_entered(builders: tuple[CommandBuilder, ...], event: Any) -> None:
    event.model.entered.extend(builders)


class CompiledWorkflow:
    """A workflow compiled onto its ``transitions`` machine, with the number of events one of
    its sagas may keep parked."""

    def __init__(self, workflow: Workflow, max_parked: int = DEFAULT_MAX_PARKED) -> None:
        if max_parked < 1:
            raise ValueError(f"max_parked must be at least 1, not {max_parked}")
        self.workflow = workflow.check()
        self.max_parked = max_parked
        self.machine = Machine(
            model=None,
            states=[
                {
                    "name": spec.name,
                    "final": spec.final,
                    "on_enter": [partial(_collect_entered, spec.on_enter)],
                }
                for spec in workflow.states.values()
            ],
            initial=workflow.initial,
            auto_transitions=False,
            send_event=True,
        )
        self.moves: dict[tuple[str, str], Rule] = {}
        for rule in [*workflow.rules, *_derived_cancels(workflow)]:
            if rule.dest is None:
                continue
            if (rule.source, rule.event) in self.moves:
                raise DefinitionError(f"{workflow.name}: {rule.event} in {rule.source} is declared twice")
            self.moves[(rule.source, rule.event)] = rule
            self.machine.add_transition(
                # ``before``: a transition's own sends go out ahead of the destination's on_enter,
                # which keeps fire-and-forget undos newest first.
                rule.event,
                rule.source,
                rule.dest,
                before=[partial(_collect, rule.send)],
            )
        self._fired: dict[tuple[str, str], Fired] = {}
        self._fixed: dict[str, frozenset[str]] = {}
        self.policies = {(r.source, r.event): r.policy for r in workflow.rules if r.policy is not None}

    def moves_on(self, state: str, event_type: str) -> bool:
        return (state, event_type) in self.moves

    def fixed_fields(self, event_type: str) -> frozenset[str]:
        """The fields of a saga's data ``event_type`` may not change (remembered per type)."""
        fixed = self._fixed.get(event_type)
        if fixed is None:
            fixed = self._fixed[event_type] = self.workflow.fixed_fields(event_type)
        return fixed

    def enter(self) -> Fired:
        """Entering the initial state: the commands its ``on_enter`` sends."""
        spec = self.workflow.states[self.workflow.initial]  # type: ignore[index]
        return Fired(spec.name, (), spec.on_enter)

    def fire(self, state: str, event_type: str) -> Fired:
        """Fire ``event_type`` on a saga in ``state``; raises MachineError where it does not move.

        The machine's answer depends on the state and the trigger alone (its callbacks only
        collect builders), so it is asked once per pair and remembered: attaching a model costs
        more than everything else a decision does."""
        known = self._fired.get((state, event_type))
        if known is None:
            known = self._fired[(state, event_type)] = self._ask(state, event_type)
        return known

    def _ask(self, state: str, event_type: str) -> Fired:
        model = _Model(state)
        self.machine.add_model(model, initial=state)
        try:
            model.trigger(event_type)  # type: ignore[attr-defined]
        finally:
            self.machine.remove_model(model)
        return Fired(model.state, tuple(model.sends), tuple(model.entered))


def _derived_cancels(workflow: Workflow) -> list[Rule]:
    """A state without its own cancel route is cancelled the way its deadline would end it."""
    declared = {r.source for r in workflow.rules if r.event == CANCEL}
    return [
        replace(rule, event=CANCEL)
        for rule in workflow.rules
        if rule.event == DEADLINE and rule.dest is not None and rule.source not in declared
    ]


__all__ += ["MachineError"]
