"""GitOps renders: Argo CD and Flux run `helm template` with no cluster, so every render of
both charts must be byte-identical (no `lookup`, no random values in the default path)."""

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
    args = ("-f", str(values)) if values else ()
    assert render(chart, tmp_path, *args) == render(chart, tmp_path, *args)


def password(*args: str, tmp_path: Path) -> str:
    out = render(PLATFORM, tmp_path, "--show-only", "templates/redis-secrets.yaml", *args)
    secret = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Secret")
    assert secret["metadata"]["name"] == "summarizer-kubeagents-redis-password"
    return base64.b64decode(secret["data"]["redis-password"]).decode()


def test_the_default_redis_password_is_derived_per_release(tmp_path: Path) -> None:
    derived = password(tmp_path=tmp_path)
    assert re.fullmatch(r"[0-9a-f]{32}", derived)
    assert password("--namespace", "other", tmp_path=tmp_path) != derived
    assert password("--set", "redis.auth.password=s3cret", tmp_path=tmp_path) == "s3cret"


def test_the_lookup_password_is_an_explicit_opt_in(tmp_path: Path) -> None:
    lookup = ("--set", "redis.auth.passwordSource=lookup")
    first, second = password(*lookup, tmp_path=tmp_path), password(*lookup, tmp_path=tmp_path)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", first)
    assert first != second  # random without a cluster: the reason it is not the default
    assert password(*lookup, "--set", "redis.auth.password=s3cret", tmp_path=tmp_path) == "s3cret"


def test_the_schema_rejects_an_unknown_password_source(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-cluster")}
    result = subprocess.run(
        [str(tool("helm")), "template", "x", str(PLATFORM),
         "--set", "redis.auth.passwordSource=random"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode != 0
    assert "passwordSource" in result.stderr
    assert "derived" in result.stderr
    assert "lookup" in result.stderr


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
