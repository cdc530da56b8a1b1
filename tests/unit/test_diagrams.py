"""Workflow definitions as operators read them, and their mermaid diagrams."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.core.definitions import PARK, Retry, Workflow
from orchestrator.core.diagrams import describe, mermaid
from orchestrator.core.routing import Registry
from orchestrator.examples import WORKFLOWS, escrow
from orchestrator.examples.contracts import BuyerSigned, EscrowOpened, RequestBuyerSignature, SellerSigned

compiled = Registry(WORKFLOWS).workflows


def test_the_order_diagram_has_every_move_with_its_deadline_and_cancel() -> None:
    order = compiled["order"]

    lines = mermaid(order.workflow, order.moves).splitlines()

    assert lines[0] == "stateDiagram-v2"
    assert "    [*] --> reserve: orders.OrderPlaced" in lines
    assert "    reserve --> charge: inventory.StockReserved" in lines
    assert "    charge --> compensating_reserve: deadline 2m / cancel / payment.PaymentDeclined" in lines
    assert "    compensating_charge --> compensating_reserve: payment.PaymentRefunded" in lines
    assert {"    completed --> [*]", "    compensated --> [*]", "    failed --> [*]"} <= set(lines)
    assert "    class compensating_reserve,compensating_charge status_compensating" in lines


def test_policies_are_notes_and_the_definition_alone_draws_no_derived_cancels() -> None:
    lines = mermaid(escrow).splitlines()

    assert "    note right of awaiting_buyer: park seller.SellerSigned" in lines
    assert "    awaiting_funds --> expired_undo_1: deadline 1d / bank.FundsDeclined" in lines
    assert not any("cancel" in line for line in lines)


def test_state_names_mermaid_cannot_take_are_aliased() -> None:
    odd = Workflow("odd", starts_on=EscrowOpened, key="escrow_id")
    odd.state(
        "waiting: for buyer", send=RequestBuyerSignature, deadline=timedelta(minutes=90), on_deadline="end"
    )
    odd.state("end", final=True)
    odd.on(BuyerSigned, source="waiting: for buyer", dest="end")
    odd.on(SellerSigned, source="waiting: for buyer", then=PARK)

    lines = mermaid(odd).splitlines()

    assert '    state "waiting  for buyer" as s0' in lines
    assert '    state "end" as s1' in lines
    assert "    [*] --> s0: escrow.EscrowOpened" in lines
    assert "    s0 --> s1: deadline 90m / buyer.BuyerSigned" in lines
    assert "    note right of s0: park seller.SellerSigned" in lines


def test_describe_says_what_each_state_sends_and_waits_for() -> None:
    view = describe(compiled["order"].workflow)
    states = {s.name: s for s in view.states}

    assert (view.name, view.starts_on, view.key, view.initial) == (
        "order",
        "orders.OrderPlaced",
        "order_id",
        "reserve",
    )
    assert states["reserve"].sends == ["inventory.ReserveStock"] and states["reserve"].initial
    assert (states["charge"].deadline_seconds, states["charge"].on_deadline) == (
        120.0,
        "compensating_reserve",
    )
    assert states["completed"].final and states["completed"].status == "completed"
    assert "inventory.StockReserved" in view.events


def test_describe_shows_retries() -> None:
    retrying = Workflow("retrying", starts_on=EscrowOpened, key="escrow_id")
    retrying.state(
        "asking",
        send=RequestBuyerSignature,
        deadline=timedelta(minutes=1),
        on_deadline="gone",
        retry=Retry(every=timedelta(seconds=5), backoff=2.0, max_every=timedelta(seconds=20)),
    )
    retrying.state("gone", final=True)

    [asking, _] = describe(retrying).states

    assert asking.retry is not None
    assert (asking.retry.every_seconds, asking.retry.backoff, asking.retry.max_every_seconds) == (
        5.0,
        2.0,
        20.0,
    )
