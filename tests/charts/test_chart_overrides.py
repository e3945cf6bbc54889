"""Security contexts, extras and the log level as values: the defaults are the hardened settings
the charts always had; overrides land where they belong; the schema rejects wrong types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from charts.test_agent_chart import BASE, Helm, containers, env_of, pod_spec
from harness.binaries import REPO

PLATFORM = REPO / "charts" / "kubeagents"
HARDENED = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture
def helm_chart(helm: Path, tmp_path: Path) -> Helm:
    return Helm(helm, tmp_path)


def with_base(values: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **values}


def test_the_defaults_are_todays_hardened_settings(helm_chart: Helm) -> None:
    docs = helm_chart.template(BASE)
    assert pod_spec(docs)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    every = containers(docs)
    assert set(every) == {"runtime", "proxy", "probe"}
    for container in every.values():
        assert container["securityContext"] == HARDENED
        assert env_of(container)["KUBEAGENTS_LOG_LEVEL"] == {
            "name": "KUBEAGENTS_LOG_LEVEL", "value": "info",
        }  # fmt: skip


def test_openshift_style_overrides_leave_the_ids_to_the_platform(helm_chart: Helm) -> None:
    unset = {"runAsUser": None, "runAsGroup": None}
    docs = helm_chart.template(with_base({
        "podSecurityContext": {**unset, "fsGroup": None},
        "containerSecurityContext": unset,
        "logLevel": "debug",
    }))  # fmt: skip
    pod = pod_spec(docs)["securityContext"]
    assert pod == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    for container in containers(docs).values():
        context = container["securityContext"]
        assert "runAsUser" not in context
        assert "runAsGroup" not in context
        assert context["readOnlyRootFilesystem"] is True
        assert env_of(container)["KUBEAGENTS_LOG_LEVEL"]["value"] == "debug"


def test_the_extras_land_on_the_runtime_and_the_pod(helm_chart: Helm) -> None:
    docs = helm_chart.template(with_base({
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://egress:3128"}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
        "extraContainers": [{"name": "shipper", "image": "example/shipper:1.0"}],
    }))  # fmt: skip
    every = containers(docs)
    runtime = every["runtime"]
    assert env_of(runtime)["HTTPS_PROXY"]["value"] == "http://egress:3128"
    assert {"name": "ca", "mountPath": "/etc/ca", "readOnly": True} in runtime["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in pod_spec(docs)["volumes"]
    assert every["shipper"]["image"] == "example/shipper:1.0"
    for name in ("proxy", "probe"):
        assert "HTTPS_PROXY" not in env_of(every[name])
        assert all(m["name"] != "ca" for m in every[name]["volumeMounts"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"containerSecurityContext": "hardened"},
            "at '/containerSecurityContext': got string, want object",
        ),
        ({"podSecurityContext": []}, "at '/podSecurityContext': got array, want object"),
        ({"extraEnv": {"A": "b"}}, "at '/extraEnv': got object, want array"),
        ({"extraContainers": ["sidecar"]}, "at '/extraContainers/0': got string, want object"),
        ({"logLevel": "verbose"}, "at '/logLevel': value must be one of"),
    ],
)
def test_the_schema_rejects_wrong_types(
    helm_chart: Helm, values: dict[str, Any], message: str
) -> None:
    assert message in helm_chart.rejects(with_base(values))


def test_the_operator_gets_the_log_level(helm_chart: Helm) -> None:
    def operator_env(values: dict[str, Any] | None) -> dict[str, Any]:
        docs = helm_chart.template(values, chart=PLATFORM)
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e for e in container["env"]}

    assert operator_env(None)["KUBEAGENTS_LOG_LEVEL"]["value"] == "info"
    assert operator_env({"logLevel": "warning"})["KUBEAGENTS_LOG_LEVEL"]["value"] == "warning"
    rejected = helm_chart.template_result({"logLevel": "loud"}, chart=PLATFORM)
    assert rejected.returncode != 0
    assert "logLevel" in rejected.stderr
