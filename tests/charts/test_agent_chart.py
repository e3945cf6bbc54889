"""charts/agent with the real helm (and ct): lint, what it renders, and the contract between its
values and the environment variables the three processes read.

- Every ci/*-values.yaml case and every example passes `helm lint --strict` and renders; `ct lint`
  passes.
- The API key reaches the proxy container only; the runtime holds no key and calls the proxy on
  loopback; the runtime's readiness is the probe sidecar's /readyz.
- The prompt checksum rolls the pods when the prompt changes and not on a chart-version bump.
- Drift guard: every variable the chart renders is a field of the settings class of its container,
  every required field is set, each container's environment builds its real settings class, and
  every value reaches the field it documents (distinctive values, read back from the classes).
- Invalid values are rejected with a message that names the key.
- The README is what helm-docs generates from values.yaml (a stale README fails).

The server-side tests (dry-run=server, install/upgrade/rollback/uninstall) are elsewhere.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from harness.binaries import REPO, tool, tools_dir
from kubeagents.logs import configured_level
from kubeagents.task_command import TaskSettings
from kubeagents_probe.settings import ProbeSettings
from kubeagents_proxy.request_options import (
    DEFAULT_ALLOWED_BETAS,
    DEFAULT_INFERENCE_GEO_MULTIPLIERS,
)
from kubeagents_proxy.settings import ProxySettings
from kubeagents_runtime.settings import RuntimeSettings

CHART = REPO / "charts" / "agent"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
EXAMPLES = sorted((REPO / "examples").glob("*-agent.yaml"))  # values of agent releases
MONITORING_API = "monitoring.coreos.com/v1"
RELEASE, NAMESPACE = "research", "team-a"
FULLNAME = "research-agent"  # release "research" + chart "agent"
BASE: dict[str, Any] = {"apiKey": {"existingSecret": "anthropic-api-key"}}

Docs = list[dict[str, Any]]


# --- rendering ---------------------------------------------------------------------------------


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of values layers (later wins), like helm's -f files."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


class Helm:
    """`helm template` / `helm lint` of a chart with values given as dicts or files."""

    def __init__(self, binary: Path, tmp_path: Path) -> None:
        self.binary = binary
        self.tmp_path = tmp_path
        self.count = 0

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=60, check=False
        )

    def values_args(self, values: dict[str, Any] | None, files: tuple[Path, ...]) -> list[str]:
        args = [arg for file in files for arg in ("-f", str(file))]
        if values is not None:
            self.count += 1
            path = self.tmp_path / f"values-{self.count}.yaml"
            path.write_text(yaml.safe_dump(values))
            args += ["-f", str(path)]
        return args

    def template_result(
        self,
        values: dict[str, Any] | None = None,
        *extra: str,
        files: tuple[Path, ...] = (),
        chart: Path = CHART,
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template", RELEASE, str(chart), "--namespace", NAMESPACE,
            *self.values_args(values, files), *extra,
        )  # fmt: skip

    def template(
        self,
        values: dict[str, Any] | None = None,
        *extra: str,
        files: tuple[Path, ...] = (),
        chart: Path = CHART,
    ) -> Docs:
        result = self.template_result(values, *extra, files=files, chart=chart)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def rejects(self, values: dict[str, Any]) -> str:
        result = self.template_result(values)
        assert result.returncode != 0, f"accepted {values}"
        return result.stderr


@pytest.fixture
def helm_chart(helm: Path, tmp_path: Path) -> Helm:
    return Helm(helm, tmp_path)


def kinds(docs: Docs) -> set[str]:
    return {doc["kind"] for doc in docs}


def one(docs: Docs, kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def pod_spec(docs: Docs) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def containers(docs: Docs) -> dict[str, dict[str, Any]]:
    """Every container of the pod (init containers included), by name."""
    spec = pod_spec(docs)
    every = [*spec.get("initContainers", []), *spec["containers"]]
    return {container["name"]: container for container in every}


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's env entries by name (each entry: `value` or `valueFrom`)."""
    names = [entry["name"] for entry in container.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env names in {container['name']}"
    assert "envFrom" not in container  # every variable is spelled out
    return {entry["name"]: entry for entry in container.get("env", [])}


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {name: e["value"] for name, e in env_of(container).items() if "value" in e}


# --- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_VALUES + EXAMPLES, ids=lambda p: p.name)
def test_helm_lint_strict_passes_and_renders_every_ci_case_and_example(
    helm_chart: Helm, values_file: Path
) -> None:
    lint = helm_chart.run("lint", "--strict", str(CHART), "-f", str(values_file))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "0 chart(s) failed" in lint.stdout
    assert "[WARNING]" not in lint.stdout
    assert "[ERROR]" not in lint.stdout
    # `helm lint` logs a template's `fail` without failing: rendering must succeed too
    docs = helm_chart.template(None, "--api-versions", MONITORING_API, files=(values_file,))
    assert "Deployment" in kinds(docs)


def test_the_ci_cases_cover_the_issue_list() -> None:
    names = {path.name for path in CI_VALUES}
    assert {
        "defaults-values.yaml",
        "production-values.yaml",
        "legacy-sidecars-values.yaml",
        "existing-secret-values.yaml",
        "external-redis-values.yaml",
        "server-tools-values.yaml",
    } <= names
    assert {path.name for path in EXAMPLES} >= {"research-agent.yaml", "summarizer-agent.yaml"}


def test_ct_lint_passes_for_the_agent_chart() -> None:
    path = os.pathsep.join([str(tools_dir()), str(REPO / ".venv" / "bin"), os.environ["PATH"]])
    result = subprocess.run(
        [str(tool("ct")), "lint", "--config", str(REPO / "ct.yaml"), "--charts", "charts/agent"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PATH": path},
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All charts linted successfully" in result.stdout
    for values_file in CI_VALUES:  # ct lints each ci case
        assert f'values file "charts/agent/ci/{values_file.name}"' in result.stdout


# --- the key, loopback, readiness ----------------------------------------------------------------


@pytest.mark.parametrize(
    "api_key",
    [{"existingSecret": "team-a-anthropic", "existingSecretKey": "anthropic-key"},
     {"existingSecret": "", "value": "sk-ant-test-8f3c2a"}],
    ids=["existing-secret", "value"],
)  # fmt: skip
def test_the_api_key_reaches_the_proxy_container_only(
    helm_chart: Helm, api_key: dict[str, str]
) -> None:
    docs = helm_chart.template(
        {"apiKey": api_key}, files=(CHART / "ci" / "production-values.yaml",)
    )
    secret_name = api_key["existingSecret"] or f"{FULLNAME}-api-key"
    key_name = api_key.get("existingSecretKey", "api-key")
    spec = pod_spec(docs)
    [volume] = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == secret_name]
    assert volume["secret"]["items"] == [{"key": key_name, "path": key_name}]

    by_name = containers(docs)
    assert set(by_name) == {"proxy", "probe", "runtime"}
    for name, container in by_name.items():
        text = json.dumps(container)
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        names = set(env_of(container))
        if name == "proxy":
            assert volume["name"] in mounts
            assert plain_env(container)["KUBEAGENTS_PROXY_API_KEY_FILE"] == (
                f"/etc/kubeagents/api-key/{key_name}"
            )
        else:  # search the whole container, not just the obvious places
            assert volume["name"] not in mounts
            assert secret_name not in text
            assert not [n for n in names if "API_KEY" in n]
    # the pod spec outside the containers names the Secret only in the volume
    outside = {k: v for k, v in spec.items() if k not in ("containers", "initContainers")}
    assert json.dumps(outside).count(secret_name) == 1
    if not api_key["existingSecret"]:
        secret = one(docs, "Secret")
        assert secret["metadata"]["name"] == secret_name
        assert api_key["value"] not in json.dumps(one(docs, "Deployment"))
    else:
        assert "Secret" not in kinds(docs)


def test_the_runtime_holds_no_key_and_calls_the_proxy_on_loopback(helm_chart: Helm) -> None:
    docs = helm_chart.template(BASE)
    by_name = containers(docs)
    runtime_env = plain_env(by_name["runtime"])
    assert runtime_env["KUBEAGENTS_RUNTIME_PROXY_URL"] == "http://127.0.0.1:8080"
    assert not [name for name in env_of(by_name["runtime"]) if "KEY" in name]
    probe_env = plain_env(by_name["probe"])
    assert probe_env["KUBEAGENTS_PROBE_PROXY_URL"] == "http://127.0.0.1:8080"
    assert probe_env["KUBEAGENTS_PROBE_PROXY_ADMIN_URL"] == "http://127.0.0.1:9090"
    proxy_env = plain_env(by_name["proxy"])
    assert proxy_env["KUBEAGENTS_PROXY_HOST"] == "127.0.0.1"  # the API never leaves the pod
    assert proxy_env["KUBEAGENTS_PROXY_PORT"] == "8080"
    assert 8080 not in [p["containerPort"] for c in by_name.values() for p in c.get("ports", [])]


def test_readiness_of_the_runtime_is_the_probe_sidecars_readyz(helm_chart: Helm) -> None:
    by_name = containers(helm_chart.template(BASE))
    runtime = by_name["runtime"]
    assert runtime["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9091}
    assert plain_env(runtime)["KUBEAGENTS_RUNTIME_READINESS_URL"] == "http://127.0.0.1:9091/readyz"
    assert {p["name"]: p["containerPort"] for p in by_name["probe"]["ports"]} == {"probe": 9091}
    liveness = {
        name: (c["livenessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["port"])
        for name, c in by_name.items()
    }
    assert liveness == {
        "proxy": ("/livez", "metrics"),
        "probe": ("/livez", "probe"),
        "runtime": ("/livez", "http"),
    }
    ports = {
        name: {p["name"]: p["containerPort"] for p in c["ports"]} for name, c in by_name.items()
    }
    assert ports == {
        "proxy": {"metrics": 9090},
        "probe": {"probe": 9091},
        "runtime": {"http": 8081},
    }
    for container in by_name.values():
        assert container["startupProbe"]["httpGet"]["path"] == "/livez"
        assert "readinessProbe" not in container or container["name"] == "runtime"


def test_native_sidecars_by_default_and_ordinary_containers_for_old_clusters(
    helm_chart: Helm,
) -> None:
    native = pod_spec(helm_chart.template(BASE))
    assert [c["name"] for c in native["initContainers"]] == ["proxy", "probe"]
    assert all(c["restartPolicy"] == "Always" for c in native["initContainers"])
    assert [c["name"] for c in native["containers"]] == ["runtime"]
    assert "lifecycle" not in json.dumps(native)

    legacy = pod_spec(helm_chart.template(merged(BASE, {"sidecars": {"native": False}})))
    assert "initContainers" not in legacy
    assert [c["name"] for c in legacy["containers"]] == ["runtime", "proxy", "probe"]
    for container in legacy["containers"]:
        assert "restartPolicy" not in container
        if container["name"] != "runtime":  # they wait until the runtime has drained
            command = container["lifecycle"]["preStop"]["exec"]["command"]
            assert command[:2] == ["python3", "-c"]
            assert "127.0.0.1:8081/livez" in command[2]
            assert "range(600)" in command[2]
            compile(command[2], "preStop", "exec")


def test_each_container_runs_its_kubeagents_subcommand_from_one_image(helm_chart: Helm) -> None:
    by_name = containers(helm_chart.template(merged(BASE, {"image": {"tag": "1.2.3"}})))
    assert {name: c["command"] for name, c in by_name.items()} == {
        "proxy": ["kubeagents", "proxy"],
        "probe": ["kubeagents", "probe"],
        "runtime": ["kubeagents", "runtime"],
    }
    assert {c["image"] for c in by_name.values()} == {"ghcr.io/kubeagents/kubeagents:1.2.3"}
    default = containers(helm_chart.template(BASE))
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert {c["image"] for c in default.values()} == {
        f"ghcr.io/kubeagents/kubeagents:{app_version}"
    }


def test_every_container_is_hardened_and_the_pod_gets_no_api_token(helm_chart: Helm) -> None:
    docs = helm_chart.template(BASE)
    spec = pod_spec(docs)
    assert spec["automountServiceAccountToken"] is False
    # no Service's *_PORT / *_SERVICE_HOST variables: a Service named e.g. kubeagents-proxy
    # would otherwise set KUBEAGENTS_PROXY_PORT in every container
    assert spec["enableServiceLinks"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for container in containers(docs).values():
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == 10001
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp["name"] in tmp_volumes
        assert container["resources"]["requests"]["memory"]
        assert container["resources"]["limits"]["memory"]


def test_termination_grace_covers_the_task_timeout(helm_chart: Helm) -> None:
    def grace(values: dict[str, Any]) -> tuple[int, str]:
        by = containers(docs := helm_chart.template(merged(BASE, values)))
        shutdown = plain_env(by["runtime"])["KUBEAGENTS_RUNTIME_SHUTDOWN_GRACE_SECONDS"]
        return pod_spec(docs)["terminationGracePeriodSeconds"], shutdown

    assert grace({}) == (630, "600")  # the default task timeout + 30 s
    assert grace({"limits": {"taskTimeoutSeconds": 900}}) == (930, "900")
    assert grace({"runtime": {"shutdownGraceSeconds": 45}}) == (75, "45")
    assert grace({"terminationGracePeriodSeconds": 1000}) == (1000, "600")


# --- prompt, checksum, rollouts ------------------------------------------------------------------


def template_metadata(docs: Docs) -> dict[str, Any]:
    metadata: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["metadata"]
    return metadata


def test_the_prompt_is_mounted_from_the_releases_configmap(helm_chart: Helm) -> None:
    prompt = "You are the research agent.\nCite your sources."
    docs = helm_chart.template(merged(BASE, {"systemPrompt": prompt}))
    configmap = one(docs, "ConfigMap")
    assert configmap["data"] == {"system-prompt.txt": prompt}
    spec = pod_spec(docs)
    [volume] = [v for v in spec["volumes"] if v["name"] == "prompt"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    runtime = containers(docs)["runtime"]
    [mount] = [m for m in runtime["volumeMounts"] if m["name"] == "prompt"]
    assert mount["readOnly"] is True
    path = plain_env(runtime)["KUBEAGENTS_RUNTIME_SYSTEM_PROMPT_FILE"]
    assert path == f"{mount['mountPath']}/{volume['configMap']['items'][0]['path']}"
    annotations = template_metadata(docs)["annotations"]
    assert annotations["kubeagents.io/prompt-sha256"] == hashlib.sha256(prompt.encode()).hexdigest()


def test_checksum_changes_with_the_prompt_and_not_with_other_values(helm_chart: Helm) -> None:
    def render(values: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        docs = helm_chart.template(merged(BASE, values))
        return template_metadata(docs)["annotations"], one(docs, "Deployment")["spec"]["template"]

    first, first_template = render({"systemPrompt": "Answer briefly."})
    again, _ = render({"systemPrompt": "Answer briefly."})
    changed, _ = render({"systemPrompt": "Answer at length."})
    assert first == again  # deterministic
    for key in ("kubeagents.io/config-checksum", "kubeagents.io/prompt-sha256"):
        assert changed[key] != first[key]
    # a setting outside the ConfigMap is in the pod template itself: it rolls the pods through
    # the env, and leaves the checksum of the ConfigMap's data alone
    limited, limited_template = render(
        {"systemPrompt": "Answer briefly.", "limits": {"maxTurns": 3}}
    )
    assert limited == first
    assert limited_template != first_template


def test_a_chart_version_bump_alone_changes_nothing_in_the_pod_template(
    helm_chart: Helm, tmp_path: Path
) -> None:
    bumped = tmp_path / "agent"
    shutil.copytree(CHART, bumped)
    chart_yaml = bumped / "Chart.yaml"
    text = chart_yaml.read_text()
    assert "\nversion: 0.1.0\n" in text
    chart_yaml.write_text(text.replace("\nversion: 0.1.0\n", "\nversion: 0.2.0\n"))

    values = merged(BASE, {"systemPrompt": "Be exact."})
    before = helm_chart.template(values, files=(CHART / "ci" / "production-values.yaml",))
    after = helm_chart.template(
        values, files=(CHART / "ci" / "production-values.yaml",), chart=bumped
    )
    assert one(before, "Deployment")["metadata"]["labels"]["helm.sh/chart"] == "agent-0.1.0"
    assert one(after, "Deployment")["metadata"]["labels"]["helm.sh/chart"] == "agent-0.2.0"
    template = one(before, "Deployment")["spec"]["template"]
    assert template == one(after, "Deployment")["spec"]["template"]
    assert "kubeagents.io/config-checksum" in template["metadata"]["annotations"]
    assert one(before, "ConfigMap")["data"] == one(after, "ConfigMap")["data"]


def test_an_existing_prompt_configmap_is_mounted_instead(helm_chart: Helm) -> None:
    docs = helm_chart.template(None, files=(CHART / "ci" / "existing-secret-values.yaml",))
    assert "ConfigMap" not in kinds(docs)
    [volume] = [v for v in pod_spec(docs)["volumes"] if v["name"] == "prompt"]
    assert volume["configMap"] == {
        "name": "summarizer-prompt",
        "items": [{"key": "prompt.md", "path": "system-prompt.txt"}],
    }
    # no lookup: the checksum covers the reference and `promptChecksum`, and nothing else
    annotations = template_metadata(docs)["annotations"]
    assert "kubeagents.io/prompt-sha256" not in annotations
    checksum = "kubeagents.io/config-checksum"
    for change in ({"existingPromptConfigMapKey": "other.md"}, {"promptChecksum": "v2"}):
        other = helm_chart.template(change, files=(CHART / "ci" / "existing-secret-values.yaml",))
        assert template_metadata(other)["annotations"][checksum] != annotations[checksum]


# --- production pieces ---------------------------------------------------------------------------


def test_the_defaults_render_only_the_agent_itself(helm_chart: Helm) -> None:
    docs = helm_chart.template(BASE, "--api-versions", MONITORING_API)
    assert kinds(docs) == {"ServiceAccount", "ConfigMap", "Deployment"}
    assert one(docs, "Deployment")["spec"]["replicas"] == 1


def test_production_pieces_render_when_enabled(helm_chart: Helm) -> None:
    production = (CHART / "ci" / "production-values.yaml",)
    without_crds = kinds(helm_chart.template(None, files=production))
    with_crds = kinds(helm_chart.template(None, "--api-versions", MONITORING_API, files=production))
    pieces = {"PodDisruptionBudget", "NetworkPolicy", "ScaledObject", "Service"}
    assert pieces <= without_crds
    assert not {"PodMonitor", "PrometheusRule"} & without_crds  # no monitoring API, no objects
    assert pieces | {"PodMonitor", "PrometheusRule"} <= with_crds
    assert "HorizontalPodAutoscaler" not in with_crds
    deployment = one(helm_chart.template(None, files=production), "Deployment")
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it

    # monitoring on, but no monitoring API: nothing rendered; the API alone renders nothing either
    monitoring = {
        "monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    }
    assert not {"PodMonitor", "PrometheusRule"} & kinds(
        helm_chart.template(merged(BASE, monitoring))
    )
    hpa = merged(BASE, {"autoscaling": {"enabled": True, "type": "hpa"}})
    hpa_kinds = kinds(helm_chart.template(hpa))
    assert "HorizontalPodAutoscaler" in hpa_kinds
    assert "ScaledObject" not in hpa_kinds


def test_keda_scales_on_the_agents_own_stream(helm_chart: Helm) -> None:
    docs = helm_chart.template(None, files=(CHART / "ci" / "production-values.yaml",))
    scaled = one(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 10)
    pending, lag = scaled["spec"]["triggers"]
    for trigger in (pending, lag):
        assert trigger["type"] == "redis-streams"
        assert trigger["metadata"]["stream"] == f"kubeagents:{{{NAMESPACE}/{FULLNAME}}}:tasks"
        assert trigger["metadata"]["consumerGroup"] == "runtime"
        assert trigger["metadata"]["address"] == "kubeagents-redis:6379"
        assert trigger["authenticationRef"] == {"name": "kubeagents-redis-auth"}
    assert pending["metadata"]["pendingEntriesCount"] == "2"
    assert lag["metadata"]["lagCount"] == "10"

    cluster = one(
        helm_chart.template(None, files=(CHART / "ci" / "external-redis-values.yaml",)),
        "ScaledObject",
    )
    [trigger] = cluster["spec"]["triggers"]
    assert trigger["type"] == "redis-cluster-streams"
    assert trigger["metadata"]["addresses"].count(":6379") == 3

    from_url = one(
        helm_chart.template(None, files=(CHART / "ci" / "redis-url-values.yaml",)), "ScaledObject"
    )
    [trigger] = from_url["spec"]["triggers"]
    assert trigger["metadata"]["address"] == "redis.shared.svc.cluster.local:6380"
    assert trigger["metadata"]["databaseIndex"] == "2"


def test_network_policy_allows_dns_redis_mcp_ports_and_https_only(helm_chart: Helm) -> None:
    docs = helm_chart.template(None, files=(CHART / "ci" / "production-values.yaml",))
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert all("to" not in rule for rule in policy["egress"])
    # DNS, Redis (6379), the search MCP server (8443), HTTPS
    assert egress == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (8443, "TCP"), (443, "TCP")}
    [ingress] = policy["ingress"]
    assert sorted(p["port"] for p in ingress["ports"]) == [8081, 9090, 9091]

    from_url = helm_chart.template(None, files=(CHART / "ci" / "redis-url-values.yaml",))
    ports = {
        p["port"] for r in one(from_url, "NetworkPolicy")["spec"]["egress"] for p in r["ports"]
    }
    assert ports == {53, 443, 6380}


def test_pod_monitor_and_alerts_select_this_agent(helm_chart: Helm) -> None:
    docs = helm_chart.template(
        None, "--api-versions", MONITORING_API, files=(CHART / "ci" / "production-values.yaml",)
    )
    monitor = one(docs, "PodMonitor")["spec"]
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == ["metrics", "probe", "http"]
    for endpoint in monitor["podMetricsEndpoints"]:
        assert endpoint["relabelings"] == [{"targetLabel": "agent", "replacement": FULLNAME}]
    # the platform chart's dashboard filters on that label by default
    platform_values = yaml.safe_load((REPO / "charts" / "kubeagents" / "values.yaml").read_text())
    assert platform_values["dashboard"]["agentLabel"] == "agent"
    rules = one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    by_alert = {rule["alert"]: rule["expr"] for rule in rules}
    selector = f'namespace="{NAMESPACE}", agent="{FULLNAME}"'
    assert all(selector in expr for expr in by_alert.values())
    assert "kubeagents_proxy_budget{" in by_alert["KubeagentsBudgetHigh"]
    assert ">= 0.8" in by_alert["KubeagentsBudgetHigh"]
    assert 'state="remaining"}) <= 0' in by_alert["KubeagentsBudgetExhausted"]
    assert "kubeagents_probe_ready{" in by_alert["KubeagentsProbeFailing"]
    assert "kubeagents_runtime_dead_letters_total{" in by_alert["KubeagentsDeadLettersGrowing"]
    assert 'outcome="succeeded"}[30m]' in by_alert["KubeagentsNoTaskFinished"]


# --- the values -> environment contract (drift guard) -------------------------------------------

# container -> env prefix -> the settings class that reads it
SETTINGS: dict[str, dict[str, type[BaseSettings]]] = {
    "proxy": {"KUBEAGENTS_PROXY_": ProxySettings},
    "probe": {"KUBEAGENTS_PROBE_": ProbeSettings},
    # the runtime container also carries `kubeagents task`'s settings, for `kubectl exec`
    "runtime": {"KUBEAGENTS_RUNTIME_": RuntimeSettings, "KUBEAGENTS_TASK_": TaskSettings},
}
POD_NAME = "research-agent-7d9c5-x2b4q"
REDIS_URL_FROM_SECRET = "redis://:s3cret@kubeagents-redis:6379/0"
REDIS_CLUSTER_URL_FROM_SECRET = "redis://:s3cret@redis-0.redis:6379"


def resolve_env(entry: dict[str, Any], cluster: bool) -> str:
    """The value a container sees: `value`, or what the kubelet fills in for `valueFrom`."""
    if "value" in entry:
        value: str = entry["value"]
        return value
    source = entry["valueFrom"]
    if source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
        assert entry["name"].endswith("_POD_NAME")
        return POD_NAME
    if "secretKeyRef" in source:
        assert entry["name"].endswith("_REDIS_URL"), "only the Redis URL comes from a Secret env"
        return REDIS_CLUSTER_URL_FROM_SECRET if cluster else REDIS_URL_FROM_SECRET
    raise AssertionError(f"unexpected valueFrom {source}")


def build_settings(
    docs: Docs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, dict[str, BaseSettings]]:
    """Build each container's settings classes from exactly the environment the chart renders."""
    built: dict[str, dict[str, BaseSettings]] = {}
    configmap = [d for d in docs if d["kind"] == "ConfigMap"]
    prompt_file = tmp_path / "system-prompt.txt"
    prompt_file.write_text(configmap[0]["data"]["system-prompt.txt"] if configmap else "prompt")
    for name, container in containers(docs).items():
        cluster = plain_env(container).get(f"KUBEAGENTS_{name.upper()}_REDIS_CLUSTER") == "true"
        env = {key: resolve_env(entry, cluster) for key, entry in env_of(container).items()}
        prefixes = SETTINGS[name]
        # every kubeagents process reads its log level (kubeagents.logs.configured_level)
        configured_level(environ={"KUBEAGENTS_LOG_LEVEL": env.pop("KUBEAGENTS_LOG_LEVEL")})
        strays = [key for key in env if not key.startswith((*prefixes, "OTEL_"))]
        assert not strays, f"{name} gets variables no process of it reads: {strays}"
        built[name] = {}
        for prefix, settings_class in prefixes.items():
            own = {key: value for key, value in env.items() if key.startswith(prefix)}
            fields = settings_class.model_fields
            unknown = [key for key in own if key.removeprefix(prefix).lower() not in fields]
            assert not unknown, f"{name}: {unknown} are not fields of {settings_class.__name__}"
            missing = [
                field
                for field, info in fields.items()
                if info.is_required() and f"{prefix}{field.upper()}" not in own
            ]
            assert not missing, (
                f"{name}: required {settings_class.__name__} fields unset: {missing}"
            )
            if "KUBEAGENTS_RUNTIME_SYSTEM_PROMPT_FILE" in own:  # the mounted file, here
                own["KUBEAGENTS_RUNTIME_SYSTEM_PROMPT_FILE"] = str(prompt_file)
            with monkeypatch.context() as patch:
                for key in [k for k in os.environ if k.startswith("KUBEAGENTS_")]:
                    patch.delenv(key)
                for key, value in own.items():
                    patch.setenv(key, value)
                built[name][prefix] = settings_class()
    return built


@pytest.mark.parametrize("values_file", CI_VALUES + EXAMPLES, ids=lambda p: p.name)
def test_every_rendered_env_is_valid_configuration_of_the_real_processes(
    helm_chart: Helm, values_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = helm_chart.template(None, files=(values_file,))
    built = build_settings(docs, monkeypatch, tmp_path)
    proxy = built["proxy"]["KUBEAGENTS_PROXY_"]
    runtime = built["runtime"]["KUBEAGENTS_RUNTIME_"]
    probe = built["probe"]["KUBEAGENTS_PROBE_"]
    task = built["runtime"]["KUBEAGENTS_TASK_"]
    assert isinstance(proxy, ProxySettings)
    assert isinstance(runtime, RuntimeSettings)
    assert isinstance(probe, ProbeSettings)
    assert isinstance(task, TaskSettings)
    # the same agent, namespace and Redis everywhere
    assert len({s.agent for s in (proxy, runtime, probe, task)}) == 1
    assert {s.namespace for s in (proxy, runtime, probe, task)} == {NAMESPACE}
    assert proxy.redis_url == runtime.redis_url == probe.redis_url == task.redis_url
    assert proxy.redis_cluster == runtime.redis_cluster == probe.redis_cluster == task.redis_cluster
    assert runtime.pod_name == probe.pod_name == POD_NAME
    assert probe.runtime_status_url == f"http://127.0.0.1:{runtime.port}/status"
    assert probe.check_mcp == bool(runtime.mcp_servers)
    assert probe.model in proxy.allowed_models
    assert runtime.model in proxy.allowed_models
    assert proxy.api_key_file is not None
    assert proxy.api_key is None


# Distinctive values for every setting the chart passes through, and the field each must reach.
DISTINCT: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "allowedModels": ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-5"],
    "upstreamUrl": "https://llm-gateway.example:8443/anthropic",
    "limits": {
        "maxTokensPerCall": 12345, "maxTokensPolicy": "clamp", "maxConcurrentCallsPerPod": 7,
        "maxConcurrentCallsPerAgent": 13, "requestTimeoutSeconds": 321.5, "requestsPerMinute": 77,
        "maxConcurrentTasks": 3, "taskTimeoutSeconds": 456, "maxTurns": 9, "maxTaskTokens": 98765,
        "maxTokens": 2048,
    },
    "budgets": {"tokensPerDay": 4242424, "usdPerDay": 12.34, "failOpen": True,
                "acceptEvictionRisk": True, "durableReplicas": 3, "durableTimeoutMs": 250},
    "prices": {"claude-opus-4-5": {"input": 4.5, "output": 22, "cacheWrite5m": 5.6,
                                   "cacheWrite1h": 9, "cacheRead": 0.45,
                                   "longContext": {"thresholdTokens": 150000, "input": 9,
                                                   "output": 33.5},
                                   "fastMultiplier": 5.5}},
    "proxy": {
        "concurrencyWaitSeconds": 2.5, "connectTimeoutSeconds": 7, "streamIdleTimeoutSeconds": 33,
        "upstreamMaxRetries": 4, "maxBodyBytes": 1048576, "reservationGraceSeconds": 90,
        "allowedServerTools": {
            "web_search": {"maxTokensPerUse": 20000, "maxUses": 5},
            "code_execution": {"maxTokensPerUse": 7000, "usdPerUse": 0.05, "maxUses": 2},
            "mcp_servers": {"maxTokensPerUse": 3000, "maxUses": 9},
        },
        "allowedBetas": ["context-1m-2025-08-07", "example-beta-2026-01-01"],
        "inferenceGeoMultipliers": {"global": 1, "us": 1.25, "eu": 1.5},
    },
    "probe": {
        "intervalSeconds": 45, "jitterRatio": 0.25, "timeoutSeconds": 12, "failureThreshold": 5,
        "successThreshold": 2, "verdictTtlSeconds": 200, "startupGraceSeconds": 30,
        "pathIntervalSeconds": 20, "shared": False, "checkKey": False, "checkBudget": False,
        "checkMcpServers": True, "history": 99,
        "validator": {"model": "claude-haiku-4-5", "systemPrompt": "Be a checker.",
                      "prompt": "Say OK.", "maxTokens": 5},
        "expectation": {"kind": "judge", "value": "The reply says OK.",
                        "judgeModel": "claude-opus-4-5", "judgeMaxTokens": 3},
    },
    "runtime": {
        "toolTimeoutSeconds": 41, "maxAttempts": 6, "backoffBaseSeconds": 1.5,
        "backoffMaxSeconds": 75, "visibilityTimeoutSeconds": 88, "shutdownGraceSeconds": 66,
        "readinessPollSeconds": 0.5, "taskApi": False,
    },
    "mcpServers": {
        "search": {"transport": "http", "url": "https://search.example/mcp",
                   "headers": {"X-Team": "research"},
                   "headerSecrets": {"Authorization": {"name": "search-token", "key": "auth"}},
                   "tools": ["search"], "timeoutSeconds": 4},
        "files": {"transport": "stdio", "command": ["files-mcp", "--stdio"],
                  "env": {"ROOT": "/data"}},
    },
    "redis": {"url": "redis://redis.example:6390/3", "cluster": False},
}  # fmt: skip

# values path -> (container, field) it must reach; the expected value is the DISTINCT one
ROUND_TRIP: dict[str, list[tuple[str, str]]] = {
    "model": [("runtime", "model")],
    "allowedModels": [("proxy", "allowed_models")],
    "upstreamUrl": [("proxy", "upstream_url")],
    "limits.maxTokensPerCall": [("proxy", "max_tokens_per_call")],
    "limits.maxTokensPolicy": [("proxy", "max_tokens_policy")],
    "limits.maxConcurrentCallsPerPod": [("proxy", "max_concurrent_calls")],
    "limits.maxConcurrentCallsPerAgent": [("proxy", "max_concurrent_calls_per_agent")],
    "limits.requestTimeoutSeconds": [("proxy", "request_timeout_seconds")],
    "limits.requestsPerMinute": [("proxy", "requests_per_minute")],
    "limits.maxConcurrentTasks": [("runtime", "max_concurrent_tasks")],
    "limits.taskTimeoutSeconds": [("runtime", "task_timeout_seconds")],
    "limits.maxTurns": [("runtime", "max_turns")],
    "limits.maxTaskTokens": [("runtime", "max_task_tokens")],
    "limits.maxTokens": [("runtime", "max_tokens")],
    "budgets.tokensPerDay": [("proxy", "budget_tokens_per_day")],
    "budgets.usdPerDay": [("proxy", "budget_usd_per_day")],
    "budgets.failOpen": [("proxy", "budget_fail_open")],
    "budgets.acceptEvictionRisk": [("proxy", "accept_eviction_risk")],
    "budgets.durableReplicas": [("proxy", "durable_replicas")],
    "budgets.durableTimeoutMs": [("proxy", "durable_timeout_ms")],
    "prices": [("proxy", "prices")],
    "proxy.concurrencyWaitSeconds": [("proxy", "concurrency_wait_seconds")],
    "proxy.connectTimeoutSeconds": [("proxy", "connect_timeout_seconds")],
    "proxy.streamIdleTimeoutSeconds": [("proxy", "stream_idle_timeout_seconds")],
    "proxy.upstreamMaxRetries": [("proxy", "upstream_max_retries")],
    "proxy.maxBodyBytes": [("proxy", "max_body_bytes")],
    "proxy.reservationGraceSeconds": [("proxy", "reservation_grace_seconds")],
    "proxy.allowedServerTools": [("proxy", "allowed_server_tools")],
    "proxy.allowedBetas": [("proxy", "allowed_betas")],
    "proxy.inferenceGeoMultipliers": [("proxy", "inference_geo_multipliers")],
    "probe.intervalSeconds": [("probe", "interval_seconds")],
    "probe.jitterRatio": [("probe", "jitter_ratio")],
    "probe.timeoutSeconds": [("probe", "timeout_seconds")],
    "probe.failureThreshold": [("probe", "failure_threshold")],
    "probe.successThreshold": [("probe", "success_threshold")],
    "probe.verdictTtlSeconds": [("probe", "verdict_ttl_seconds")],
    "probe.startupGraceSeconds": [("probe", "startup_grace_seconds")],
    "probe.pathIntervalSeconds": [("probe", "path_interval_seconds")],
    "probe.shared": [("probe", "shared")],
    "probe.checkKey": [("probe", "check_key")],
    "probe.checkBudget": [("probe", "check_budget")],
    "probe.history": [("probe", "history")],
    "probe.validator.model": [("probe", "model")],
    "probe.validator.systemPrompt": [("probe", "system_prompt")],
    "probe.validator.prompt": [("probe", "prompt")],
    "probe.validator.maxTokens": [("probe", "max_tokens")],
    "probe.expectation.kind": [("probe", "expect")],
    "probe.expectation.value": [("probe", "expect_value")],
    "probe.expectation.judgeModel": [("probe", "judge_model")],
    "probe.expectation.judgeMaxTokens": [("probe", "judge_max_tokens")],
    "runtime.toolTimeoutSeconds": [("runtime", "tool_timeout_seconds")],
    "runtime.maxAttempts": [("runtime", "max_attempts")],
    "runtime.backoffBaseSeconds": [("runtime", "backoff_base_seconds")],
    "runtime.backoffMaxSeconds": [("runtime", "backoff_max_seconds")],
    "runtime.visibilityTimeoutSeconds": [("runtime", "visibility_timeout_seconds")],
    "runtime.shutdownGraceSeconds": [("runtime", "shutdown_grace_seconds")],
    "runtime.readinessPollSeconds": [("runtime", "readiness_poll_seconds")],
    "runtime.taskApi": [("runtime", "task_api")],
    "redis.url": [("proxy", "redis_url"), ("probe", "redis_url"), ("runtime", "redis_url")],
    "redis.cluster": [("proxy", "redis_cluster"), ("probe", "redis_cluster"),
                      ("runtime", "redis_cluster")],
}  # fmt: skip
# values under the pass-through groups that are not one field, and where they are checked
NOT_ONE_FIELD = {
    "probe.checkMcpServers": "test_mcp_servers_become_the_json_list_of_the_runtime",
}
CLASS_OF: dict[str, type[BaseSettings]] = {
    "proxy": ProxySettings,
    "probe": ProbeSettings,
    "runtime": RuntimeSettings,
}


def at(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


# maps whose keys are data (models, servers, tool families, geos), each one value
MAP_VALUES = ("prices", "mcpServers", "allowedServerTools", "inferenceGeoMultipliers")


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in MAP_VALUES:
            yield from leaves(value, f"{path}.")
        else:
            yield path


def comparable(value: Any) -> Any:
    """A settings field's value in the shape of a values.yaml value."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list):
        return [comparable(item) for item in value]
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    dumped = value.model_dump(by_alias=True, exclude_none=True)  # a pydantic model
    return comparable(dumped)


def test_every_value_reaches_the_field_of_the_process_that_reads_it(
    helm_chart: Helm, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = helm_chart.template(merged(BASE, DISTINCT))
    built = build_settings(docs, monkeypatch, tmp_path)
    for path, targets in ROUND_TRIP.items():
        expected = at(DISTINCT, path)
        for container, field in targets:
            settings = next(iter(built[container].values()))
            got = comparable(getattr(settings, field))
            assert got == expected, f"{path} -> {container}.{field}: {got!r} != {expected!r}"


def test_every_setting_value_of_the_chart_has_a_round_trip_check() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    groups = ("limits", "budgets", "proxy", "probe", "runtime")
    passed_through = {p for p in leaves(values) if p.split(".")[0] in groups}
    passed_through |= {"model", "allowedModels", "upstreamUrl", "prices", "redis.url"}
    unchecked = passed_through - set(ROUND_TRIP) - set(NOT_ONE_FIELD)
    assert not unchecked, f"values without a round-trip check: {sorted(unchecked)}"
    assert set(ROUND_TRIP) <= set(leaves(DISTINCT))


def test_chart_defaults_are_the_processes_defaults(helm_chart: Helm) -> None:
    """A value the chart passes through keeps the process's default, so the README's defaults
    are the processes' (a changed default in a settings class fails here)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    differing = []
    for path, targets in ROUND_TRIP.items():
        default = at(values, path)
        if default in (None, "") or path in ("model", "allowedModels", "redis.cluster"):
            continue  # null or empty: the process's own default applies (the variable is left
            # out); the models have no process default
        for container, field in targets:
            info = CLASS_OF[container].model_fields[field]
            if info.is_required():
                continue
            process_default = comparable(info.get_default(call_default_factory=True))
            if process_default != default:
                differing.append(f"{path}={default!r} vs {container}.{field}={process_default!r}")
    assert not differing, differing


def test_mcp_servers_become_the_json_list_of_the_runtime(helm_chart: Helm) -> None:
    """The runtime gets the servers; the probe only checks them through the runtime's /status."""
    docs = helm_chart.template(merged(BASE, {"mcpServers": DISTINCT["mcpServers"]}))
    by_name = containers(docs)
    runtime_list = json.loads(plain_env(by_name["runtime"])["KUBEAGENTS_RUNTIME_MCP_SERVERS"])
    probe_env = plain_env(by_name["probe"])
    assert "KUBEAGENTS_PROBE_MCP_SERVERS" not in probe_env
    assert probe_env["KUBEAGENTS_PROBE_CHECK_MCP"] == "true"
    assert probe_env["KUBEAGENTS_PROBE_RUNTIME_STATUS_URL"] == "http://127.0.0.1:8081/status"
    assert runtime_list == [
        {"name": "files", "transport": "stdio", "command": ["files-mcp", "--stdio"],
         "env": {"ROOT": "/data"}},
        {"name": "search", "transport": "http", "url": "https://search.example/mcp",
         "headers": {"X-Team": "research"},
         "headerFiles": {"Authorization": "/etc/kubeagents/mcp/search/authorization"},
         "tools": ["search"], "timeoutSeconds": 4},
    ]  # fmt: skip
    # the header's Secret is mounted where headerFiles points, not into the proxy
    [volume] = [v for v in pod_spec(docs)["volumes"] if v["name"] == "mcp-search"]
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "search-token", "items": [{"key": "auth", "path": "authorization"}]}}
    ]
    mounts = {m["name"]: m["mountPath"] for m in by_name["runtime"]["volumeMounts"]}
    assert mounts["mcp-search"] == "/etc/kubeagents/mcp/search"
    assert "mcp-search" not in {m["name"] for m in by_name["proxy"]["volumeMounts"]}

    unchecked = merged(BASE, {"mcpServers": DISTINCT["mcpServers"]},
                       {"probe": {"checkMcpServers": False}})  # fmt: skip
    by_name = containers(helm_chart.template(unchecked))
    assert plain_env(by_name["probe"])["KUBEAGENTS_PROBE_CHECK_MCP"] == "false"
    assert "mcp-search" not in {m["name"] for m in by_name["probe"]["volumeMounts"]}
    assert json.loads(plain_env(by_name["runtime"])["KUBEAGENTS_RUNTIME_MCP_SERVERS"])

    # without MCP servers there is nothing to check
    by_name = containers(helm_chart.template(BASE))
    assert plain_env(by_name["probe"])["KUBEAGENTS_PROBE_CHECK_MCP"] == "false"


def test_an_mcp_server_turned_off_is_left_out_everywhere(helm_chart: Helm) -> None:
    """`enabled: false` (a values file dropping a server another one defined) removes the server
    from the runtime's and the probe's lists and drops its Secret volume."""
    servers = copy.deepcopy(DISTINCT["mcpServers"])
    servers["search"]["enabled"] = False
    docs = helm_chart.template(merged(BASE, {"mcpServers": servers}))
    by_name = containers(docs)
    runtime_list = json.loads(plain_env(by_name["runtime"])["KUBEAGENTS_RUNTIME_MCP_SERVERS"])
    assert [server["name"] for server in runtime_list] == ["files"]
    assert all(v["name"] != "mcp-search" for v in pod_spec(docs)["volumes"])
    assert "enabled" not in json.dumps(runtime_list)


def test_null_limits_leave_the_variable_out_so_the_process_default_applies(
    helm_chart: Helm,
) -> None:
    by_name = containers(helm_chart.template(BASE))
    proxy = set(env_of(by_name["proxy"]))
    for name in ("MAX_CONCURRENT_CALLS_PER_AGENT", "REQUESTS_PER_MINUTE", "BUDGET_TOKENS_PER_DAY",
                 "BUDGET_USD_PER_DAY", "ALLOWED_BETAS", "INFERENCE_GEO_MULTIPLIERS"):  # fmt: skip
        assert f"KUBEAGENTS_PROXY_{name}" not in proxy
    assert "KUBEAGENTS_PROBE_VERDICT_TTL_SECONDS" not in env_of(by_name["probe"])
    assert "KUBEAGENTS_PROBE_JUDGE_MODEL" not in env_of(by_name["probe"])


def test_server_tools_betas_geos_and_durability_default_to_the_proxys_safe_settings(
    helm_chart: Helm, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """By default no server tool is allowed, the proxy's own beta list and geo multipliers
    apply, an evicting Redis is refused and reservations do not wait for replicas."""
    docs = helm_chart.template(BASE)
    env = plain_env(containers(docs)["proxy"])
    assert env["KUBEAGENTS_PROXY_ALLOWED_SERVER_TOOLS"] == "{}"
    assert env["KUBEAGENTS_PROXY_ACCEPT_EVICTION_RISK"] == "false"
    assert env["KUBEAGENTS_PROXY_DURABLE_REPLICAS"] == "0"
    assert env["KUBEAGENTS_PROXY_DURABLE_TIMEOUT_MS"] == "100"
    proxy = build_settings(docs, monkeypatch, tmp_path)["proxy"]["KUBEAGENTS_PROXY_"]
    assert isinstance(proxy, ProxySettings)
    assert proxy.allowed_server_tools == {}
    assert proxy.allowed_betas == list(DEFAULT_ALLOWED_BETAS)
    assert proxy.inference_geo_multipliers == DEFAULT_INFERENCE_GEO_MULTIPLIERS
    assert proxy.accept_eviction_risk is False
    assert (proxy.durable_replicas, proxy.durable_timeout_ms) == (0, 100)


def test_the_documented_server_tool_example_becomes_the_proxys_json(
    helm_chart: Helm, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The values.yaml example, as JSON the proxy reads (camelCase keys, integers stay
    integers), and `allowedBetas: []` (no betas at all) is not the same as null."""
    values = {"proxy": {"allowedServerTools": {"web_search": {"maxTokensPerUse": 20000,
                                                              "maxUses": 5}},
                        "allowedBetas": []}}  # fmt: skip
    docs = helm_chart.template(merged(BASE, values))
    env = plain_env(containers(docs)["proxy"])
    assert json.loads(env["KUBEAGENTS_PROXY_ALLOWED_SERVER_TOOLS"]) == {
        "web_search": {"maxTokensPerUse": 20000, "maxUses": 5}
    }
    assert '"maxTokensPerUse":20000' in env["KUBEAGENTS_PROXY_ALLOWED_SERVER_TOOLS"]
    assert env["KUBEAGENTS_PROXY_ALLOWED_BETAS"] == "[]"
    proxy = build_settings(docs, monkeypatch, tmp_path)["proxy"]["KUBEAGENTS_PROXY_"]
    assert isinstance(proxy, ProxySettings)
    [(family, allowance)] = proxy.allowed_server_tools.items()
    assert (family, allowance.max_tokens_per_use, allowance.max_uses) == ("web_search", 20000, 5)
    assert allowance.usd_per_use is None  # the proxy's built-in fee applies
    assert proxy.allowed_betas == []


def test_the_redis_url_comes_from_the_platform_secret_by_default(helm_chart: Helm) -> None:
    by_name = containers(helm_chart.template(BASE))
    for name, prefixes in SETTINGS.items():
        env = env_of(by_name[name])
        for prefix in prefixes:
            assert env[f"{prefix}REDIS_URL"]["valueFrom"] == {
                "secretKeyRef": {"name": "kubeagents-redis-url", "key": "redis-url"}
            }
    with_url = containers(helm_chart.template(merged(BASE, {"redis": {"url": "redis://r:1/0"}})))
    assert plain_env(with_url["proxy"])["KUBEAGENTS_PROXY_REDIS_URL"] == "redis://r:1/0"


def test_agent_name_namespace_and_otel_reach_every_process(helm_chart: Helm) -> None:
    values = merged(BASE, {"agentName": "research", "otel": {"OTEL_SERVICE_NAME": "research"}})
    for name, container in containers(helm_chart.template(values)).items():
        env = plain_env(container)
        for prefix in SETTINGS[name]:
            assert env[f"{prefix}AGENT"] == "research"
            assert env[f"{prefix}NAMESPACE"] == NAMESPACE
        assert env["OTEL_SERVICE_NAME"] == "research"
    default = containers(helm_chart.template(BASE))
    assert plain_env(default["runtime"])["KUBEAGENTS_RUNTIME_AGENT"] == FULLNAME


# --- invalid values ----------------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("typo at the top level", {"modle": "claude-sonnet-5-5"},
     ["at ''", "additional properties 'modle' not allowed"]),
    ("typo inside limits", {"limits": {"maxTokenPerCall": 1000}},
     ["at '/limits'", "'maxTokenPerCall' not allowed"]),
    ("typo inside probe.validator", {"probe": {"validator": {"promt": "x"}}},
     ["at '/probe/validator'", "'promt' not allowed"]),
    ("wrong type", {"limits": {"maxConcurrentTasks": "four"}},
     ["at '/limits/maxConcurrentTasks'", "got string, want integer"]),
    ("negative token budget", {"budgets": {"tokensPerDay": -5}},
     ["at '/budgets/tokensPerDay'", "minimum"]),
    ("negative dollar budget", {"budgets": {"usdPerDay": -1}}, ["/budgets/usdPerDay"]),
    ("unknown expectation kind", {"probe": {"expectation": {"kind": "fuzzy"}}},
     ["at '/probe/expectation/kind'", "'exact', 'contains', 'regex', 'jsonSchema', 'judge'"]),
    ("bad maxTokensPolicy", {"limits": {"maxTokensPolicy": "truncate"}},
     ["at '/limits/maxTokensPolicy'", "'reject', 'clamp'"]),
    ("replicaCount 0", {"replicaCount": 0}, ["at '/replicaCount'", "minimum: got 0, want 1"]),
    ("replicaCount negative", {"replicaCount": -2}, ["at '/replicaCount'", "minimum"]),
    ("http MCP server without url", {"mcpServers": {"search": {"transport": "http"}}},
     ["at '/mcpServers/search'", "missing property 'url'"]),
    ("stdio MCP server without command", {"mcpServers": {"files": {"transport": "stdio"}}},
     ["at '/mcpServers/files'", "missing property 'command'"]),
    ("unknown MCP transport", {"mcpServers": {"search": {"transport": "ftp", "url": "ftp://x"}}},
     ["at '/mcpServers/search/transport'", "'http', 'stdio'"]),
    ("MCP server name", {"mcpServers": {"Search_1": {"transport": "http", "url": "http://s"}}},
     ["'Search_1'", "does not match pattern"]),
    ("empty model", {"model": ""}, ["at '/model'", "minLength"]),
    ("missing model", {"model": None}, ["missing property 'model'"]),
    ("price without output", {"prices": {"claude-x": {"input": 1}}},
     ["at '/prices/claude-x'", "missing property 'output'"]),
    ("typo in a price", {"prices": {"claude-x": {"input": 1, "output": 2, "fastMultplier": 6}}},
     ["at '/prices/claude-x'", "'fastMultplier' not allowed"]),
    ("fast multiplier below 1", {"prices": {"claude-x": {"input": 1, "output": 2,
                                                         "fastMultiplier": 0.5}}},
     ["at '/prices/claude-x/fastMultiplier'", "minimum"]),
    ("long-context tier without a threshold",
     {"prices": {"claude-x": {"input": 1, "output": 2, "longContext": {"input": 2, "output": 4}}}},
     ["at '/prices/claude-x/longContext'", "missing property 'thresholdTokens'"]),
    ("long-context threshold as text",
     {"prices": {"claude-x": {"input": 1, "output": 2,
                              "longContext": {"thresholdTokens": "200k", "input": 2,
                                              "output": 4}}}},
     ["at '/prices/claude-x/longContext/thresholdTokens'", "got string, want integer"]),
    ("typo in a long-context tier",
     {"prices": {"claude-x": {"input": 1, "output": 2,
                              "longContext": {"thresholdTokens": 9, "input": 2, "output": 4,
                                              "cacheRead": 1}}}},
     ["at '/prices/claude-x/longContext'", "'cacheRead' not allowed"]),
    ("typo in a server tool", {"proxy": {"allowedServerTools": {"web_search": {
        "maxTokensPerUse": 20000, "maxUse": 5}}}},
     ["at '/proxy/allowedServerTools/web_search'", "'maxUse' not allowed"]),
    ("server tool without its token bound", {"proxy": {"allowedServerTools": {"web_fetch": {
        "maxUses": 3}}}},
     ["at '/proxy/allowedServerTools/web_fetch'", "missing property 'maxTokensPerUse'"]),
    ("server tool token bound 0", {"proxy": {"allowedServerTools": {"web_search": {
        "maxTokensPerUse": 0}}}},
     ["at '/proxy/allowedServerTools/web_search/maxTokensPerUse'", "minimum: got 0, want 1"]),
    ("server tool uses as text", {"proxy": {"allowedServerTools": {"web_search": {
        "maxTokensPerUse": 100, "maxUses": "five"}}}},
     ["at '/proxy/allowedServerTools/web_search/maxUses'", "got string, want integer"]),
    ("negative server tool fee", {"proxy": {"allowedServerTools": {"web_search": {
        "maxTokensPerUse": 100, "usdPerUse": -0.01}}}},
     ["at '/proxy/allowedServerTools/web_search/usdPerUse'", "minimum"]),
    ("dated server tool type instead of its family", {"proxy": {"allowedServerTools": {
        "web_search_20250305": {"maxTokensPerUse": 100}}}},
     ["invalid propertyName 'web_search_20250305'", "'not' failed"]),
    ("MCP connector without maxUses", {"proxy": {"allowedServerTools": {"mcp_servers": {
        "maxTokensPerUse": 100}}}},
     ["at '/proxy/allowedServerTools/mcp_servers'", "missing property 'maxUses'"]),
    ("server tools as a list", {"proxy": {"allowedServerTools": ["web_search"]}},
     ["at '/proxy/allowedServerTools'", "got array, want object"]),
    ("betas as one string", {"proxy": {"allowedBetas": "context-1m-2025-08-07"}},
     ["at '/proxy/allowedBetas'", "got string, want null or array"]),
    ("two betas in one item", {"proxy": {"allowedBetas": ["a-2025-01-01,b-2025-01-01"]}},
     ["at '/proxy/allowedBetas/0'", "does not match pattern"]),
    ("geo multiplier below 1", {"proxy": {"inferenceGeoMultipliers": {"us": 0.9}}},
     ["at '/proxy/inferenceGeoMultipliers/us'", "minimum"]),
    ("geo multiplier as text", {"proxy": {"inferenceGeoMultipliers": {"us": "high"}}},
     ["at '/proxy/inferenceGeoMultipliers/us'", "got string, want number"]),
    ("typo inside proxy", {"proxy": {"allowedServerTool": {}}},
     ["at '/proxy'", "'allowedServerTool' not allowed"]),
    ("eviction risk as text", {"budgets": {"acceptEvictionRisk": "yes"}},
     ["at '/budgets/acceptEvictionRisk'", "got string, want boolean"]),
    ("typo inside budgets", {"budgets": {"durableReplica": 1}},
     ["at '/budgets'", "'durableReplica' not allowed"]),
    ("too many durable replicas", {"budgets": {"durableReplicas": 17}},
     ["at '/budgets/durableReplicas'", "maximum: got 17, want 16"]),
    ("negative durable replicas", {"budgets": {"durableReplicas": -1}},
     ["at '/budgets/durableReplicas'", "minimum"]),
    ("fractional durable replicas", {"budgets": {"durableReplicas": 1.5}},
     ["at '/budgets/durableReplicas'", "want integer"]),
    ("durable timeout 0", {"budgets": {"durableTimeoutMs": 0}},
     ["at '/budgets/durableTimeoutMs'", "minimum: got 0, want 1"]),
    ("durable timeout too long", {"budgets": {"durableTimeoutMs": 20000}},
     ["at '/budgets/durableTimeoutMs'", "maximum"]),
    ("not an OTEL_ variable", {"otel": {"KUBEAGENTS_PROXY_HOST": "0.0.0.0"}},
     ["'KUBEAGENTS_PROXY_HOST'", "does not match pattern"]),
    ("jitter too large", {"probe": {"jitterRatio": 0.9}},
     ["at '/probe/jitterRatio'", "maximum"]),
    ("unknown autoscaler", {"autoscaling": {"type": "vpa"}},
     ["at '/autoscaling/type'", "'keda', 'hpa'"]),
    ("boolean as text", {"sidecars": {"native": "yes"}},
     ["at '/sidecars/native'", "got string, want boolean"]),
    # consistency checks of the templates (messages name the values)
    ("no API key", {"apiKey": {"existingSecret": ""}}, ["apiKey: set apiKey.existingSecret"]),
    ("two API keys", {"apiKey": {"value": "sk-ant-x"}}, ["apiKey: set apiKey.existingSecret or"]),
    ("probe model not allowed", {"probe": {"validator": {"model": "claude-haiku-4-5"}}},
     ["probe.validator.model", "not in allowedModels"]),
    ("model not allowed", {"allowedModels": ["claude-haiku-4-5"]},
     ["allowedModels: must contain model"]),
    ("verdict TTL below the interval", {"probe": {"verdictTtlSeconds": 30}},
     ["probe.verdictTtlSeconds"]),
    ("prompt twice", {"existingPromptConfigMap": "prompt"},
     ["systemPrompt: set systemPrompt or existingPromptConfigMap"]),
    ("KEDA without an address for a URL from a Secret",
     {"autoscaling": {"enabled": True, "type": "keda"}}, ["autoscaling.keda.address"]),
    ("db on a Redis Cluster", {"redis": {"url": "redis://r:6379/3", "cluster": True}},
     ["redis.url: a Redis Cluster has no databases"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "values", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_values_are_rejected_naming_the_key(
    helm_chart: Helm, case: str, values: dict[str, Any], expected: list[str]
) -> None:
    message = helm_chart.rejects(merged(BASE, values))
    for text in expected:
        assert text in message, f"{case}: {text!r} not in {message!r}"


def test_every_key_of_the_schema_is_a_documented_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], tree: Any, path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '/'} allows any key"
            for key, child in node["properties"].items():
                if key == "global" or path.startswith(".resources."):
                    continue  # resources: any of Kubernetes' resource names may be given
                assert isinstance(tree, dict), f"{path} is not a map in values.yaml"
                assert key in tree, f"{path}.{key} not in values.yaml"
                walk(child, tree[key], f"{path}.{key}")

    walk(schema, values, "")
