"""Quantiles read off the orchestrator's own histogram, as Prometheus's histogram_quantile reads them."""

from __future__ import annotations

import pytest

from bench.report import histogram_percentiles, histogram_quantile
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
