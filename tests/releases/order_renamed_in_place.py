"""The order saga with its ``charge`` step renamed ``payment`` and no new release: the change the
dry run must catch before it is deployed over sagas in flight."""

from __future__ import annotations

from orchestrator.examples import escrow
from tests.unit.test_definition_changes import RenamedOrderSaga

WORKFLOWS = [RenamedOrderSaga.workflow, escrow]
