"""Release 2 of the order saga alone: release 1 dropped (a deploy that refuses while sagas on
release 1 are in flight, unless told to fail them)."""

from __future__ import annotations

from orchestrator.examples import escrow
from tests.releases.order_v2 import OrderSagaV2

WORKFLOWS = [OrderSagaV2.workflow, escrow]
