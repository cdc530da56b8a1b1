"""What the alert rules and the dashboard in deploy/ ask of the service, read out of their PromQL.

A rule that names a metric the service does not expose is never an error to Prometheus: the
selector is empty, the alert never fires, the panel says "No data". So the tests read every
expression in deploy/prometheus/alerts.yml and deploy/grafana/orchestrator.json, take out the
metric names (and the labels their selectors match on), and check them against what the service
renders (tests/unit/test_monitoring.py from a Metrics with every family filled in,
tests/integration/test_monitoring.py from a running orchestrator's /metrics).

The tokenizer is not a PromQL parser; it is enough for the expressions written here, and its own
tests pin what it takes out of the forms they use (grouping lists, ranges, subqueries, strings,
Grafana's variables, numbers with units).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "orchestrator.json"

#: made by Prometheus about each target, not by the service
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

#: words of PromQL that look like identifiers and are not metrics (functions and aggregations are
#: recognised by the parenthesis after them, ``by (...)`` lists are removed before)
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "on", "ignoring", "group_left", "group_right", "by"}
    | {"without", "inf", "nan", "atan2", "start", "end"}
)
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_SELECTOR = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
#: a name not inside a number (``1e3``, ``5m``) and not a function's (whole, not backtracked into)
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")


@dataclass(frozen=True)
class Use:
    """A metric an expression reads, the labels its selector matches on, and where it is."""

    metric: str
    labels: frozenset[str]
    where: str


def uses(expression: str, where: str = "") -> list[Use]:
    """Every metric ``expression`` reads, with the labels of its ``{...}`` matchers."""
    text = _GRAFANA_VARIABLE.sub("", expression)
    text = _STRING.sub("", text)
    text = _GROUPING.sub("", text)
    text = _RANGE.sub("", text)
    found: list[Use] = []
    for name, matchers in _SELECTOR.findall(text):
        found.append(Use(name, frozenset(_MATCHER.findall(matchers)), where))
    text = re.sub(r"\{[^}]*\}", "", text)
    seen = {u.metric for u in found}
    for name in _IDENTIFIER.findall(text):
        if name not in _KEYWORDS and name not in seen:
            found.append(Use(name, frozenset(), where))
            seen.add(name)
    return found


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every alert expression, dashboard target and templating query."""
    for rule in alert_rules():
        yield f"alert {rule['alert']}", str(rule["expr"])
    board = dashboard()
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield f"panel {panel.get('title')!r} target {target.get('refId')}", str(target["expr"])
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            inner = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text)
            if inner:
                yield f"variable {variable['name']}", inner.group(1)


def all_uses() -> list[Use]:
    return [use for where, expression in expressions() for use in uses(expression, where)]


def exposed(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from Prometheus text: every name PromQL can select (a
    counter's ``_total``, a histogram's ``_bucket``, ``_sum`` and ``_count``), declared by the
    ``# TYPE`` lines even for a family with no sample yet; labels from the samples present."""
    names: dict[str, set[str]] = {}
    suffixes = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    suffixes["summary"] = ("", "_sum", "_count")
    suffixes["untyped"] = ("",)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            for suffix in suffixes.get(kind, ("",)):
                names.setdefault(name + suffix, set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            if rest:
                labels = _MATCHER.findall(_STRING.sub("", rest.rsplit("}", 1)[0]))
                names.setdefault(name, set()).update(labels)
    return names


def unknown(found: list[Use], text: str, *, labels: bool = True) -> list[str]:
    """What ``found`` reads that ``text`` does not expose: a metric, or a label of one."""
    names = exposed(text)
    wrong = []
    for use in found:
        if use.metric in PROMETHEUS_OWN:
            continue
        if use.metric not in names:
            wrong.append(f"{use.where}: no metric {use.metric}")
        elif labels:
            missing = use.labels - names[use.metric] - {"__name__", "job", "instance"}
            if missing:
                wrong.append(f"{use.where}: {use.metric} has no label {sorted(missing)}")
    return wrong
