"""The chaos suite, small: a few hundred sagas through three replicas while replicas are killed,
the broker restarted, sessions ended and participants stopped (or killed); every check must pass,
the business-effect checks over the kit participants' own tables among them.

It runs ``python -m bench.chaos`` as a user runs it (``make chaos``), in a process of its own,
which owns its private broker node and its database and removes both however it ends. What it
finds is in the JSON it writes: the assertion shows the table, which names the saga ids.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos.report import table

from .conftest import ADMIN_DSN, ROOT

pytestmark = pytest.mark.integration

SAGAS = 300
#: 60 s of faults: about four rounds of every kind, so that one skipped (its target still away
#: after the last) leaves others of its kind; 40 s left a kind done once, a slow restart from none
RATE = 5.0
FAULT_EVERY = 3.0
DELAY = 0.3  # between a participant's commit and its ack: the window a kill has to land in
EFFECT_CHECKS = {
    "charged_once",
    "refunded_once",
    "reserved_once",
    "stock_moves",
    "shipped_once",
    "stock_on_hand",
}


def test_sagas_survive_the_faults_and_every_check_passes(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    argv = [
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
        "--participants",
        "kit",
        "--participant-delay",
        str(DELAY),
    ]
    # A session of its own: if the run hangs, one signal to the group ends it and its replicas.
    run = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = run.communicate(timeout=1200)  # a bound on a hung run, not a measure of speed
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGINT)  # its own cleanup first: broker node, database
        output, _ = run.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert out.exists(), f"the run could not be done (exit {run.returncode}):\n{output[-5000:]}"
    data = json.loads(out.read_text())
    assert data["ok"], table(data)
    assert run.returncode == 0, output[-3000:]
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
    # the effects were counted, not skipped: the checks ran over tables with charges and refunds in
    # them, and at least one participant died by SIGKILL, the stop that can fall between commit and ack
    checks = {c["name"] for c in data["checks"]}
    assert checks >= EFFECT_CHECKS, checks
    assert data["effects"]["charges"] > 0 and data["effects"]["refunds"] > 0, data["effects"]
    assert data["effects"]["shipments"] == data["sagas"]["by_status"]["completed"]
    # shipping is a child saga: every order that shipped has one completed, as the checks say
    assert data["sagas"]["children_by_status"]["completed"] == data["sagas"]["by_status"]["completed"]
    stops = [f for f in data["faults"] if f["kind"].startswith("stop_participant") and not f["skipped"]]
    assert any(f["detail"] == "SIGKILL" for f in stops), stops
    # and some command came again after it was carried out: what the effect checks are about
    assert data["effects"]["answered_from_inbox"] > 0, data["effects"]
