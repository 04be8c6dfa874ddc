"""The Grafana dashboards in `dashboards/` ask only for what the gateway exports: every metric a query or
a template variable names is on /metrics under that name, with every label the query groups or filters by.
The metrics are produced by the real Telemetry fed one of everything, as in test_names."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.telemetry.telemetry import Telemetry
from tests.telemetry.conftest import make_record, scrape

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
# A metric selector: a name followed by its label matchers or its range.
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)")


def exported_labels(telemetry: Telemetry) -> dict[str, set[str]]:
    """Metric name on /metrics -> the label names its samples carry."""
    telemetry.observe(make_record())
    telemetry.observe(make_record(cost_usd=2.0, reference_usd=1.0, status=502, error="bad_gateway"))
    telemetry.observe(make_record(energy_wh=0.3, reference_energy_wh=0.2, admission="downgraded: slow"))
    telemetry.count_cache_lookup("exact", "cheap")
    telemetry.count_cache_audit("agree", "cheap")
    telemetry.count_rejection("policy", "no-secrets", "search")
    telemetry.count_rejection("budget", "search-monthly", "search")
    telemetry.count_rejection("rate_limit", "search-rpm", "search")
    labels: dict[str, set[str]] = {}
    for name, pairs in scrape(telemetry):
        labels.setdefault(name, set()).update(key for key, _ in pairs)
    return labels


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"{panel['title']} / {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query


def problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What in one query the gateway does not export: unknown metrics, or labels none of its metrics has."""
    found: list[str] = []
    variables = LABEL_VALUES.findall(expr)
    metrics = {name for name, _ in variables} | {
        name for name in SELECTOR.findall(expr) if name not in ("by", "without", "label_values")
    }
    if not metrics:
        return [f"names no metric: {expr}"]
    found += [f"unknown metric {name}" for name in sorted(metrics - exported.keys())]
    known = set().union(*(exported.get(name, set()) for name in metrics)) | {"le"}
    used = set(MATCHER.findall(expr)) | {label for _, label in variables}
    for grouping in GROUPING.findall(expr):
        used |= {label.strip() for label in grouping.split(",") if label.strip()}
    found += [f"label {label} is on none of {', '.join(sorted(metrics))}" for label in sorted(used - known)]
    return found


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def test_there_are_dashboards_for_traffic_and_for_spend() -> None:
    uids = {json.loads(path.read_text())["uid"] for path in dashboard_files()}
    assert {"gateway-traffic", "gateway-spend"} <= uids


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda path: path.name)
def test_every_query_names_metrics_and_labels_the_gateway_exports(path: Path, telemetry: Telemetry) -> None:
    exported = exported_labels(telemetry)
    dashboard = json.loads(path.read_text())
    found = [
        f"{where}: {problem}" for where, expr in queries(dashboard) for problem in problems(expr, exported)
    ]
    assert found == []
    assert sum(1 for _ in queries(dashboard)) >= 8


def test_the_check_catches_a_misspelt_metric_and_a_missing_label(telemetry: Telemetry) -> None:
    exported = exported_labels(telemetry)
    assert problems('sum by (route) (rate(gateway_request_total{team=~"$team"}[5m]))', exported)[0] == (
        "unknown metric gateway_request_total"
    )
    assert problems("sum by (model) (rate(gateway_cost_USD_total[5m]))", exported) == [
        "label model is on none of gateway_cost_USD_total"
    ]
    assert problems("label_values(gateway_requests_total, tenant)", exported) == [
        "label tenant is on none of gateway_requests_total"
    ]
    assert problems("vector(1)", exported) == ["names no metric: vector(1)"]
