"""The CRDs on a real kube-apiserver: valid teams and runs are accepted, invalid ones rejected by
the schema or CEL with a message naming the field, and a run's spec is immutable but for
cancel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.controlplane import ControlPlane
from harness.teams import install_operator_crds
from kubeagents_operator.runs import TeamSpec, team_problems

TEAM: dict[str, Any] = {
    "apiVersion": "kubeagents.io/v1alpha1",
    "kind": "AgentTeam",
    "metadata": {"name": "research-then-summarize"},
    "spec": {
        "roles": {"researcher": {"agent": "research"}, "writer": {"agent": "summarizer"}},
        "steps": [
            {"name": "research", "role": "researcher", "prompt": "Research {{ .input.topic }}"},
            {
                "name": "outline",
                "role": "writer",
                "dependsOn": ["research"],
                "prompt": "Outline {{ .steps.research.output }}",
                "outputSchema": {"type": "object", "required": ["sections"]},
            },
        ],
        "budget": {"tokens": 500000, "usd": 10},
        "timeoutSeconds": 3600,
    },
}
RUN: dict[str, Any] = {
    "apiVersion": "kubeagents.io/v1alpha1",
    "kind": "AgentRun",
    "metadata": {"name": "run-1"},
    "spec": {"team": "research-then-summarize", "input": {"topic": "AI in healthcare"}},
}


@pytest.fixture(scope="module")
def crds(cluster: ControlPlane) -> ControlPlane:
    install_operator_crds(cluster)
    return cluster


def create(cluster: ControlPlane, namespace: str, manifest: dict[str, Any], tmp: Path) -> str:
    """kubectl create; "" when accepted, else kubectl's error text."""
    file = tmp / "manifest.json"
    file.write_text(json.dumps(manifest))
    done = cluster.kubectl("create", "-n", namespace, "-f", str(file), check=False)
    return "" if done.returncode == 0 else done.stderr


def with_spec(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(json.dumps(base))
    manifest["spec"].update(changes)
    return manifest


def with_step(index: int, **changes: Any) -> dict[str, Any]:
    manifest = with_spec(TEAM)
    manifest["spec"]["steps"][index].update(changes)
    return manifest


def test_a_valid_team_and_run_are_accepted_with_defaults(
    crds: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    assert create(crds, namespace, TEAM, tmp_path) == ""
    assert create(crds, namespace, RUN, tmp_path) == ""
    team = json.loads(
        crds.kubectl(
            "get", "-n", namespace, "agentteam", "research-then-summarize", "-o", "json"
        ).stdout
    )
    assert team["spec"]["steps"][0]["maxAttempts"] == 1
    columns = crds.kubectl("get", "-n", namespace, "agentruns").stdout.splitlines()[0].split()
    assert columns == ["NAME", "TEAM", "PHASE", "STEPS", "TOKENS", "COST", "AGE"]


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("step name not a DNS label", with_step(0, name="Research_1"), "spec.steps[0].name"),
    ("duplicate step name", with_spec(TEAM, steps=[TEAM["spec"]["steps"][0]] * 2), "Duplicate value"),  # noqa: E501
    ("unknown dependency", with_step(1, dependsOn=["ghost"]), "steps[].dependsOn: every dependency must name a step"),  # noqa: E501
    ("self dependency", with_step(1, dependsOn=["outline"]), "a step cannot depend on itself"),
    ("role not in roles", with_step(1, role="editor"), "steps[].role: every step's role must be one of roles"),  # noqa: E501
    ("empty prompt", with_step(0, prompt=""), "spec.steps[0].prompt"),
    ("blank prompt", with_step(0, prompt="   "), "must not be blank"),
    ("no steps", with_spec(TEAM, steps=[]), "spec.steps"),
    ("no roles", with_spec(TEAM, roles={}), "spec.roles"),
    ("zero attempts", with_step(0, maxAttempts=0), "spec.steps[0].maxAttempts"),
    ("negative token budget", with_spec(TEAM, budget={"tokens": -1}), "spec.budget.tokens"),
    ("zero usd budget", with_spec(TEAM, budget={"usd": 0}), "spec.budget.usd"),
    ("timeout too long", with_spec(TEAM, timeoutSeconds=10**7), "spec.timeoutSeconds"),
    ("bad concurrency policy", with_spec(TEAM, schedule={"cron": "* * * * *", "concurrencyPolicy": "Sometimes"}), "spec.schedule.concurrencyPolicy"),  # noqa: E501
    ("run without team", with_spec(RUN, team=""), "spec.team"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "manifest", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_an_invalid_manifest_is_rejected_naming_the_field(
    crds: ControlPlane,
    namespace: str,
    tmp_path: Path,
    case: str,
    manifest: dict[str, Any],
    field: str,
) -> None:
    error = create(crds, namespace, manifest, tmp_path)
    assert error, f"{case}: accepted"
    assert field in error, error
    kind = manifest["kind"].lower() + "s"
    assert crds.kubectl("get", "-n", namespace, kind, "-o", "name").stdout == ""


def test_a_run_spec_is_immutable_except_cancel(
    crds: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    assert create(crds, namespace, RUN, tmp_path) == ""

    def patch(spec: dict[str, Any]) -> str:
        done = crds.kubectl(
            "patch", "-n", namespace, "agentrun", "run-1", "--type", "merge",
            "-p", json.dumps({"spec": spec}), check=False,
        )  # fmt: skip
        return "" if done.returncode == 0 else done.stderr

    assert "spec.input is immutable" in patch({"input": {"topic": "something else"}})
    assert "spec.team is immutable" in patch({"team": "other-team"})
    assert patch({"cancel": True}) == ""
    assert "a cancelled run cannot be resumed" in patch({"cancel": False})


def test_the_examples_are_accepted_and_the_team_is_valid(
    crds: ControlPlane, namespace: str
) -> None:
    examples = Path(__file__).parents[2] / "examples"
    crds.kubectl("create", "-n", namespace, "-f", str(examples / "team.yaml"))
    crds.kubectl("create", "-n", namespace, "-f", str(examples / "run.yaml"))
    team = json.loads(
        crds.kubectl(
            "get", "-n", namespace, "agentteam", "research-then-summarize", "-o", "json"
        ).stdout
    )
    assert team_problems(TeamSpec.parse(team["spec"])) == []
    assert {role["agent"] for role in team["spec"]["roles"].values()} == {"research", "summarizer"}
