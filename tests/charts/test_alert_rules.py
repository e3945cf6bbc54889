"""The charts' PrometheusRules, tested with promtool: `promtool check rules` on each rendered rule
file, and `promtool test rules` (tests/charts/testdata/*-rules-test.yaml) proving that each alert
fires when its condition holds, only after its `for:`, and not otherwise. (test_dashboard_metrics.py
checks that every metric an alert names is one the processes export.)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from charts.promtool import promtool, write_rule_file
from charts.test_agent_chart import CHART as AGENT_CHART
from charts.test_agent_chart import MONITORING_API, Helm
from charts.test_platform_chart import CHART as PLATFORM_CHART
from charts.test_platform_chart import RELEASE, run_helm

TESTDATA = Path(__file__).parent / "testdata"


def agent_groups(helm: Path, tmp_path: Path) -> list[dict[str, Any]]:
    production = AGENT_CHART / "ci" / "production-values.yaml"
    api = ("--api-versions", MONITORING_API)
    docs = Helm(helm, tmp_path).template(None, *api, files=(production,))
    (rule,) = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def operator_groups(helm: Path, tmp_path: Path) -> list[dict[str, Any]]:
    api = ("--api-versions", "monitoring.coreos.com/v1/PrometheusRule")
    result = run_helm(helm, "template", RELEASE, str(PLATFORM_CHART), "-n", "agents", *api)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (rule,) = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


RULES = {"agent": agent_groups, "operator": operator_groups}


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


@pytest.mark.parametrize("chart", RULES)
def test_promtool_checks_the_rendered_rules(chart: str, helm: Path, tmp_path: Path) -> None:
    groups = RULES[chart](helm, tmp_path)
    rules = write_rule_file(tmp_path / "rules.yaml", groups)
    output = promtool("check", "rules", str(rules), cwd=tmp_path)
    assert f"SUCCESS: {len(alerts(groups))} rules found" in output, output


@pytest.mark.parametrize("chart", RULES)
def test_each_alert_fires_when_its_condition_holds_and_only_then(
    chart: str, helm: Path, tmp_path: Path
) -> None:
    groups = RULES[chart](helm, tmp_path)
    # The unit tests prove when alerts fire (their labels); `check rules` above checks the
    # annotation templates, whose rendered text is not compared here.
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    write_rule_file(tmp_path / "rules.yaml", groups)
    tests = shutil.copy(TESTDATA / f"{chart}-rules-test.yaml", tmp_path / "rules-test.yaml")
    tested = {
        line.split("alertname:")[1].split(",")[0].strip()
        for line in Path(tests).read_text().splitlines()
        if "alertname:" in line
    }
    assert tested == set(alerts(groups)), "every alert needs its promtool unit tests"
    promtool("test", "rules", str(tests), cwd=tmp_path)
