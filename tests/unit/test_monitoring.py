"""The Grafana dashboard and the Prometheus alert rules (manifests/monitoring) name only metrics that exist.

Every PromQL expression of both is parsed (promql-parser, the Rust crate's parser) and each metric it selects
must be a sample name the operator's or a participant's registry exports: read from the registries themselves,
so a renamed metric breaks this test, not the dashboard at 3 a.m. The alerts docs/operations.md recommends are
the ones in the rules file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from saga_operator.runtime.metrics import Metrics
from saga_participants._metrics import ParticipantMetrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "monitoring"
RULES = MONITORING / "prometheus-rules.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
OPERATIONS = REPO / "docs" / "operations.md"
#: Grafana's own variables, replaced by what Grafana would put there before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
#: Sample suffixes per metric type, as the Prometheus text format writes them.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}


def _exported(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry can export (also those of labelled metrics that have no child yet)."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def exported_metrics() -> set[str]:
    operator = Metrics()
    operator.count_sagas(lambda: {"Running": 1})
    return _exported(operator.registry) | _exported(ParticipantMetrics("users").registry)


def _selected(node: Any) -> Iterator[str]:
    """The metric names an expression selects, walking its syntax tree."""
    if isinstance(node, promql_parser.VectorSelector):
        if node.name:
            yield node.name
        else:  # {__name__="..."}
            yield from (m.value for m in node.matchers.matchers if m.name == "__name__")
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from _selected(node.vector_selector)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _selected(node.lhs)
        yield from _selected(node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from _selected(node.expr)
        if node.param is not None:
            yield from _selected(node.param)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _selected(arg)
    elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        yield from _selected(node.expr)


def metrics_of(expr: str) -> set[str]:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return set(_selected(promql_parser.parse(expr)))


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["spec"]["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expression) of every panel target and every query variable."""
    board = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((?P<metric>[^,]+),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: {query}"
            found.append((f"variable {variable['name']}", match["metric"]))
    return found


def test_the_rules_file_is_a_prometheus_rule_with_named_alerts() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert document["apiVersion"] == "monitoring.coreos.com/v1" and document["kind"] == "PrometheusRule"
    assert document["metadata"]["name"] and document["spec"]["groups"]
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for group in document["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: str(r["alert"]))
def test_every_alert_names_only_exported_metrics(rule: dict[str, Any]) -> None:
    named = metrics_of(rule["expr"])
    assert named, f"{rule['alert']} selects no metric"
    assert named <= exported_metrics(), f"{rule['alert']}: not exported: {sorted(named - exported_metrics())}"


def test_every_dashboard_query_names_only_exported_metrics() -> None:
    exported = exported_metrics()
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    for where, expr in exprs:
        named = metrics_of(expr)
        assert named, f"{where} selects no metric: {expr}"
        assert named <= exported, f"{where}: not exported: {sorted(named - exported)}"


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_the_checker_sees_a_metric_that_does_not_exist() -> None:
    assert metrics_of('sum by (le) (rate(saga_operator_no_such_thing_bucket{a="b"}[$__rate_interval])) > 1') == {
        "saga_operator_no_such_thing_bucket"
    }
    assert "saga_operator_no_such_thing_bucket" not in exported_metrics()
    assert {"saga_operator_step_latency_seconds_bucket", "saga_participant_commands_total"} <= exported_metrics()


def test_the_alerts_the_docs_recommend_are_in_the_rules_file() -> None:
    text = OPERATIONS.read_text()
    section = text[text.index("## Observability") :]
    section = section[: section.index("\n## ", 1)]
    listed = set(re.findall(r"^\| `(Saga\w+)` \|", section, flags=re.MULTILINE))
    assert listed == {rule["alert"] for rule in rules()}
