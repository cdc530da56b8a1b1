"""The chaos suite, small: a few hundred sagas through three replicas while replicas are killed,
the broker restarted, sessions ended and participants stopped; every check must pass.

It runs ``python -m bench.chaos`` as a user runs it (``make chaos``), in a process of its own,
which owns its private broker node and its database and removes both however it ends. What it
finds is in the JSON it writes: the assertion shows the table, which names the saga ids.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos.report import table

from .conftest import ADMIN_DSN, ROOT

pytestmark = pytest.mark.integration

SAGAS = 400
RATE = 5.0  # 80 s of faults
FAULT_EVERY = 3.0


def test_sagas_survive_the_faults_and_every_check_passes(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.chaos",
            "--sagas",
            str(SAGAS),
            "--rate",
            str(RATE),
            "--fault-every",
            str(FAULT_EVERY),
            "--seed",
            "14",
            "--out",
            str(out),
            "--logs",
            str(tmp_path / "logs"),
            "--admin-dsn",
            ADMIN_DSN,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,  # a bound on a hung run, not an assertion about its speed
    )
    assert out.exists(), f"the run could not be done (exit {result.returncode}):\n{result.stderr[-5000:]}"
    data = json.loads(out.read_text())
    assert data["ok"], table(data)
    assert result.returncode == 0, result.stderr[-3000:]
    assert data["sagas"]["published"] == SAGAS
    done = {f["kind"] for f in data["faults"] if not f["skipped"] and not f["error"]}
    assert done == {
        "kill_replica",
        "restart_broker",
        "terminate_sessions",
        "stop_participant_short",
        "stop_participant_long",
    }
    # a participant stopped past its deadline must have made some sagas compensate
    assert data["sagas"]["by_status"].get("compensated", 0) > 0
