"""The bundled workflows, and one whose unexpected events fail it (the way to a failed saga to
resume), loaded by ``orchestrator sagas`` in tests/integration/test_cli_sagas.py."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.core.definitions import FAIL, Status, Workflow
from orchestrator.examples import WORKFLOWS as EXAMPLES
from orchestrator.examples.contracts import BuyerSigned, EscrowOpened, RequestBuyerSignature

strict = Workflow("strict", starts_on=EscrowOpened, key="escrow_id", unexpected=FAIL)
strict.state("signing", send=RequestBuyerSignature, deadline=timedelta(hours=1), on_deadline="given_up")
strict.state("waiting", send=RequestBuyerSignature)
strict.state("signed", final=True)
strict.state("given_up", final=True, status=Status.COMPENSATED)
strict.on(BuyerSigned, source="waiting", dest="signed")

WORKFLOWS = [*EXAMPLES, strict]
