"""The charts on the real control plane: the platform and two agents installed with `--wait`, a
prompt change shipped with `helm upgrade` and taken back with `helm rollback`, and `helm
uninstall` leaving nothing behind."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.binaries import REPO, tool
from harness.controlplane import ControlPlane
from harness.processes import HarnessError, wait_for

AGENT_CHART = REPO / "charts" / "agent"
PLATFORM_CHART = REPO / "charts" / "kubeagents"
EXAMPLES = REPO / "examples"
CHECKSUM = "kubeagents.io/config-checksum"
PROMPT_SHA = "kubeagents.io/prompt-sha256"


class Helm:
    def __init__(self, helm: Path, cluster: ControlPlane, namespace: str) -> None:
        self.helm = helm
        self.cluster = cluster
        self.namespace = namespace

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            [str(self.helm), *args, "--namespace", self.namespace],
            capture_output=True,
            text=True,
            env=self.cluster.env(),
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    def get(self, *args: str) -> Any:
        out = self.cluster.kubectl("get", *args, "-n", self.namespace, "-o", "json").stdout
        return json.loads(out)


def only(helm: Helm, kind: str, release: str) -> dict[str, Any]:
    """The one object of `kind` of the release (found by its instance label)."""
    items = helm.get(kind, "-l", f"app.kubernetes.io/instance={release}")["items"]
    assert len(items) == 1, [item["metadata"]["name"] for item in items]
    found: dict[str, Any] = items[0]
    return found


def template_annotations(helm: Helm, release: str) -> dict[str, str]:
    annotations: dict[str, str] = only(helm, "deployment", release)["spec"]["template"]["metadata"][
        "annotations"
    ]
    return annotations


def prompt_of(helm: Helm, release: str) -> str:
    data: dict[str, str] = only(helm, "configmap", release)["data"]
    return data["system-prompt.txt"]


def replica_sets(helm: Helm, release: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = helm.get(
        "replicasets", "-l", f"app.kubernetes.io/instance={release}"
    )["items"]
    return items


@pytest.mark.parametrize(
    "values",
    sorted((AGENT_CHART / "ci").glob("*-values.yaml")) + sorted(EXAMPLES.glob("*-agent.yaml")),
    ids=lambda path: path.name,
)
def test_every_ci_case_renders_objects_the_api_server_accepts(
    cluster: ControlPlane, namespace: str, helm: Path, operator_crds: list[str], values: Path
) -> None:
    rendered = subprocess.run(
        [
            str(helm), "template", "agent", str(AGENT_CHART), "-f", str(values),
            "--namespace", namespace,
            "--api-versions", "monitoring.coreos.com/v1", "--api-versions", "keda.sh/v1alpha1",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc}
    applied = subprocess.run(
        [str(tool("kubectl")), "apply", "--dry-run=server", "-n", namespace, "-f", "-"],
        input=rendered.stdout, capture_output=True, text=True, env=cluster.env(),
        timeout=60, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, f"{values.name}: {applied.stderr}"
    for kind in kinds:
        assert f"{kind.lower()}" in applied.stdout.lower(), (kind, applied.stdout)


def test_platform_and_two_agents_install_upgrade_rollback_uninstall(
    cluster: ControlPlane, namespace: str, helm: Path, tmp_path: Path, operator_crds: list[str]
) -> None:
    run = Helm(helm, cluster, namespace)
    cluster.kubectl(
        "create", "secret", "generic", "anthropic-api-key", "-n", namespace,
        "--from-literal=api-key=sk-ant-test",
    )  # fmt: skip
    run(
        "install", "kubeagents", str(PLATFORM_CHART),
        "--set", "redis.statefulset.persistence.enabled=false", "--wait", "--timeout", "180s",
    )  # fmt: skip
    for release, example in (("research", "research-agent"), ("summarizer", "summarizer-agent")):
        run(
            "install", release, str(AGENT_CHART), "-f", str(EXAMPLES / f"{example}.yaml"),
            "--wait", "--timeout", "180s",
        )  # fmt: skip
        pods = run.get("pods", "-l", f"app.kubernetes.io/instance={release}")["items"]
        assert pods, f"no pods for {release}"
        for pod in pods:
            assert pod["status"]["phase"] == "Running"

    first_prompt = prompt_of(run, "research")
    first = template_annotations(run, "research")
    assert len(replica_sets(run, "research")) == 1

    new_prompt = tmp_path / "prompt.yaml"
    new_prompt.write_text(
        "systemPrompt: |-\n  You are a meticulous research agent. Cite sources.\n"
    )
    run(
        "upgrade", "research", str(AGENT_CHART), "-f", str(EXAMPLES / "research-agent.yaml"),
        "-f", str(new_prompt), "--wait", "--timeout", "180s",
    )  # fmt: skip
    assert prompt_of(run, "research") == "You are a meticulous research agent. Cite sources."
    second = template_annotations(run, "research")
    assert second[CHECKSUM] != first[CHECKSUM]
    assert second[PROMPT_SHA] != first[PROMPT_SHA]
    assert len(replica_sets(run, "research")) == 2  # the prompt change rolled the pods

    run("rollback", "research", "1", "--wait", "--timeout", "180s")
    assert prompt_of(run, "research") == first_prompt
    third = template_annotations(run, "research")
    assert third[CHECKSUM] == first[CHECKSUM]
    assert third[PROMPT_SHA] == first[PROMPT_SHA]
    history = json.loads(run("history", "research", "-o", "json"))
    assert [entry["status"] for entry in history] == ["superseded", "superseded", "deployed"]
    # the other agent was never touched
    assert len(replica_sets(run, "summarizer")) == 1

    for release in ("research", "summarizer", "kubeagents"):
        run("uninstall", release, "--wait", "--timeout", "120s")
    untouched = [
        "ConfigMap/kube-root-ca.crt",
        "Secret/anthropic-api-key",
        "ServiceAccount/default",
    ]

    def left() -> list[str]:
        items = run.get(
            "all,configmap,secret,serviceaccount,poddisruptionbudget,networkpolicy,"
            "persistentvolumeclaim,role,rolebinding"
        )["items"]
        return sorted(f"{item['kind']}/{item['metadata']['name']}" for item in items)

    # pods and ReplicaSets go through the garbage collector: give it a moment, with a deadline
    with contextlib.suppress(HarnessError):
        wait_for(lambda: left() == untouched, timeout=60, what=f"only {untouched} to be left")
    assert left() == untouched
