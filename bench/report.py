"""Figures out: percentiles, the machine they were taken on, the JSON file and the short table.

A figure without its machine is meaningless (the floor moves by a third from one run to the
next on the same box), so the JSON carries the machine, the versions and the commit with it.
"""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["git_commit", "histogram_percentiles", "load_average", "machine", "percentiles", "table"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest rank, as pipeline.py counts it, so the two p99s mean the same thing."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q) - 1)]


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {
        "count": len(values),
        "p50": rounded(percentile(values, 0.50)),
        "p99": rounded(percentile(values, 0.99)),
        "max": rounded(max(values)) if values else None,
    }


def _buckets(metrics: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a Prometheus histogram in the text exposition format,
    summed over its other labels (the step latency is by workflow and command type), as
    ``sum by (le)`` would."""
    found: dict[float, float] = {}
    prefix = f"{name}_bucket{{"
    for line in metrics.splitlines():
        if line.startswith(prefix):
            labels, _, count = line[len(prefix) :].rpartition("} ")
            bound = _LE.search(labels)
            if bound is not None:
                le = float(bound.group(1))
                found[le] = found.get(le, 0.0) + float(count)
    return sorted(found.items())


_LE = re.compile(r'(?:^|,)le="([^"]+)"')


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """As Prometheus's ``histogram_quantile``: linear within the bucket the rank falls in, and
    the highest finite bound when it falls in ``+Inf``."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return lower


def histogram_percentiles(metrics: str, name: str, scale: float = 1000.0) -> dict[str, float | int | None]:
    """p50 and p99 of a histogram the orchestrator exposes (seconds), in ms by default."""
    buckets = _buckets(metrics, name)

    def at(q: float) -> float | None:
        value = histogram_quantile(buckets, q)
        return None if value is None else round(value * scale, 2)

    return {"count": int(buckets[-1][1]) if buckets else 0, "p50": at(0.50), "p99": at(0.99)}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load: on a shared box, whether someone else was using the cores."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def machine(postgres: str | None, rabbitmq: str | None) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mib": _memory_mib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "postgresql": postgres,
        "rabbitmq": rabbitmq,
    }


def git_commit(root: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return text + unit


def _get(data: dict[str, Any], *path: str) -> Any:
    value: Any = data
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def table(results: dict[str, Any]) -> str:
    """The few figures the issue asks for, one per line, with the floor beside them."""
    rows: list[tuple[str, str, str, str]] = []
    t = results.get("throughput")
    if t:
        ratio = t.get("ratio")
        rows += [
            ("throughput", "sagas/s", _fmt(_get(t, "orchestrator", "sagas_per_s")), ""),
            (
                "",
                "steps/s (floor)",
                f"{_fmt(_get(t, 'orchestrator', 'steps_per_s'))} ({_fmt(_get(t, 'floor', 'steps_per_s'))})",
                "",
            ),
            ("", "ratio to floor", _fmt(ratio), "target >= 0.85"),
        ]
        peer = t.get("peer") or {}
        peer_name = " ".join(str(part) for part in (peer.get("name", "dbos"), peer.get("version")) if part)
        peer_ratio = t.get("orchestrator_to_peer")
        rows += [
            (
                "",
                f"steps/s of the peer ({peer_name})",
                _fmt(peer.get("steps_per_s")),
                f"{_fmt(peer.get('completed'))} of {_fmt(peer.get('sagas'))} sagas"
                if peer
                else t.get("peer_note") or "",
            ),
            (
                "",
                "orchestrator / peer",
                "-" if peer_ratio is None else f"{peer_ratio:.1f}",  # 15.5 must not read 16
                f"target >= {_fmt(t.get('orchestrator_to_peer_target'))}",
            ),
        ]
        cpu = t.get("cpu_ms_per_step") or {}
        rows += [
            (
                "",
                "CPU ms/step (recorded)",
                f"{_fmt(cpu.get('orchestrator'))} ({_fmt(cpu.get('recorded'))})",
                f"target <= {_fmt(cpu.get('target'))}",
            ),
            (
                "",
                "CPU ms/step with responder (floor)",
                f"{_fmt(cpu.get('orchestrator_and_responder'))} ({_fmt(cpu.get('floor'))})",
                "",
            ),
        ]
    k = results.get("kit")
    if k:
        rows += [
            (
                "kit",
                "steps/s (orchestrator's)",
                f"{_fmt(k.get('steps_per_s'))} ({_fmt(k.get('orchestrator_steps_per_s'))})",
                f"{_fmt(_get(k, 'statuses', 'completed'))} of {_fmt(k.get('sagas'))} completed",
            ),
            (
                "",
                "ratio to orchestrator",
                _fmt(k.get("ratio_to_orchestrator")),
                f"target >= {_fmt(k.get('target'))}",
            ),
            ("", "CPU ms/command", _fmt(k.get("cpu_ms_per_command")), ""),
        ]
    lat = results.get("latency")
    if lat:
        o = lat.get("orchestrator", {})
        inside = o.get("step_ms_event_in_to_confirm") or {}
        f = lat.get("floor") or {}
        rows += [
            ("latency", "rate sagas/s", _fmt(lat.get("rate")), ""),
            (
                "",
                "step p50 ms (floor)",
                f"{_fmt(inside.get('p50'))} ({_fmt(f.get('step_latency_ms_p50'))})",
                "target <= 5",
            ),
            (
                "",
                "step p99 ms (floor)",
                f"{_fmt(inside.get('p99'))} ({_fmt(f.get('step_latency_ms_p99'))})",
                "target <= 2x floor",
            ),
            (
                "",
                "participant to participant p50 / p99 ms (floor)",
                f"{_fmt(_get(o, 'step_ms', 'p50'))} / {_fmt(_get(o, 'step_ms', 'p99'))}"
                f" ({_fmt(f.get('p2p_step_ms_p50'))} / {_fmt(f.get('p2p_step_ms_p99'))})",
                "",
            ),
            (
                "",
                "saga p50 / p99 ms",
                f"{_fmt(_get(o, 'saga_ms', 'p50'))} / {_fmt(_get(o, 'saga_ms', 'p99'))}",
                "",
            ),
        ]
    rec = results.get("recovery")
    if rec:
        rows += [
            ("recovery", "parked sagas", _fmt(rec.get("sagas")), ""),
            ("", "restart -> takes events s", _fmt(rec.get("restart_to_taking_events_s")), ""),
            ("", "replies -> all advanced s", _fmt(rec.get("replies_to_all_advanced_s")), ""),
            ("", "lost", _fmt(rec.get("lost")), "must be 0"),
        ]
    d = results.get("deadlines")
    if d:
        late = d.get("lateness_ms", {})
        rows += [
            ("deadlines", "fired / due", f"{_fmt(d.get('fired'))} / {_fmt(d.get('deadlines'))}", ""),
            (
                "",
                "late p50/p99/max ms",
                f"{_fmt(late.get('p50'))} / {_fmt(late.get('p99'))} / {_fmt(late.get('max'))}",
                "",
            ),
            ("", "outage: restart -> all fired s", _fmt(_get(d, "outage", "restart_to_all_fired_s")), ""),
        ]
    m = results.get("memory")
    if m:
        rss = m.get("rss_mib") or {}
        rows += [
            ("memory", "parked (written to the database)", _fmt(m.get("parked")), ""),
            (
                "",
                "RSS idle / after replies / peak",
                f"{_fmt(rss.get('idle'))} / {_fmt(rss.get('after_replies'))}"
                f" / {_fmt(m.get('peak_rss_mib'), ' MiB')}",
                "target <= 150 MiB at 1,000,000",
            ),
        ]
    widths = [max(len(r[i]) for r in rows) if rows else 0 for i in range(4)]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)
