"""A command payload the engine builds is one that can be stored and sent, or the saga fails.

The ingress rules check the body as JSON (no integer beyond 64 bits), but a schema reads more
than JSON: pydantic takes ``"1111111111111111111111111"`` for an ``int`` field. Found by
tests/integration/test_ingress_fuzz.py: the order saga stored such an ``amount_cents`` as text,
built ``ChargePayment`` with it as a 25-digit integer when the stock was reserved, and every
commit of that ``StockReserved`` failed in orjson; it was dead-lettered ``failed_repeatedly``
and the saga stayed where it was. Now building the command fails the saga, with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from orchestrator.core.definitions import Status
from orchestrator.core.engine import Incoming, Outcome, decide
from orchestrator.core.machine import CompiledWorkflow
from orchestrator.examples import OrderSaga, escrow

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ORDER = CompiledWorkflow(OrderSaga.workflow)
ESCROW = CompiledWorkflow(escrow)
HUGE = "1" * 25  # valid JSON text, an int to the schema, past 64 bits


def test_a_step_whose_command_cannot_be_encoded_fails_the_saga() -> None:
    placed = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "lines": [{"sku": "s", "quantity": 1}],
        "amount_cents": HUGE,
    }
    # A saga started before the data was read by its schema (issue 11) holds the text.
    started = decide(ORDER, None, Incoming("orders.OrderPlaced", "m-1", placed), NOW, merge_all=True)
    assert started.outcome is Outcome.STARTED  # ReserveStock holds no amount
    reserved = Incoming("inventory.StockReserved", "m-2", {"order_id": "o-1", "reservation_id": "r-1"})

    decision = decide(ORDER, started.saga, reserved, NOW)

    assert decision.outcome is Outcome.FAILED
    assert decision.saga.status is Status.FAILED
    assert "payment.ChargePayment.amount_cents is an integer beyond 64 bits" in (
        decision.saga.last_error or ""
    )
    assert decision.commands == ()
    orjson.dumps(decision.summary())  # what the journal stores encodes


def test_a_start_whose_data_cannot_be_stored_starts_a_failed_saga() -> None:
    """Now the start event's data is what its schema reads: the 25-digit integer fails the start."""
    placed = {"order_id": "o-1", "customer_id": "c-1", "lines": [], "amount_cents": HUGE}

    decision = decide(ORDER, None, Incoming("orders.OrderPlaced", "m-1", placed), NOW)

    assert decision.saga.status is Status.FAILED
    assert "orders.OrderPlaced.amount_cents is an integer beyond 64 bits" in (decision.saga.last_error or "")
    assert decision.commands == () and decision.saga.data == {}
    orjson.dumps(decision.summary())


def test_a_start_whose_first_command_cannot_be_encoded_starts_a_failed_saga() -> None:
    opened = {"escrow_id": "e-1", "buyer_id": "b-1", "seller_id": "s-1", "amount_cents": HUGE}

    decision = decide(ESCROW, None, Incoming("escrow.EscrowOpened", "m-1", opened), NOW)

    assert decision.saga.status is Status.FAILED
    assert "integer beyond 64 bits" in (decision.saga.last_error or "")
    assert decision.commands == ()


def test_the_largest_integers_that_encode_still_go_out() -> None:
    opened = {"escrow_id": "e-1", "buyer_id": "b-1", "seller_id": "s-1", "amount_cents": str(2**63 - 1)}

    decision = decide(ESCROW, None, Incoming("escrow.EscrowOpened", "m-1", opened), NOW)

    assert decision.outcome is Outcome.STARTED
    assert [c.payload["amount_cents"] for c in decision.commands if "amount_cents" in c.payload] == [
        2**63 - 1
    ]
