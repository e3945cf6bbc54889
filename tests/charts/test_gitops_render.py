"""GitOps renders: Argo CD and Flux run `helm template` with no cluster, so every render of
both charts with the GitOps values must be byte-identical: the agent chart's default path has
no `lookup`; the platform chart's Redis password is a value or an existing Secret there."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.binaries import REPO, tool

AGENT = REPO / "charts" / "agent"
PLATFORM = REPO / "charts" / "kubeagents"
# The agent chart needs an API key, so its defaults render is ci/defaults-values.yaml.
RENDERS = [(PLATFORM, None)] + [(chart, values) for chart in (AGENT, PLATFORM)
                                for values in sorted((chart / "ci").glob("*.yaml"))]  # fmt: skip
# The GitOps way for the platform's Redis password (README: "The Redis password").
GITOPS_PASSWORD = ("--set", "redis.auth.password=from-sops")


def render(chart: Path, tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-cluster")}  # nothing to reach
    result = subprocess.run(
        [str(tool("helm")), "template", "summarizer", str(chart), "--namespace", "agents", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("chart", "values"), RENDERS,
    ids=[f"{c.name}-{v.name if v else 'defaults'}" for c, v in RENDERS],
)  # fmt: skip
def test_each_chart_renders_identically_twice(
    chart: Path, values: Path | None, tmp_path: Path
) -> None:
    args = (("-f", str(values)) if values else ()) + (GITOPS_PASSWORD if chart == PLATFORM else ())
    assert render(chart, tmp_path, *args) == render(chart, tmp_path, *args)


def password(*args: str, tmp_path: Path) -> str:
    out = render(PLATFORM, tmp_path, "--show-only", "templates/redis-secrets.yaml", *args)
    secret = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Secret")
    assert secret["metadata"]["name"] == "summarizer-kubeagents-redis-password"
    return base64.b64decode(secret["data"]["redis-password"]).decode()


def test_a_password_value_is_used_as_given(tmp_path: Path) -> None:
    assert password(*GITOPS_PASSWORD, tmp_path=tmp_path) == "from-sops"


def test_without_a_password_value_each_render_without_a_cluster_generates_a_new_one(
    tmp_path: Path,
) -> None:
    """Why GitOps sets the password: `lookup` finds nothing under `helm template`."""
    first, second = password(tmp_path=tmp_path), password(tmp_path=tmp_path)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", first)
    assert first != second


def test_prompt_checksum_rolls_the_pods_without_lookup(tmp_path: Path) -> None:
    existing = ("-f", str(AGENT / "ci" / "existing-secret-values.yaml"))

    def checksum(*args: str) -> str:
        out = render(AGENT, tmp_path, *existing, *args)
        [line] = [ln for ln in out.splitlines() if "kubeagents.io/config-checksum:" in ln]
        return line.split(":", 1)[1].strip()

    assert checksum() == checksum()
    assert checksum("--set", "promptChecksum=v2") != checksum("--set", "promptChecksum=v1")
    assert checksum("--set", "promptChecksum=v1") != checksum()


def test_a_new_prompt_rolls_the_pods(tmp_path: Path) -> None:
    base = ("-f", str(AGENT / "ci" / "defaults-values.yaml"))

    def checksum(prompt: str) -> str:
        out = render(AGENT, tmp_path, *base, "--set", f"systemPrompt={prompt}")
        [line] = [ln for ln in out.splitlines() if "kubeagents.io/config-checksum:" in ln]
        return line.split(":", 1)[1].strip()

    assert checksum("Be brief.") == checksum("Be brief.")
    assert checksum("Be brief.") != checksum("Be thorough.")
