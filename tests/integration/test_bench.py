"""``python -m bench --quick`` runs every scenario to the end and writes its JSON.

Only that it works is checked here, never how fast: timings on a shared two-core box say nothing
in a test. The figures are ``make bench``'s business.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import AMQP_URL, ROOT, database_url_of, drop_database

pytestmark = pytest.mark.integration


def test_quick_bench_runs_every_scenario(tmp_path: Path) -> None:
    name = f"orchestrator_bench_test_{uuid.uuid4().hex[:8]}"
    url = database_url_of(name)
    out = tmp_path / "bench.json"
    env = {**os.environ, "BENCH_DATABASE_URL": url, "ORCHESTRATOR_AMQP_URL": AMQP_URL}
    env.pop("BENCH_FLOOR", None)  # the floor is not part of the repository: the run must say so
    try:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "--quick",
                "--out",
                str(out),
                "--logs",
                str(tmp_path),
                "--profile",
                str(tmp_path / "profile"),
                "--peer-sagas",  # a handful: the peer proves it runs, its figure is make bench's
                "10",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        drop_database(name)
        drop_database(f"{name}_dbos")  # the peer's, beside it (Stack.peer_dsn)
        drop_database(f"{name}_kit")  # the kit scenario's participants' (Stack.kit_dsn)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())

    scenarios = ("throughput", "kit", "latency", "recovery", "deadlines", "memory")
    for key in ("machine", "git_commit", "sizes", *scenarios):
        assert key in results, key
    # this machine's PostgreSQL runs without autovacuum: the benchmark analyzes in its place
    assert results["autovacuum"] in ("on", "off: the tables analyzed every 10 s"), results["autovacuum"]
    for scenario in scenarios:
        assert "error" not in results[scenario], results[scenario]

    throughput = results["throughput"]
    assert throughput["orchestrator"]["all_finished"]
    assert throughput["orchestrator"]["steps_per_s"] > 0
    assert results["floor"] is None and "BENCH_FLOOR is not set" in results["floor_note"]
    assert run.stdout.count(results["floor_note"]) == 2, run.stdout  # at the start and under the table
    assert throughput["floor"] is None and throughput["ratio"] is None
    cpu = throughput["cpu_ms_per_step"]
    assert cpu["orchestrator"] > 0 and cpu["orchestrator_and_responder"] > cpu["orchestrator"], cpu
    assert cpu["floor"] is None and cpu["recorded"] > cpu["target"] > 0, cpu
    assert "CPU ms/step (recorded)" in run.stdout
    assert throughput["floor_note"] == results["floor_note"]
    # the example services on the participant kit carried out every command of their burst
    kit = results["kit"]
    assert kit["finished"] and kit["statuses"] == {"completed": 50}, kit
    assert kit["steps_per_s"] > 0 and kit["ratio_to_orchestrator"] > 0 and kit["target"] == 0.5, kit
    assert all(cpu > 0 for cpu in kit["cpu_s"].values()) and len(kit["cpu_s"]) == 3, kit
    assert "ratio to orchestrator" in run.stdout
    # the peer, the same saga written with DBOS, ran once after the orchestrator and finished
    peer = throughput["peer"]
    assert peer is not None, throughput["peer_note"]
    assert peer["name"] == "dbos" and peer["version"], peer
    assert peer["sagas"] == 10 and peer["completed"] == 10, peer
    assert peer["steps_per_s"] > 0 and peer["cpu_ms_per_step"] > 0, peer
    assert peer["runs"][0]["outcomes"] == {"completed": 10}, peer
    assert throughput["orchestrator_to_peer"] > 0 and throughput["orchestrator_to_peer_target"] == 15
    assert "steps/s of the peer (dbos" in run.stdout and "orchestrator / peer" in run.stdout
    # py-spy sampled the burst's orchestrator: its CPU, by stage, most of it in named stages
    profile = throughput["profile"]
    assert len(profile["files"]) == 1 and profile["samples"] > 0, profile
    assert sum(v for k, v in profile["stages_pct"].items() if k != "other") > 80, profile
    assert profile["top_functions_pct"], profile

    latency = results["latency"]
    assert latency["orchestrator"]["finished"]
    assert latency["orchestrator"]["completed"] == latency["sagas"]
    assert latency["orchestrator"]["step_ms"]["count"] == 3 * latency["sagas"]
    assert latency["orchestrator"]["saga_ms"]["p50"] is not None
    inside = latency["orchestrator"]["step_ms_event_in_to_confirm"]  # read off the live /metrics
    assert inside["count"] == 3 * latency["sagas"] and inside["p50"] is not None
    assert latency["orchestrator"]["cpu_ms_per_message"] > 0

    recovery = results["recovery"]
    assert recovery["written_to_the_database"] == 100  # the rest through the broker
    assert recovery["parked_before_kill"] == recovery["sagas"]
    assert recovery["lost"] == 0
    assert recovery["completed"] == recovery["sagas"]
    assert recovery["restart_to_taking_events_s"] is not None
    assert recovery["replies_to_all_completed_s"] is not None

    deadlines = results["deadlines"]
    assert deadlines["all_fired"] and deadlines["fired"] == deadlines["deadlines"]
    assert deadlines["background_completed"] == deadlines["background_orders"]
    assert deadlines["lateness_ms"]["max"] is not None
    outage = deadlines["outage"]
    assert outage["fired"] == outage["sagas"]
    assert outage["restart_to_all_fired_s"] is not None

    memory = results["memory"]  # written straight into the database, a few of them answered
    assert memory["parked"] == 2000 and memory["answered"] == 100
    assert memory["completed"] == memory["answered"], memory
    assert memory["still_parked"] == memory["parked"] - memory["answered"], memory
    assert memory["rss_mib"]["idle"] > 0 and memory["rss_mib"]["after_replies"] > 0
