"""Quantiles read off the orchestrator's own histogram, as Prometheus's histogram_quantile reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import RECORDED_CPU_MS_PER_STEP
from bench.report import histogram_percentiles, histogram_quantile, table
from orchestrator.adapters.metrics import Metrics


def test_a_quantile_is_interpolated_within_its_bucket() -> None:
    buckets = [(0.001, 0.0), (0.002, 10.0), (0.004, 30.0), (float("inf"), 40.0)]
    assert histogram_quantile(buckets, 0.25) == pytest.approx(0.002)  # rank 10: the top of a bucket
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.003)  # rank 20: halfway through 2-4 ms
    assert histogram_quantile(buckets, 0.99) == pytest.approx(0.004)  # in +Inf: the highest finite bound
    assert histogram_quantile([(float("inf"), 0.0)], 0.5) is None


def test_percentiles_of_the_step_latency_the_orchestrator_exposes() -> None:
    metrics = Metrics(process=False)
    for ms in [2.5] * 50 + [3.5] * 49 + [40.0]:
        metrics.step_latency.observe(
            ("order", "inventory.ReserveStock" if ms < 3 else "payments.Charge"), ms / 1000
        )
    figures = histogram_percentiles(metrics.render().decode(), "orchestrator_step_latency_seconds")
    assert figures["count"] == 100
    assert figures["p50"] == pytest.approx(3.0)  # rank 50 is the last of the 2-3 ms bucket
    assert figures["p99"] == pytest.approx(4.0)  # rank 99 is the last of the 3-4 ms bucket


def test_the_recorded_cpu_per_step_is_the_one_docs_benchmark_md_gives() -> None:
    """``make bench`` prints it beside each run's: the two must not drift apart."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "benchmark.md").read_text()
    figure = f"{RECORDED_CPU_MS_PER_STEP:g}"
    assert (
        f"The figure `make bench` prints beside each run's CPU per step, the recorded one: **{figure} ms**."
        in doc
    )


def test_the_table_sets_the_cpu_per_step_beside_the_recorded_figure_and_the_floor() -> None:
    results = {
        "throughput": {
            "orchestrator": {"sagas_per_s": 250.0, "steps_per_s": 750.0},
            "floor": {"steps_per_s": 1000.0},
            "ratio": 0.75,
            "cpu_ms_per_step": {
                "orchestrator": 0.55,
                "orchestrator_and_responder": 0.8,
                "floor": 0.4,
                "recorded": 0.57,
                "target": 0.3,
            },
        }
    }
    lines = table(results).splitlines()
    assert any(
        "CPU ms/step (recorded)" in line and "0.55 (0.57)" in line and "<= 0.3" in line for line in lines
    )
    assert any("with responder (floor)" in line and "0.8 (0.4)" in line for line in lines)
