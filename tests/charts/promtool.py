"""promtool (built from its Go module by `make tools`) and the metric names in PromQL and /metrics.

Shared by test_alert_rules.py and test_dashboard_metrics.py: write PrometheusRule groups as a
Prometheus rule file, run promtool on it (a failure fails the test with promtool's output), list
the series names a /metrics exposition holds and the kubeagents_* names a query uses.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from harness.binaries import tool

METRIC_NAME = re.compile(r"\bkubeagents_[a-z0-9_]+\b")
# The sample names of each family type in the text exposition.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
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


def exported_metric_names(exposition: str) -> set[str]:
    """The series names a /metrics text exposition can hold, from its `# TYPE` lines (a family
    with no sample yet included): counters as `_total`, histograms as `_bucket`/`_sum`/`_count`."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            if kind == "counter":
                family = family.removesuffix("_total")
            names.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    """The kubeagents_* metric names a PromQL expression (or label_values query) names."""
    return set(METRIC_NAME.findall(expr))
