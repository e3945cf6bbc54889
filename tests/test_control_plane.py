"""The real control plane behaves like a cluster: controllers, scheduler, kwok nodes, helm, CEL."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness.binaries import REPO, tool
from harness.controlplane import ControlPlane, program_cmdline

HELLO_CHART = REPO / "tests" / "testdata" / "charts" / "hello"


def apply_json(
    cluster: ControlPlane, obj: dict[str, Any], *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("kubectl")), "apply", "-f", "-", *args],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=60,
        check=False,
    )


def get_json(cluster: ControlPlane, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }


def test_deployment_is_rolled_out_by_the_controllers_onto_kwok_nodes(
    cluster: ControlPlane, namespace: str
) -> None:
    applied = apply_json(cluster, deployment("web", 2), "-n", namespace)
    assert applied.returncode == 0, applied.stderr
    rollout = cluster.kubectl(
        "rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s", check=False
    )
    assert rollout.returncode == 0, rollout.stderr
    assert "successfully rolled out" in rollout.stdout

    replica_sets = get_json(cluster, "replicasets", "-n", namespace)["items"]
    assert [rs["metadata"]["ownerReferences"][0]["name"] for rs in replica_sets] == ["web"]
    pods = get_json(cluster, "pods", "-n", namespace)["items"]
    assert len(pods) == 2
    nodes = {node["metadata"]["name"] for node in get_json(cluster, "nodes")["items"]}
    for pod in pods:
        assert pod["spec"]["nodeName"] in nodes  # bound by the scheduler
        assert pod["status"]["phase"] == "Running"  # reported by kwok
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"


def test_helm_install_upgrade_rollback_and_history(
    cluster: ControlPlane, namespace: str, helm: Path
) -> None:
    def run_helm(*args: str) -> str:
        result = subprocess.run(
            [str(helm), *args, "--namespace", namespace],
            capture_output=True,
            text=True,
            env=cluster.env(),
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
        return result.stdout

    def greeting() -> str:
        cm = get_json(cluster, "configmap", "greet-greeting", "-n", namespace)
        return str(cm["data"]["message"])

    def template_checksum() -> str:
        deploy = get_json(cluster, "deployment", "greet", "-n", namespace)
        return str(deploy["spec"]["template"]["metadata"]["annotations"]["checksum/greeting"])

    run_helm("install", "greet", str(HELLO_CHART), "--wait", "--timeout", "120s")
    assert greeting() == "hello"
    first_checksum = template_checksum()

    run_helm("upgrade", "greet", str(HELLO_CHART), "--set", "message=world", "--wait")
    assert greeting() == "world"
    assert template_checksum() != first_checksum  # the new value rolls the pods

    run_helm("rollback", "greet", "1", "--wait")
    assert greeting() == "hello"
    assert template_checksum() == first_checksum

    history = json.loads(run_helm("history", "greet", "-o", "json"))
    assert [(h["revision"], h["status"]) for h in history] == [
        (1, "superseded"),
        (2, "superseded"),
        (3, "deployed"),
    ]
    assert history[2]["description"] == "Rollback to 1"


def test_server_side_dry_run_rejects_an_invalid_object_with_the_api_servers_message(
    cluster: ControlPlane, namespace: str
) -> None:
    result = apply_json(cluster, deployment("bad", -1), "-n", namespace, "--dry-run=server")
    assert result.returncode != 0
    assert "spec.replicas: Invalid value: -1: must be greater than or equal to 0" in result.stderr
    assert cluster.kubectl("get", "deployment", "bad", "-n", namespace, check=False).returncode


WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.harness.kubeagents.io"},
    "spec": {
        "group": "harness.kubeagents.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["minReplicas", "maxReplicas"],
                                "properties": {
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minReplicas <= self.maxReplicas",
                                        "message": "minReplicas must not exceed maxReplicas",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def widget(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "harness.kubeagents.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": spec,
    }


def test_crd_schema_and_cel_rule_reject_invalid_custom_resources(
    cluster: ControlPlane, namespace: str
) -> None:
    created = apply_json(cluster, WIDGET_CRD)
    assert created.returncode == 0, created.stderr
    try:
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/widgets.harness.kubeagents.io",
            "--timeout=60s",
        )  # fmt: skip
        valid = apply_json(cluster, widget({"minReplicas": 1, "maxReplicas": 3}), "-n", namespace)
        assert valid.returncode == 0, valid.stderr

        cel = apply_json(cluster, widget({"minReplicas": 5, "maxReplicas": 3}), "-n", namespace)
        assert cel.returncode != 0
        assert "spec: Invalid value" in cel.stderr
        assert "minReplicas must not exceed maxReplicas" in cel.stderr

        typed = apply_json(
            cluster, widget({"minReplicas": "two", "maxReplicas": 3}), "-n", namespace
        )
        assert typed.returncode != 0
        assert re.search(
            r"spec\.minReplicas: Invalid value: .*must be of type integer", typed.stderr
        )

        stored = get_json(cluster, "widget", "w", "-n", namespace)
        assert stored["spec"] == {"minReplicas": 1, "maxReplicas": 3}  # rejects changed nothing
    finally:
        cluster.kubectl(
            "delete", "crd", "widgets.harness.kubeagents.io", "--wait=false", check=False
        )


def run_ct(cluster: ControlPlane, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("ct")), "lint", "--config", str(REPO / "ct.yaml"), *args],
        capture_output=True,
        text=True,
        env=cluster.env(),
        cwd=cwd,
        timeout=300,
        check=False,
    )


def test_ct_lint_runs_over_the_repository_charts(cluster: ControlPlane) -> None:
    result = run_ct(cluster, "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All charts linted successfully" in result.stdout


def test_ct_lint_passes_a_good_chart_and_fails_a_broken_one(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    good = run_ct(cluster, "--charts", str(HELLO_CHART.relative_to(REPO)))
    assert good.returncode == 0, good.stdout + good.stderr
    assert '✔︎ hello => (version: "0.1.0"' in good.stdout

    broken = tmp_path / "charts" / "hello"
    shutil.copytree(HELLO_CHART, broken)
    chart_yaml = broken / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("version: 0.1.0", "version: not-semver"))
    bad = run_ct(cluster, "--charts", str(broken))
    assert bad.returncode != 0
    assert "not-semver" in bad.stdout + bad.stderr


def test_make_cluster_up_and_cluster_down_from_a_shell(tmp_path: Path) -> None:
    cluster_dir = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}

    def make(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "--no-print-directory", target, f"CLUSTER_DIR={cluster_dir}"],
            cwd=REPO, capture_output=True, text=True, env=env, timeout=600, check=False,
        )  # fmt: skip

    up = make("cluster-up")
    assert up.returncode == 0, up.stdout + up.stderr
    exported = re.search(r"^export KUBECONFIG=(\S+)$", up.stdout, re.MULTILINE)
    assert exported, up.stdout
    recorded = json.loads((cluster_dir / "cluster.json").read_text())["processes"]
    try:
        nodes = subprocess.run(
            [str(tool("kubectl")), "get", "nodes", "--no-headers"],
            capture_output=True, text=True, env={**env, "KUBECONFIG": exported.group(1)},
            timeout=60, check=True,
        ).stdout.splitlines()  # fmt: skip
        assert len(nodes) == 2
        assert all(line.split()[1] == "Ready" for line in nodes)
    finally:
        down = make("cluster-down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "control plane stopped" in down.stdout
    still_running = [p for p in recorded if p["program"] in program_cmdline(p["pid"])]
    assert still_running == []
