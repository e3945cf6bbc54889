"""The Grafana dashboards (charts/kubeagents/dashboards/*.json), linted: unique panel ids, every
panel with a data source and queries, every template variable it uses defined, every PromQL query
parsed by promtool (offline, as recording rules), and every metric it names exported by a process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from charts.promtool import exported_metric_names, metric_names, promtool, write_rule_file
from charts.test_platform_chart import CHART

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
# Grafana's own variables, each with a value that stands in for it when promtool parses a query.
BUILTINS = {
    "__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__interval_ms": "60000",
    "__range_s": "3600", "__range_ms": "3600000",
}  # fmt: skip
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*\w+\)$")

Obj = dict[str, Any]


def panels(dashboard: Obj) -> Iterator[Obj]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variables_used(text: str) -> set[str]:
    return {next(name for name in match if name) for match in VARIABLE.findall(text)}


def queries(dashboard: Obj) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable's selector."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} ({panel.get('title')}) {target.get('refId')}"
            yield where, target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found = LABEL_VALUES.match(text.strip())
            if found:  # label_values(selector, label): the selector is PromQL
                yield f"variable {variable['name']}", found[1]


def offline(expr: str, variables: set[str]) -> str:
    """The query with variables replaced: Grafana's by durations, the dashboard's by a regex."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return BUILTINS.get(name, ".*" if name in variables else match[0])

    return VARIABLE.sub(value, expr)


def load(path: Path) -> Obj:
    dashboard: Obj = json.loads(path.read_text())
    return dashboard


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_panels_have_unique_ids_a_data_source_and_queries(path: Path) -> None:
    dashboard = load(path)
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        where = f"panel {panel['id']} ({panel.get('title')})"
        assert panel.get("datasource"), f"{where} has no datasource"
        targets = panel.get("targets", [])
        assert targets, f"{where} has no targets"
        assert all(target.get("expr") for target in targets), f"{where}: a target has no expr"
        refs = [target.get("refId") for target in targets]
        assert len(refs) == len(set(refs)), f"{where}: duplicate refIds {refs}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_every_variable_used_is_defined(path: Path) -> None:
    dashboard = load(path)
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    used = variables_used(path.read_text()) - set(BUILTINS)
    assert used <= defined, f"undefined template variables: {sorted(used - defined)}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_promtool_parses_every_query(path: Path, tmp_path: Path) -> None:
    dashboard = load(path)
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    found = list(queries(dashboard))
    rules = [
        {"record": f"dashboard:query_{index}", "expr": offline(expr, variables)}
        for index, (_, expr) in enumerate(found)
    ]
    rule_file = write_rule_file(tmp_path / "queries.yaml", [{"name": path.stem, "rules": rules}])
    output = promtool("check", "rules", "--lint=none", str(rule_file), cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in output, output


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_queries_name_only_exported_metrics(path: Path) -> None:
    exported = exported_metric_names()
    unknown = {
        where: sorted(metric_names(expr) - exported)
        for where, expr in queries(load(path))
        if metric_names(expr) - exported
    }
    assert not unknown, f"queries name metrics no process exports: {unknown}"
    assert all(metric_names(expr) for _, expr in queries(load(path))), "a query names no metric"
