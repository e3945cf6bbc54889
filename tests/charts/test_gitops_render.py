"""GitOps renders: Argo CD and Flux run `helm template` with no cluster, so every render of the
agent chart must be byte-identical (no `lookup`, no random values in the default path)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness.binaries import REPO, tool

AGENT = REPO / "charts" / "agent"


def render(chart: Path, tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-cluster")}  # nothing to reach
    result = subprocess.run(
        [str(tool("helm")), "template", "summarizer", str(chart), "--namespace", "agents", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("values", sorted((AGENT / "ci").glob("*.yaml")), ids=lambda p: p.name)
def test_the_agent_chart_renders_identically_twice(values: Path, tmp_path: Path) -> None:
    assert render(AGENT, tmp_path, "-f", str(values)) == render(AGENT, tmp_path, "-f", str(values))


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
