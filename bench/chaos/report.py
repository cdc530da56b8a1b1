"""A run's result, for people (the table) and for tools (the JSON, with every finding listed).

The table shows each check with a few examples; the JSON keeps the same and the fault log with
when each fault really began and ended, since on a loaded machine that is not quite the schedule.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chaos.checker import Check
from bench.chaos.runner import Outcome
from bench.chaos.scenario import Scenario
from bench.report import git_commit, machine

__all__ = ["results", "table", "write"]


def results(scenario: Scenario, outcome: Outcome, checks: list[Check], root: Path) -> dict[str, Any]:
    faults = [
        {**asdict(d.fault), "began": round(d.began, 1), "ended": d.ended and round(d.ended, 1)}
        | {"detail": d.detail, "error": d.error, "skipped": d.skipped}
        for d in outcome.faults
    ]
    return {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(root),
        "machine": machine(None, None),
        "scenario": scenario.as_json(),
        "ok": all(c.ok for c in checks),
        "sagas": {
            "published": len(outcome.evidence.published),
            "by_status": outcome.stats["by_status"],
            "children_by_status": outcome.stats["children_by_status"],
        },
        "messages": {
            "journal_entries": len(outcome.evidence.journal),
            "on_the_wire": len({w.message_id for w in outcome.evidence.wire}),
            "journal_by_outcome": outcome.stats["journal_by_outcome"],
            "journal_by_kind": outcome.stats["journal_by_kind"],
            "duplicates_absorbed": outcome.stats["duplicates_absorbed"],
        },
        "effects": outcome.stats.get("effects"),
        # CHAOS_HA: seconds from each primary killed, each broker node stopped, until the first
        # decision made after it is committed (for a node, one decided on a message consumed)
        "failover": outcome.stats.get("failover"),
        "settled": outcome.stats["settled"],
        "faults": faults,
        "fault_counts": dict(Counter(d.fault.kind for d in outcome.faults if not d.skipped)),
        "checks": [asdict(c) | {"ok": c.ok} for c in checks],
        "durations_s": {k: round(v, 1) for k, v in outcome.durations.items()},
        "database": outcome.database,
        "namespace": outcome.namespace,
        "logs": str(outcome.logs),
    }


def table(data: dict[str, Any]) -> str:
    s = data["scenario"]
    lines = [
        f"chaos: {s['sagas']} sagas, {s['replicas']} replicas, seed {s['seed']}, {s['rate']}/s,"
        f" deadline {s['deadline']}s, participants {s.get('participants', 'responder')}"
        + (f" (fail rate {s['fail_rate']})" if s.get("participants") == "kit" else ""),
        "faults: "
        + (", ".join(f"{k} {v}" for k, v in sorted(data["fault_counts"].items())) or "none")
        + f" ({sum(f['skipped'] for f in data['faults'])} skipped: their target was still away)",
    ]
    failed_faults = [f for f in data["faults"] if f["error"]]
    if failed_faults:
        lines.append(
            f"faults that could not be done: {len(failed_faults)} (first: {failed_faults[0]['error']})"
        )
    lines.append(
        "sagas: "
        + ", ".join(f"{k} {v}" for k, v in sorted(data["sagas"]["by_status"].items()))
        + f" (of {data['sagas']['published']} started); their shipping (child) sagas: "
        + (", ".join(f"{k} {v}" for k, v in sorted(data["sagas"]["children_by_status"].items())) or "none")
    )
    m = data["messages"]
    lines.append(
        f"journal: {m['journal_entries']} entries ("
        + ", ".join(f"{k} {v}" for k, v in sorted(m["journal_by_outcome"].items()))
        + f"); {m['on_the_wire']} messages on the wire; {m['duplicates_absorbed']} redeliveries absorbed"
    )
    failover = data.get("failover")
    if failover:
        lines.append(
            f"failover: first decision after a primary's death {failover['database_s']} s;"
            f" after the replicas' broker node stopped {failover['broker_node_s']} s"
        )
    effects = data.get("effects")
    if effects:
        lines.append(
            f"participants' tables: {effects['charges']} charges, {effects['refunds']} refunds,"
            f" {effects['stock_moves']} stock moves, {effects['shipments']} shipments;"
            f" {effects['participant_commands']} commands carried out,"
            f" {effects.get('answered_from_inbox', 0)} answered again from the inbox"
        )
    lines.append(
        "durations: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}s" for k, v in data["durations_s"].items())
    )
    lines.append("")
    width = max(len(c["name"]) for c in data["checks"])
    lines.append(f"{'check':<{width}}  result  found  first case")
    for c in data["checks"]:
        result = "ok" if c["ok"] else ("KNOWN" if c["known_bug"] else "FAIL")
        first = c["examples"][0] if c["examples"] else ""
        lines.append(f"{c['name']:<{width}}  {result:<6}  {c['found']:>5}  {first[:100]}")
    lines.append("")
    lines.append("all checks passed" if data["ok"] else "SOME CHECKS FAILED")
    return "\n".join(lines)


def write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    temporary.replace(path)
