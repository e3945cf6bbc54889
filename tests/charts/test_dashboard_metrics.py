"""The Grafana dashboards (charts/kubeagents/dashboards/*.json), linted: unique panel ids, every
panel with a data source and queries, every template variable it uses defined, every PromQL query
parsed by promtool (offline, as recording rules). And every metric the dashboards and the charts'
alert rules name is one the real proxy, probe, runtime and operator processes export on /metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from charts.promtool import exported_metric_names, metric_names, promtool, write_rule_file
from charts.test_alert_rules import RULES, alerts
from charts.test_platform_chart import CHART
from harness.controlplane import ControlPlane
from harness.probe import ProbeProcess, start_probe
from harness.processes import HarnessError, ManagedProcess
from harness.proxy import StartProxy
from harness.runtime import RuntimeProcess, start_runtime
from harness.teams import install_operator_crds, start_operator_process

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


@pytest.fixture
def exported(
    start_proxies: StartProxy,
    redis_url: str,
    cluster: ControlPlane,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[set[str]]:
    """Every series name the real proxy, probe, runtime and operator processes expose on
    /metrics (each family from its `# TYPE` line, whether it has samples yet or not)."""
    proxy = start_proxies(redis_url=redis_url)
    install_operator_crds(cluster)
    started: list[ProbeProcess | RuntimeProcess | ManagedProcess] = []
    try:
        probe = start_probe(
            tmp_path_factory.mktemp("probe"), proxy_url=proxy.url,
            proxy_admin_url=proxy.admin_url, settings={"redis_url": redis_url},
        )  # fmt: skip
        started.append(probe)
        runtime = start_runtime(
            tmp_path_factory.mktemp("runtime"), proxy_url=proxy.url, redis_url=redis_url,
            settings={},
        )  # fmt: skip
        started.append(runtime)
        operator = start_operator_process(
            tmp_path_factory.mktemp("operator"), cluster, namespace=namespace, redis_url=redis_url
        )
        started.append(operator)
    except HarnessError as error:
        for process in started:
            process.stop()
        pytest.fail(f"a process did not start: {error}", pytrace=False)
    port = operator.wait_for_log(r"metrics on port (\d+)", timeout=5)[1]
    urls = [f"{proxy.admin_url}/metrics", f"{probe.url}/metrics", f"{runtime.url}/metrics",
            f"http://127.0.0.1:{port}/metrics"]  # fmt: skip
    names: set[str] = set()
    for url in urls:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200, f"{url}: {response.status_code}"
        names |= exported_metric_names(response.text)
    yield names
    for process in started:
        process.stop()


def test_dashboards_and_alerts_name_only_metrics_the_processes_export(
    exported: set[str], helm: Path, tmp_path: Path
) -> None:
    used = {
        f"{path.name} {where}": metric_names(expr)
        for path in DASHBOARDS
        for where, expr in queries(load(path))
    }
    for chart, groups in RULES.items():
        for name, rule in alerts(groups(helm, tmp_path)).items():
            used[f"{chart} alert {name}"] = metric_names(rule["expr"])
    assert all(used.values()), f"a query names no kubeagents metric: {used}"
    unknown = {where: sorted(names - exported) for where, names in used.items() if names - exported}
    assert not unknown, f"metrics no process exports on /metrics: {unknown}"
