"""The bundled workflows: the order saga (a step sequence) and the escrow (a free state machine)."""

from orchestrator.examples.escrow import escrow
from orchestrator.examples.order import OrderSaga

WORKFLOWS = [OrderSaga.workflow, escrow]

__all__ = ["WORKFLOWS", "OrderSaga", "escrow"]
