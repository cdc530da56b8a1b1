"""Schemathesis over the OpenAPI schema of the real service (in the test's event loop, as
``orchestrator run`` builds it), with sagas in the database.

Every operation is fuzzed with valid and invalid input (its coverage, fuzzing and stateful phases:
the links from a started saga lead to its reads and actions), authenticated with the token so that
starts and operator actions run too. The run fails on any 5xx, and on any response whose status,
content type or body the schema does not describe.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from .conftest import Bench, unique

pytestmark = pytest.mark.integration

keys = unique("fuzz")
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
ORDER = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1000}
ESCROW = {"buyer_id": "b-1", "seller_id": "s-1", "amount_cents": 5000}


async def test_the_api_keeps_to_its_schema_and_never_answers_5xx(bench: Bench) -> None:
    await bench.serve()
    async with bench.api() as api:
        for workflow, data in (("order", ORDER), ("order", ORDER), ("escrow", ESCROW), ("escrow", ESCROW)):
            started = await api.post("/sagas", json={"workflow": workflow, "key": keys(), "data": data})
            assert started.status_code == 201, started.text
        await api.post(f"/sagas/{started.json()['id']}/cancel", json={"reason": "to have a finished one"})

    run = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{bench.api_url}/openapi.json",
            "--checks",
            CHECKS,
            "--header",
            f"Authorization: Bearer {bench.api_token}",
            "--max-examples",
            "50",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        cwd=bench.tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )

    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
    [orchestrator] = bench.served
    assert "Traceback" not in orchestrator.output(), orchestrator.output()[-6000:]
