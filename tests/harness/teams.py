"""The diamond team of the operator tests: research, then critique and outline in parallel,
then summarize; over the two agents of `harness.agents`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.controlplane import ControlPlane
from harness.processes import ManagedProcess, settings_env
from harness.proxy import KUBEAGENTS

# start_operator(ready_log=..., **settings): an operator process (tests/kubeagents_operator)
StartOperator = Callable[..., ManagedProcess]
CRDS = Path(__file__).parents[2] / "operator" / "crds"


def install_operator_crds(cluster: ControlPlane) -> None:
    """Apply the operator's CustomResourceDefinitions and wait until they are served."""
    for file in sorted(CRDS.glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(file))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/agentteams.kubeagents.io", "crd/agentruns.kubeagents.io",
    )  # fmt: skip


def start_operator_process(
    workdir: Path,
    cluster: ControlPlane,
    *,
    namespace: str,
    redis_url: str,
    ready_log: str = r"kubeagents operator watching",
    extra_env: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
) -> ManagedProcess:
    """A `kubeagents operator` process watching `namespace` (metrics on a free loopback port),
    returned once `ready_log` is in its log (a HarnessError if it is not)."""
    env = settings_env(
        "KUBEAGENTS_OPERATOR_",
        {"redis_url": redis_url, "watch_namespaces": [namespace], "metrics_port": 0,
         "metrics_host": "127.0.0.1", "wait_seconds": 2, **(settings or {})},
    )  # fmt: skip
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    env.update(extra_env or {})
    process = ManagedProcess("operator", [str(KUBEAGENTS), "operator"], workdir / "operator.log",
                             env=env)  # fmt: skip
    process.wait_for_log(ready_log, timeout=30)
    return process


SECTIONS = '```json\n{"sections": ["intro", "risks"]}\n```'
DIAMOND: dict[str, Any] = {
    "apiVersion": "kubeagents.io/v1alpha1",
    "kind": "AgentTeam",
    "metadata": {"name": "research-then-summarize"},
    "spec": {
        "roles": {"researcher": {"agent": "research"}, "writer": {"agent": "summarizer"}},
        "inputSchema": {"type": "object", "required": ["topic"],
                        "properties": {"topic": {"type": "string"}}},
        "steps": [
            {"name": "research", "role": "researcher", "prompt": "Research {{ .input.topic }}"},
            {"name": "critique", "role": "researcher", "dependsOn": ["research"],
             "prompt": "Critique: {{ .steps.research.output }}"},
            {"name": "outline", "role": "writer", "dependsOn": ["research"],
             "prompt": "Outline: {{ .steps.research.output }}",
             "outputSchema": {"type": "object", "required": ["sections"]}},
            {"name": "summarize", "role": "writer", "dependsOn": ["critique", "outline"],
             "prompt": "Write {{ .steps.outline.data.sections }}, fixing: {{ .steps.critique.output }}"},  # noqa: E501
        ],
        "output": "{{ .steps.summarize.output }}",
        "budget": {"tokens": 100000},
    },
}  # fmt: skip
INPUT = {"topic": "AI in healthcare"}
# One step on the research agent: what the schedule, leader and queue tests need.
ONE_STEP: dict[str, Any] = {
    "apiVersion": "kubeagents.io/v1alpha1",
    "kind": "AgentTeam",
    "metadata": {"name": "one-step"},
    "spec": {
        "roles": {"researcher": {"agent": "research"}},
        "steps": [{"name": "research", "role": "researcher",
                   "prompt": "Research {{ .input.topic }}"}],
        "output": "{{ .steps.research.output }}",
    },
}  # fmt: skip


def run_of(team: dict[str, Any], name: str, **spec: Any) -> dict[str, Any]:
    """An AgentRun of `team` named `name`, with `spec` (input, resumeFrom, ...)."""
    return {
        "apiVersion": "kubeagents.io/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name},
        "spec": {"team": team["metadata"]["name"], **spec},
    }


RUN: dict[str, Any] = {
    "apiVersion": "kubeagents.io/v1alpha1",
    "kind": "AgentRun",
    "metadata": {"name": "report-1"},
    "spec": {"team": "research-then-summarize", "input": INPUT},
}


def apply(cluster: ControlPlane, namespace: str, manifest: dict[str, Any], tmp: Path) -> None:
    """`kubectl create` the manifest."""
    file = tmp / f"{manifest['kind']}-{manifest['metadata']['name']}.json"
    file.write_text(json.dumps(manifest))
    cluster.kubectl("create", "-n", namespace, "-f", str(file))


def get(cluster: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cluster.kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout
    )
    return found


def run_status(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get(cluster, namespace, "agentrun", name).get("status", {})
    return status


def step_phases(cluster: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    steps = run_status(cluster, namespace, name).get("steps", {})
    return {step: entry.get("phase", "") for step, entry in steps.items()}
