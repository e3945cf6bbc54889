"""promtool (built from its Go module by `make tools`) and the metric names the processes export.

Shared by test_alert_rules.py and test_dashboards.py: render a chart's PrometheusRule groups into a
Prometheus rule file, run promtool on it (a failure fails the test with promtool's output), and list
the series names the proxy, probe, runtime and operator registries expose on /metrics.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.binaries import tool
from kubeagents_operator.metrics import OperatorMetrics
from kubeagents_probe.metrics import ProbeMetrics
from kubeagents_proxy.metrics import ProxyMetrics
from kubeagents_runtime.metrics import RuntimeMetrics

METRIC_NAME = re.compile(r"\bkubeagents_[a-z0-9_]+\b")
# The sample names of each family type in the text exposition.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def promtool(*args: str, cwd: Path) -> str:
    """Run promtool (a missing binary fails: `make tools` builds it); return its output."""
    binary = tool("promtool")
    result = subprocess.run(
        [str(binary), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def write_rule_file(path: Path, groups: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def exported_metric_names() -> set[str]:
    """Every series name the four processes' metric registries expose on /metrics."""
    names: set[str] = set()
    for metrics in (ProxyMetrics, ProbeMetrics, RuntimeMetrics, OperatorMetrics):
        registry = CollectorRegistry()
        metrics(registry)
        exposition = generate_latest(registry).decode()
        for family in text_string_to_metric_families(exposition):
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The kubeagents_* metric names a PromQL expression (or label_values query) names."""
    return set(METRIC_NAME.findall(expr))
