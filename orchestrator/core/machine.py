"""One ``transitions`` machine per workflow, shared by all its sagas, and the table it fills.

The machine is the authority on which trigger moves which state where, and on which commands that
sends: a rule's own ``send`` in ``before``, then the destination's ``on_enter``, in the order the
library calls them. Its answer depends on the state and the trigger alone (the callbacks only
collect builders), so each (state, trigger) the machine knows is fired once, when the workflow is
compiled, and the answers kept in :attr:`CompiledWorkflow.moves`. The engine reads only that
table: firing the machine per message (attaching a model, then detaching it) cost more than the
rest of a decision, and the table cannot say anything the machine did not.

What the machine does not hold, the workflow's definition does: what an event that moves nothing
does (:attr:`CompiledWorkflow.policies`, else the workflow's ``unexpected``), each state's status,
deadline and retry, the fields an event may not change, and the commands the initial state sends
(a saga's start is no transition).
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
    """A workflow compiled onto its ``transitions`` machine, with the machine's answers
    (:attr:`moves`) and the number of events one of its sagas may keep parked."""

    def __init__(self, workflow: Workflow, max_parked: int = DEFAULT_MAX_PARKED) -> None:
        if max_parked < 1:
            raise ValueError(f"max_parked must be at least 1, not {max_parked}")
        self.workflow = workflow.check()
        self.max_parked = max_parked
        #: the service's id key, once the registry is given it (Registry.use_id_key): commands'
        #: ids are keyed with it (orchestrator.core.ids); None: versioned, as the test kit runs
        self.id_key: bytes | None = None
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
        for rule in [*workflow.rules, *_derived_cancels(workflow)]:
            if rule.dest is None:
                continue
            event = self.machine.events.get(rule.event)
            if event is not None and event.transitions.get(rule.source):
                raise DefinitionError(f"{workflow.name}: {rule.event} in {rule.source} is declared twice")
            self.machine.add_transition(
                # ``before``: a transition's own sends go out ahead of the destination's on_enter,
                # which keeps fire-and-forget undos newest first.
                rule.event,
                rule.source,
                rule.dest,
                before=[partial(_collect, rule.send)],
            )
        #: Every (state, trigger) the machine moves on, with what firing it does, each state's in
        #: the order of the workflow's states (the diagram draws them so). Filled from the machine
        #: here and never otherwise: nothing else says what moves.
        self.moves: dict[tuple[str, str], Fired] = self._ask_all()
        self._fixed: dict[str, frozenset[str]] = {}
        self.policies = {(r.source, r.event): r.policy for r in workflow.rules if r.policy is not None}

    def use_id_key(self, key: bytes) -> None:
        """Key the ids of what this definition decides from now on with the service's id key."""
        self.id_key = key

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
        """What firing ``event_type`` on a saga in ``state`` does, as the machine answered it at
        compile time; MachineError where the machine has no such move."""
        try:
            return self.moves[(state, event_type)]
        except KeyError:
            raise MachineError(f"{self.workflow.name}: {event_type} does not move {state}") from None

    def _ask_all(self) -> dict[tuple[str, str], Fired]:
        """Fire every transition the machine has, once, on one model moved from state to state
        (attaching a model for each question costs about 50 µs)."""
        rank = {name: index for index, name in enumerate(self.machine.states)}
        pairs = sorted(
            (
                (source, trigger)
                for trigger, event in self.machine.events.items()
                for source in event.transitions
            ),
            key=lambda pair: rank[pair[0]],
        )
        answers: dict[tuple[str, str], Fired] = {}
        if not pairs:
            return answers
        model = _Model(pairs[0][0])
        self.machine.add_model(model, initial=model.state)
        try:
            for source, trigger in pairs:
                self.machine.set_state(source, model)
                model.sends, model.entered = [], []
                model.trigger(trigger)  # type: ignore[attr-defined]
                answers[(source, trigger)] = Fired(model.state, tuple(model.sends), tuple(model.entered))
        finally:
            self.machine.remove_model(model)
        return answers


def _derived_cancels(workflow: Workflow) -> list[Rule]:
    """A state without its own cancel route is cancelled the way its deadline would end it, unless
    its deadline is a wait's way on: that would move a cancelled saga forward."""
    declared = {r.source for r in workflow.rules if r.event == CANCEL}
    return [
        replace(rule, event=CANCEL)
        for rule in workflow.rules
        if rule.event == DEADLINE
        and rule.dest is not None
        and rule.source not in declared
        and not getattr(workflow.states.get(rule.source), "wait", False)
    ]


__all__ += ["MachineError"]
