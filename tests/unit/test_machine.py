"""The ``transitions`` machine decides what moves; the compiled table only keeps its answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from transitions import MachineError

from orchestrator.core.definitions import DefinitionError, Workflow
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS
from orchestrator.examples.contracts import BuyerSigned, EscrowOpened, RequestBuyerSignature

compiled = Registry(WORKFLOWS).workflows


@dataclass(eq=False)
class _Probe:
    state: str
    sends: list[Any] = field(default_factory=list)
    entered: list[Any] = field(default_factory=list)


@pytest.mark.parametrize("name", sorted(compiled))
def test_the_table_is_the_machines_answer_for_each_move_it_has(name: str) -> None:
    workflow = compiled[name]
    machine = workflow.machine
    asked = set()
    for trigger, event in machine.events.items():
        for source in event.transitions:
            probe = _Probe(source)
            machine.add_model(probe, initial=source)
            try:
                probe.trigger(trigger)  # type: ignore[attr-defined]
            finally:
                machine.remove_model(probe)
            fired = workflow.fire(source, trigger)
            assert (fired.dest, list(fired.sends), list(fired.entered)) == (
                probe.state,
                probe.sends,
                probe.entered,
            )
            asked.add((source, trigger))

    assert asked == set(workflow.moves)


def test_what_the_machine_does_not_move_is_no_move() -> None:
    order = compiled["order"]

    assert not order.moves_on("reserve", "payment.PaymentCharged")
    with pytest.raises(MachineError, match=r"payment\.PaymentCharged does not move reserve"):
        order.fire("reserve", "payment.PaymentCharged")


def test_the_moves_are_listed_state_by_state() -> None:
    escrow = compiled["escrow"]
    order = list(escrow.workflow.states)

    sources = [order.index(source) for source, _ in escrow.moves]

    assert sources == sorted(sources)


def test_a_move_declared_twice_is_refused() -> None:
    twice = Workflow("twice", starts_on=EscrowOpened, key="escrow_id")
    twice.state("waiting", send=RequestBuyerSignature)
    twice.state("signed", final=True)
    twice.state("other", final=True)
    twice.on(BuyerSigned, source="waiting", dest="signed")
    twice.on(BuyerSigned, source="waiting", dest="other")

    with pytest.raises(DefinitionError, match="declared twice"):
        CompiledWorkflow(twice)
