"""The alert rules and the Grafana dashboard in deploy/ name only metrics and labels the service
exposes, and are complete enough to act on (tests/monitoring.py has the tokenizer and why)."""

from __future__ import annotations

import re

import pytest

from orchestrator.adapters.metrics import DatabaseGauges, Metrics
from tests.monitoring import (
    PROMETHEUS_OWN,
    alert_rules,
    all_uses,
    dashboard,
    exposed,
    expressions,
    panels,
    unknown,
    uses,
)


def filled() -> str:
    """A render of every family the service has, each with a sample, so its labels are known."""
    m = Metrics(process=True)
    m.messages_in.update({"accepted": 3, "duplicate": 1, "dead": 1, "left": 1})
    m.dead_lettered["not_json"] += 1
    m.batch_failures["database"] += 1
    m.unchecked_replies["bank"] += 1
    m.commands_out += 2
    m.deadlines_fired.update({"deadline": 1, "retry": 1})
    m.operator_actions["retry"] += 1
    m.task_restarts["outbox-sweep"] += 1
    m.sagas_finished[("order", "completed")] += 1
    m.sagas_started["order"] += 2
    m.compensations_started["order"] += 1
    m.cancels_after_finish["order"] += 1
    m.sagas_reopened["fulfilment"] += 1
    m.step_latency.observe(("order", "inventory.ReserveStock"), 0.004)
    m.deadline_lateness.observe(("order", "deadline"), 0.2)
    m.in_flight = lambda: 1
    m.in_hand = lambda: (1, 100)
    m.stalled = lambda: "no commit"
    m.partitions_owned = lambda: 2
    m.database = DatabaseGauges.of_states(
        {("order", "1", "charge", "running"): 2, ("order", "1", "charge", "failed"): 1},
        {("order", "charge"): 1},
        3,
    )
    return m.render().decode()


def test_every_family_of_the_service_is_filled_in_here() -> None:
    """Else a label of a family added later would be unknown to the label check below: fill it in."""
    text = filled()
    families = re.findall(r"^# TYPE (orchestrator_\w+) ", text, re.M)
    empty = [f for f in families if not re.search(rf"^{f}(_bucket|_sum|_count)?[{{ ]", text, re.M)]
    assert families and empty == []


def test_every_metric_and_label_the_rules_and_the_dashboard_name_is_exposed() -> None:
    found = all_uses()
    assert len({u.metric for u in found}) >= 15, found  # the tokenizer found them at all
    assert unknown(found, filled()) == []


def test_a_misspelt_metric_or_label_is_caught() -> None:
    """The check above, proved able to fail: what a typo in alerts.yml would give."""
    text = filled()
    typo = uses("sum by (reason) (increase(orchestrator_dead_leterred_total[10m])) > 0", "alert X")
    assert unknown(typo, text) == ["alert X: no metric orchestrator_dead_leterred_total"]
    suffix = uses("histogram_quantile(0.99, rate(orchestrator_step_latency_seconds[5m]))", "p")
    assert unknown(suffix, text) == ["p: no metric orchestrator_step_latency_seconds"]  # not _bucket
    label = uses('max(orchestrator_stuck_sagas{workflow="order", stat="charge"})', "p")
    assert unknown(label, text) == ["p: orchestrator_stuck_sagas has no label ['stat']"]


@pytest.mark.parametrize(
    ("expression", "metrics"),
    [
        ("up == 0", ["up"]),
        (
            "histogram_quantile(0.99, sum by (workflow, le)"
            ' (rate(a_bucket{workflow=~"$workflow"}[$__rate_interval])))',
            ["a_bucket"],
        ),
        ("sum(rate(a_total[5m] offset 1h)) / ignoring (x) group_left (y) b", ["a_total", "b"]),
        ("max(a) > 1e3 and max(delta(b[15m])) > 0 or vector(0)", ["a", "b"]),
        ("avg_over_time(a[1h:5m]) unless on (job) c{d!~'x|y'} bool > 2", ["a", "c"]),
        ('count by (workflow) (a{state="up", x="sum(b)"})', ["a"]),
        (
            "rate(${metric_var}_total[5m]) + sum without (instance) (ns:rule:rate5m)",
            ["_total", "ns:rule:rate5m"],
        ),
    ],
)
def test_the_tokenizer_takes_out_metric_names_only(expression: str, metrics: list[str]) -> None:
    """``${metric_var}_total`` leaves ``_total``: a metric named by a variable cannot be checked,
    and the check then fails on it, which is meant."""
    assert sorted(u.metric for u in uses(expression)) == metrics


def test_the_exposed_names_include_the_suffixes_promql_selects() -> None:
    names = exposed(filled())
    assert {"orchestrator_dead_lettered_total", "orchestrator_step_latency_seconds_bucket"} <= set(names)
    assert {"orchestrator_step_latency_seconds_sum", "orchestrator_step_latency_seconds_count"} <= set(names)
    assert names["orchestrator_step_latency_seconds_bucket"] == {"workflow", "command", "le"}
    assert names["orchestrator_sagas_in_state"] == {"workflow", "release", "state", "status"}
    assert "orchestrator_step_latency_seconds" not in names


def test_every_alert_says_how_bad_what_and_why() -> None:
    rules = alert_rules()
    assert len(rules) >= 8
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"].strip()) > 40, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for needed in ("stuck_sagas", "dead_lettered", "outbox_backlog", "consumer_stalled", "database_up"):
        assert any(needed in r["expr"] for r in rules), needed


def test_every_panel_queries_through_the_datasource_variable() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41 and board["uid"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    shown = [p for p in panels(board) if p["type"] != "row"]
    assert len(shown) >= 12
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in shown:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip() and target["refId"], panel["title"]


def test_the_dashboard_shows_what_the_operator_asks() -> None:
    """Per workflow and state, throughput, step latency, lateness, compensations, dead letters,
    outbox, stuck sagas: each has a panel."""
    text = " ".join(expression for _, expression in expressions())
    for metric in (
        "orchestrator_sagas_in_state",
        "orchestrator_sagas_started_total",
        "orchestrator_sagas_finished_total",
        "orchestrator_step_latency_seconds_bucket",
        "orchestrator_deadline_lateness_seconds_bucket",
        "orchestrator_compensations_started_total",
        "orchestrator_dead_lettered_total",
        "orchestrator_outbox_backlog",
        "orchestrator_stuck_sagas",
    ):
        assert metric in text, metric
    assert PROMETHEUS_OWN  # up{job="orchestrator"} is Prometheus's, not the service's
