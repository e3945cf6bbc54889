"""The platform chart (charts/kubeagents): Redis for the agents and the Grafana dashboard.

Lint (helm --strict, ct), the schema's refusals, the rendered objects, the rendered Redis
container run on a real valkey-server (the default) and, switched to Redis, on a real
redis-server, server-side dry runs of every ci case, and a real
install/upgrade/uninstall on the control plane. The README's values table is checked against
values.yaml, so it cannot go stale.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from harness.binaries import REPO, tool, tools_dir
from harness.controlplane import ControlPlane
from harness.processes import HarnessError, ManagedProcess, free_port, wait_for
from kubeagents.redis_link import RedisLink
from kubeagents_proxy.redis_policy import EvictionPolicyCheck

CHART = REPO / "charts" / "kubeagents"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "platform"
FULLNAME = "platform-kubeagents"  # release name + chart name (the release does not contain it)
REDIS = f"{FULLNAME}-redis"

Obj = dict[str, Any]


# --- helpers ---------------------------------------------------------------------------------


def run_helm(
    helm: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, env=env, timeout=240, check=False
    )


def values_args(values: Obj | None, values_files: Sequence[Path], tmp: Path | None) -> list[str]:
    args = [arg for path in values_files for arg in ("-f", str(path))]
    if values is not None:
        assert tmp is not None
        path = tmp / f"values-{secrets.token_hex(4)}.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["-f", str(path)]
    return args


def render(
    helm: Path,
    values: Obj | None = None,
    *values_files: Path,
    tmp: Path | None = None,
    namespace: str = "agents",
) -> list[Obj]:
    """`helm template` of the chart, parsed: one dict per object."""
    args = values_args(values, values_files, tmp)
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", namespace, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def kinds(objects: list[Obj]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def without_operator(objects: list[Obj]) -> list[Obj]:
    """The objects but the operator's and the CRDs (tests/charts/test_platform_operator.py)."""
    return [
        o for o in objects
        if o["kind"] != "CustomResourceDefinition"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") != "operator"
    ]  # fmt: skip


def secret_value(secret: Obj, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def redis_container(objects: list[Obj]) -> Obj:
    statefulset = find(objects, "StatefulSet", REDIS)
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


# The values that switch the chart's server from Valkey (the default) to Redis, as the README says.
REDIS_IMAGE_VALUES: Obj = {"repository": "library/redis", "tag": "7.2-alpine", "flavor": "redis"}
TO_REDIS: Obj = {"redis": {"statefulset": {"image": REDIS_IMAGE_VALUES}}}
FLAVOR_IMAGES: dict[str, Obj] = {"valkey": {}, "redis": REDIS_IMAGE_VALUES}


def option(args: list[str], name: str) -> str:
    """The value after `--name` in a redis-server argument list."""
    assert args.count(name) == 1, f"{name} given {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


# --- lint ------------------------------------------------------------------------------------


def test_the_chart_has_the_ci_cases_the_issue_asks_for() -> None:
    names = {path.name.removesuffix("-values.yaml") for path in CI_FILES}
    assert {"default", "external-redis", "existing-secret", "dashboard-off"} <= names


@pytest.mark.parametrize("values_file", CI_FILES, ids=lambda path: path.name)
def test_helm_lint_strict_passes(helm: Path, values_file: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_ct_lint_passes_for_every_ci_case() -> None:
    """chart-testing: Chart.yaml schema, yamllint, version, and helm lint of every ci case."""
    path = os.pathsep.join([str(tools_dir()), str(REPO / ".venv" / "bin"), os.environ["PATH"]])
    command = [str(tool("ct")), "lint", "--config", str(REPO / "ct.yaml")]
    result = subprocess.run(
        [*command, "--charts", "charts/kubeagents"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PATH": path},
        timeout=300, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All charts linted successfully" in output
    for values_file in CI_FILES:
        assert f"ci/{values_file.name}" in output  # ct linted this case


# --- the schema refuses bad values, naming the key -------------------------------------------

INVALID_VALUES: list[tuple[str, Obj, str]] = [
    ("unknown mode", {"redis": {"mode": "sentinel"}}, "at '/redis/mode': value must be one of"),
    (
        "a typo",
        {"redis": {"statefulset": {"replica": 2}}},
        "at '/redis/statefulset': additional properties 'replica' not allowed",
    ),
    (
        "a typo at the top",
        {"dashbord": {"enabled": False}},
        "additional properties 'dashbord' not allowed",
    ),
    (
        "an unknown topology",
        {"redis": {"mode": "external", "external": {"topology": "ring", "url": "redis://h"}}},
        "at '/redis/external/topology': value must be one of 'single', 'sentinel', 'cluster'",
    ),
    (
        "external without a URL or Secret",
        {"redis": {"mode": "external"}},
        "at '/redis/external/url': minLength",
    ),
    (
        "a URL that is not redis://",
        {"redis": {"mode": "external", "external": {"url": "http://redis:6379"}}},
        "at '/redis/external/url': 'http://redis:6379' does not match pattern",
    ),
    (
        "a database on a Redis Cluster",
        {"redis": {"mode": "external", "external": {"topology": "cluster", "url": "redis://h/1"}}},
        "at '/redis/external/url': 'redis://h/1' does not match pattern",
    ),
    (
        "AOF fsync off",
        {"redis": {"statefulset": {"appendfsync": "no"}}},
        "at '/redis/statefulset/appendfsync': value must be one of 'everysec', 'always'",
    ),
    (
        "turning AOF off through config",
        {"redis": {"statefulset": {"config": {"appendonly": "no"}}}},
        "at '/redis/statefulset/config/appendonly'",
    ),
    (
        "eviction through config",
        {"redis": {"statefulset": {"config": {"maxmemory-policy": "allkeys-lru"}}}},
        "at '/redis/statefulset/config/maxmemory-policy'",
    ),
    (
        "an unpinned image",
        {"redis": {"statefulset": {"image": {"tag": "latest"}}}},
        "at '/redis/statefulset/image/tag'",
    ),
    (
        "a server the chart does not know",
        {"redis": {"statefulset": {"image": {"flavor": "keydb"}}}},
        "at '/redis/statefulset/image/flavor'",
    ),
    (
        "zero replicas",
        {"redis": {"statefulset": {"replicas": 0}}},
        "at '/redis/statefulset/replicas': minimum",
    ),
    (
        "a size that is no quantity",
        {"redis": {"statefulset": {"persistence": {"size": "8GB"}}}},
        "at '/redis/statefulset/persistence/size'",
    ),
    (
        "a label value that is a number",
        {"dashboard": {"labelValue": 1}},
        "at '/dashboard/labelValue': got number, want string",
    ),
    (
        "a retention policy Kubernetes does not know",
        {"redis": {"statefulset": {"persistence": {"retentionPolicy": {"whenDeleted": "Keep"}}}}},
        "at '/redis/statefulset/persistence/retentionPolicy/whenDeleted'",
    ),
    (
        "a typo in the security context",
        {"redis": {"statefulset": {"securityContext": {"readOnlyRootFS": True}}}},
        "at '/redis/statefulset/securityContext': additional properties 'readOnlyRootFS'",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"),
    [(values, message) for _, values, message in INVALID_VALUES],
    ids=[case for case, _, _ in INVALID_VALUES],
)
def test_the_schema_rejects_invalid_values_naming_the_key(
    helm: Path, tmp_path: Path, values: Obj, message: str
) -> None:
    args = values_args(values, (), tmp_path)
    result = run_helm(helm, "template", RELEASE, str(CHART), *args)
    assert result.returncode != 0, result.stdout
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


# --- rendered objects ------------------------------------------------------------------------


def test_redis_runs_with_aof_and_no_eviction(helm: Path, tmp_path: Path) -> None:
    args = redis_container(render(helm))["args"]
    assert option(args, "--appendonly") == "yes"
    assert option(args, "--appendfsync") == "everysec"
    assert option(args, "--dir") == "/data"
    assert option(args, "--maxmemory-policy") == "noeviction"

    always = redis_container(
        render(helm, {"redis": {"statefulset": {"appendfsync": "always"}}}, tmp=tmp_path)
    )
    assert option(always["args"], "--appendfsync") == "always"


def probe_script(container: Obj, probe: str) -> str:
    return str(container[probe]["exec"]["command"][-1])


def test_valkey_is_the_default_and_redis_a_switch_of_three_values(
    helm: Path, tmp_path: Path
) -> None:
    valkey = redis_container(render(helm))
    assert valkey["image"] == "docker.io/valkey/valkey:8.0"
    assert valkey["command"][-1] == "valkey-server"
    for probe in ("readinessProbe", "livenessProbe"):
        assert "valkey-cli -h 127.0.0.1" in probe_script(valkey, probe)
        assert "redis-cli" not in probe_script(valkey, probe)

    redis_ = redis_container(render(helm, TO_REDIS, tmp=tmp_path))
    assert redis_["image"] == "docker.io/library/redis:7.2-alpine"
    assert redis_["command"][-1] == "redis-server"
    for probe in ("readinessProbe", "livenessProbe"):
        assert "redis-cli -h 127.0.0.1" in probe_script(redis_, probe)
        assert "valkey" not in probe_script(redis_, probe)
    # nothing else differs: the same arguments, environment, volumes and security context
    assert redis_["args"] == valkey["args"]
    assert redis_["env"] == valkey["env"]
    assert redis_["securityContext"] == valkey["securityContext"]
    assert redis_["volumeMounts"] == valkey["volumeMounts"]


def test_extra_redis_directives_become_arguments(helm: Path, tmp_path: Path) -> None:
    config = {"maxmemory": "2gb", "hz": 20, "maxmemory-samples": 1000000, "save": "900 1"}
    args = redis_container(
        render(helm, {"redis": {"statefulset": {"config": config}}}, tmp=tmp_path)
    )["args"]
    assert option(args, "--maxmemory") == "2gb"
    assert option(args, "--hz") == "20"
    assert option(args, "--maxmemory-samples") == "1000000"  # not 1e+06
    assert option(args, "--save") == "900 1"


def test_each_pod_gets_a_pvc_from_the_claim_template(helm: Path, tmp_path: Path) -> None:
    statefulset = find(render(helm), "StatefulSet", REDIS)
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    # volumeClaimTemplates cannot change after creation: no label that changes with the chart
    assert set(claim["metadata"]["labels"]) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    }
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    pod = statefulset["spec"]["template"]["spec"]
    assert "volumes" not in pod  # the claim template provides `data`
    assert redis_container(render(helm))["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]

    def claim_spec(storage_class: str) -> Obj:
        values = {"redis": {"statefulset": {"persistence": {"storageClassName": storage_class}}}}
        sts = find(render(helm, values, tmp=tmp_path), "StatefulSet", REDIS)
        spec: Obj = sts["spec"]["volumeClaimTemplates"][0]["spec"]
        return spec

    assert claim_spec("fast-ssd")["storageClassName"] == "fast-ssd"
    assert claim_spec("-")["storageClassName"] == ""  # static volumes only


def test_without_persistence_the_data_lives_in_an_emptydir(helm: Path, tmp_path: Path) -> None:
    values = {"redis": {"statefulset": {"persistence": {"enabled": False}}}}
    statefulset = find(render(helm, values, tmp=tmp_path), "StatefulSet", REDIS)
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert "persistentVolumeClaimRetentionPolicy" not in statefulset["spec"]
    assert statefulset["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


def test_the_password_comes_from_a_secret_and_never_appears_in_the_statefulset(
    helm: Path,
) -> None:
    objects = render(helm)
    password = secret_value(find(objects, "Secret", f"{REDIS}-password"), "redis-password")
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)

    container = redis_container(objects)
    env = {item["name"]: item for item in container["env"]}
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": f"{REDIS}-password",
            "key": "redis-password",
        }
    statefulset = json.dumps(find(objects, "StatefulSet", REDIS))
    assert password not in statefulset
    assert '--requirepass "$REDIS_PASSWORD"' in " ".join(container["command"])

    # The connection Secret for agents: the same password, the client Service's address.
    url = secret_value(find(objects, "Secret", f"{FULLNAME}-redis-url"), "redis-url")
    assert url == f"redis://:{password}@{REDIS}.agents.svc.cluster.local:6379/0"
    connection = find(objects, "ConfigMap", f"{FULLNAME}-redis-connection")["data"]
    assert connection == {
        "mode": "statefulset",
        "topology": "single",
        "cluster": "false",
        "secretName": f"{FULLNAME}-redis-url",
        "secretKey": "redis-url",
        "host": f"{REDIS}.agents.svc.cluster.local",
        "port": "6379",
    }


def test_an_existing_secret_replaces_both_generated_secrets(helm: Path) -> None:
    objects = render(helm, None, CHART / "ci" / "existing-secret-values.yaml")
    assert not [o for o in objects if o["kind"] == "Secret"]
    env = {item["name"]: item for item in redis_container(objects)["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "platform-redis",
        "key": "password",
    }
    connection = find(objects, "ConfigMap", f"{FULLNAME}-redis-connection")["data"]
    assert (connection["secretName"], connection["secretKey"]) == ("platform-redis", "url")


def test_external_redis_renders_no_redis_only_the_connection(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, None, CHART / "ci" / "external-redis-values.yaml")
    assert kinds(without_operator(objects)) == {
        ("Secret", f"{FULLNAME}-redis-url"),
        ("ConfigMap", f"{FULLNAME}-redis-connection"),
        ("ConfigMap", f"{FULLNAME}-dashboard"),
    }
    url_secret = find(objects, "Secret", f"{FULLNAME}-redis-url")
    assert secret_value(url_secret, "redis-url") == "rediss://:s3cret@redis.example.internal:6380/2"
    assert url_secret["metadata"]["annotations"]["kubeagents.io/redis-topology"] == "single"

    cluster = render(helm, None, CHART / "ci" / "external-cluster-secret-values.yaml")
    assert kinds(without_operator(cluster)) == {
        ("ConfigMap", f"{FULLNAME}-redis-connection"),
        ("ConfigMap", f"{FULLNAME}-dashboard"),
    }
    connection = find(cluster, "ConfigMap", f"{FULLNAME}-redis-connection")["data"]
    assert connection == {
        "mode": "external",
        "topology": "cluster",
        "cluster": "true",
        "secretName": "managed-redis",
        "secretKey": "url",
    }


def test_the_client_service_sends_everyone_to_pod_0_the_master(helm: Path) -> None:
    objects = render(helm, None, CHART / "ci" / "replicated-values.yaml")
    statefulset = find(objects, "StatefulSet", REDIS)
    assert statefulset["spec"]["replicas"] == 3
    client = find(objects, "Service", REDIS)
    assert client["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == f"{REDIS}-0"
    assert client["spec"]["ports"] == [
        {"name": "redis", "port": 6380, "targetPort": "redis", "protocol": "TCP"}
    ]
    headless = find(objects, "Service", f"{REDIS}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert "statefulset.kubernetes.io/pod-name" not in headless["spec"]["selector"]
    assert statefulset["spec"]["serviceName"] == f"{REDIS}-headless"
    env = {e["name"]: e.get("value") for e in redis_container(objects)["env"]}
    assert env["REDIS_MASTER_HOST"] == f"{REDIS}-0.{REDIS}-headless.agents.svc.cluster.local"
    url = secret_value(find(objects, "Secret", f"{FULLNAME}-redis-url"), "redis-url")
    assert url.endswith(f"@{REDIS}.agents.svc.cluster.local:6380/0")


def test_a_chart_upgrade_alone_does_not_restart_redis(helm: Path) -> None:
    """The pod template carries no label that changes with the chart's version."""
    pod = find(render(helm), "StatefulSet", REDIS)["spec"]["template"]["metadata"]
    assert set(pod["labels"]) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
        "app.kubernetes.io/part-of",
    }
    assert set(pod["annotations"]) == {"kubectl.kubernetes.io/default-container"}


def test_redis_pods_are_hardened(helm: Path) -> None:
    objects = render(helm)
    pod = find(objects, "StatefulSet", REDIS)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == REDIS
    assert find(objects, "ServiceAccount", REDIS)["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 999
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = redis_container(objects)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 999
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = redis_container(objects)["resources"]
    assert resources["requests"]
    assert resources["limits"]["memory"]


def test_the_dashboard_configmap_holds_a_dashboard_of_every_agent_metric(helm: Path) -> None:
    configmap = find(render(helm), "ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["kubeagents.json"])
    assert dashboard["uid"] == "kubeagents-agents"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "agent"} <= variables

    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]  # fmt: skip
    text = "\n".join(exprs)
    for metric in (
        "kubeagents_proxy_tokens_total",
        "kubeagents_proxy_cost_usd_total",
        "kubeagents_proxy_budget",
        "kubeagents_probe_ready",
        "kubeagents_probe_check_success",
        "kubeagents_runtime_queue_lag",
        "kubeagents_runtime_queue_pending",
        "kubeagents_runtime_tasks_total",
    ):
        assert metric in text, f"no panel shows {metric}"
    agent_exprs = [e for e in exprs if "kubeagents_operator_" not in e]  # not the operator's row
    for expr in agent_exprs:  # every query is per agent, filtered by the variables
        assert 'namespace=~"$namespace"' in expr
        assert 'agent=~"$agent"' in expr
    assert "app_kubernetes_io_instance" not in configmap["data"]["kubeagents.json"]
    budget = "\n".join(e for e in exprs if "kubeagents_proxy_budget" in e)
    for kind, state in (("usd", "used"), ("usd", "remaining"), ("tokens", "limit")):
        assert f'kind="{kind}", state="{state}"' in budget


def test_the_dashboard_label_and_agent_label_are_values(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, None, CHART / "ci" / "replicated-values.yaml")
    configmap = find(objects, "ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "kubeagents"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "AI agents"}

    # a label that is neither the default nor the JSON's token, so the replacement shows
    own_scrape = {"dashboard": {"agentLabel": "pod_agent"}}
    configmap = find(render(helm, own_scrape, tmp=tmp_path), "ConfigMap", f"{FULLNAME}-dashboard")
    assert "app_kubernetes_io_instance" not in configmap["data"]["kubeagents.json"]
    dashboard = json.loads(configmap["data"]["kubeagents.json"])
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    agent_exprs = [expr for expr in exprs if "kubeagents_operator_" not in expr]
    assert all('pod_agent=~"$agent"' in expr for expr in agent_exprs)
    assert not any(re.search(r"\bagent=~", expr) for expr in agent_exprs)
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "agent"]
    assert variable["definition"].endswith(", pod_agent)")

    off = render(helm, None, CHART / "ci" / "dashboard-off-values.yaml")
    assert not [o for o in off if o["metadata"]["name"].endswith("-dashboard")]


def test_notes_tell_agents_the_secret_name_and_key(helm: Path) -> None:
    def notes(*values_files: Path) -> str:
        args = [a for path in values_files for a in ("-f", str(path))]
        result = run_helm(
            helm, "install", RELEASE, str(CHART), "--dry-run=client", "-n", "agents",
            "-o", "json", *args,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return str(json.loads(result.stdout)["info"]["notes"])

    default = notes()
    assert f"existingSecret: {FULLNAME}-redis-url" in default
    assert "existingSecretKey: redis-url" in default
    assert "cluster: false" in default
    assert f"kubectl -n agents rollout status statefulset/{REDIS}" in default

    external = notes(CHART / "ci" / "external-cluster-secret-values.yaml")
    assert "existingSecret: managed-redis" in external
    assert "existingSecretKey: url" in external
    assert "cluster: true" in external


# --- the rendered Redis container, run on a real valkey-server and redis-server ---------------


@dataclass
class RenderedRedis:
    """The chart's Redis container command, started as a local process."""

    process: ManagedProcess
    port: int
    env: dict[str, str]

    def client(self, password: str | None) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=password, socket_timeout=2)


def start_rendered_redis(
    container: Obj, workdir: Path, *, hostname: str, password: str, master_port: int
) -> RenderedRedis:
    """Run the container's command and args with only the port and data folder changed."""
    server = container["command"][-1]
    for binary in (server, server.replace("-server", "-cli")):
        assert shutil.which(binary), f"{binary} is missing: run `make redis-server`"
    port = free_port() if hostname.endswith("-1") else master_port
    workdir.mkdir(parents=True, exist_ok=True)
    args = list(container["args"])
    args[args.index("--port") + 1] = str(port)
    args[args.index("--dir") + 1] = str(workdir)
    rendered_env = {item["name"] for item in container["env"]}
    env = {
        "REDIS_PASSWORD": password,
        "REDISCLI_AUTH": password,
        "REDIS_PORT": str(port),
        "REDIS_MASTER_HOST": "127.0.0.1",
        "REDIS_MASTER_PORT": str(master_port),
    }
    assert set(env) == rendered_env  # the test sets exactly what the pod spec provides
    env |= {"PATH": os.environ["PATH"], "HOSTNAME": hostname}
    argv = [*container["command"], *args, "--bind", "127.0.0.1"]
    process = ManagedProcess(f"chart-redis:{hostname}", argv, workdir / "redis.log", env=env)
    started = RenderedRedis(process, port, env)
    with started.client(password) as client:
        process.wait_until(client.ping, timeout=20, what=f"{hostname} to answer PING")
    return started


def run_probe(probe: Obj, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = probe["exec"]["command"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=10, check=False)


def proxy_refusal(url: str) -> str | None:
    """Why the proxy would refuse to meter on this Redis (None: it meters). Its eviction-policy
    check runs on each new connection and, by default, refuses a policy that can evict the
    ledger's keys."""

    async def connect() -> str | None:
        link = RedisLink(url, on_connect=EvictionPolicyCheck(accept_risk=False))
        try:
            assert await link.ping()
        except redis.ConnectionError as error:
            return str(error)
        finally:
            await link.aclose()
        return None

    return asyncio.run(connect())


@pytest.fixture
def rendered_processes() -> Iterator[list[RenderedRedis]]:
    started: list[RenderedRedis] = []
    yield started
    for item in started:
        item.process.stop()


@pytest.mark.parametrize("flavor", FLAVOR_IMAGES)
def test_the_rendered_container_runs_a_password_protected_redis_whose_aof_survives_a_restart(
    helm: Path, tmp_path: Path, rendered_processes: list[RenderedRedis], flavor: str
) -> None:
    values = {"redis": {"statefulset": {"image": FLAVOR_IMAGES[flavor]}}}
    container = redis_container(render(helm, values, tmp=tmp_path))
    assert container["command"][-1] == f"{flavor}-server"
    password = secrets.token_hex(12)
    port = free_port()
    master = start_rendered_redis(
        container, tmp_path / "data", hostname=f"{REDIS}-0", password=password, master_port=port
    )
    rendered_processes.append(master)

    with master.client(None) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with master.client(password) as client:
        config = {
            key: client.config_get(key)[key]
            for key in ("appendonly", "appendfsync", "maxmemory-policy", "dir")
        }
        assert config == {
            "appendonly": "yes",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",
            "dir": str(tmp_path / "data"),
        }
        assert client.info("replication")["role"] == "master"
        client.set("kubeagents:{agents/research}:agent:totals", "42")
    # the ledger's keys carry TTLs: the proxy refuses to meter on a policy that could evict them
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    assert proxy_refusal(url) is None
    with master.client(password) as client:  # the check is not vacuous
        client.config_set("maxmemory-policy", "volatile-lru")
        assert "maxmemory-policy is volatile-lru" in (proxy_refusal(url) or "")
        client.config_set("maxmemory-policy", "noeviction")

    # The probes, as the kubelet runs them: authenticated by REDISCLI_AUTH.
    for probe in ("readinessProbe", "livenessProbe"):
        result = run_probe(container[probe], master.env)
        assert result.returncode == 0, f"{probe}: {result.stdout}{result.stderr}"
    wrong = run_probe(container["readinessProbe"], {**master.env, "REDISCLI_AUTH": "wrong"})
    assert wrong.returncode == 1
    assert "NOAUTH" in wrong.stdout or "WRONGPASS" in wrong.stdout

    # SIGTERM (a pod stop), then the same command on the same folder: the AOF brings it back.
    master.process.stop()
    assert (tmp_path / "data" / "appendonlydir").is_dir()
    again = start_rendered_redis(
        container, tmp_path / "data", hostname=f"{REDIS}-0", password=password, master_port=port
    )
    rendered_processes.append(again)
    with again.client(password) as client:
        assert client.get("kubeagents:{agents/research}:agent:totals") == b"42"


@pytest.mark.parametrize("flavor", FLAVOR_IMAGES)
def test_further_pods_replicate_pod_0_with_the_same_password(
    helm: Path, tmp_path: Path, rendered_processes: list[RenderedRedis], flavor: str
) -> None:
    values = {"redis": {"statefulset": {"replicas": 2, "image": FLAVOR_IMAGES[flavor]}}}
    container = redis_container(render(helm, values, tmp=tmp_path))
    assert container["command"][-1] == f"{flavor}-server"
    password = secrets.token_hex(12)
    port = free_port()
    master = start_rendered_redis(
        container, tmp_path / "0", hostname=f"{REDIS}-0", password=password, master_port=port
    )
    rendered_processes.append(master)
    replica = start_rendered_redis(
        container, tmp_path / "1", hostname=f"{REDIS}-1", password=password, master_port=port
    )
    rendered_processes.append(replica)

    with master.client(password) as primary, replica.client(password) as copy:
        primary.set("kubeagents:{agents/research}:tasks:probe", "1")

        def replicated() -> bool:
            info = copy.info("replication")
            return bool(
                info["role"] == "slave"
                and info["master_link_status"] == "up"
                and copy.get("kubeagents:{agents/research}:tasks:probe") == b"1"
            )

        wait_for(replicated, timeout=20, what="the replica to copy pod 0")
        with pytest.raises(redis.ReadOnlyError):
            copy.set("written-to-a-replica", "1")
    result = run_probe(container["readinessProbe"], replica.env)
    assert result.returncode == 0, result.stdout


# --- the real API server ---------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_FILES, ids=lambda path: path.name)
def test_every_ci_case_is_accepted_by_the_api_server(
    cluster: ControlPlane, namespace: str, helm: Path, values_file: Path
) -> None:
    manifest = run_helm(
        helm, "template", RELEASE, str(CHART), "-n", namespace, "-f", str(values_file)
    )
    assert manifest.returncode == 0, manifest.stderr
    docs = [doc for doc in yaml.safe_load_all(manifest.stdout) if doc]
    for other in {d["metadata"].get("namespace") for d in docs} - {None, namespace}:
        cluster.kubectl("create", "namespace", other, check=False)  # operator.watchNamespaces
    applied = subprocess.run(
        [str(tool("kubectl")), "apply", "--dry-run=server", "-f", "-"],
        input=manifest.stdout, capture_output=True, text=True, env=cluster.env(), timeout=60,
        check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    lines = applied.stdout.strip().splitlines()
    expected = len(docs)
    assert len(lines) == expected
    assert all(line.endswith("(server dry run)") for line in lines), applied.stdout


def static_volume(cluster: ControlPlane, name: str, storage_class: str) -> None:
    """A statically provisioned PersistentVolume: the control plane has no storage provisioner
    (no StorageClass), but its volume binder binds a PVC of the same class to this volume."""
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": storage_class,
            "hostPath": {"path": f"/tmp/{name}"},
        },
    }
    applied = subprocess.run(
        [str(tool("kubectl")), "apply", "-f", "-"], input=json.dumps(volume),
        capture_output=True, text=True, env=cluster.env(), timeout=60, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr


def get_json(cluster: ControlPlane, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def left_in(cluster: ControlPlane, namespace: str) -> list[str]:
    """Everything in the namespace except what Kubernetes puts in every namespace."""
    items = get_json(cluster, "all,secret,configmap,pvc,serviceaccount", "-n", namespace)["items"]
    names = [f"{item['kind']}/{item['metadata']['name']}" for item in items]
    return sorted(set(names) - {"ConfigMap/kube-root-ca.crt", "ServiceAccount/default"})


def wait_until_left(cluster: ControlPlane, namespace: str, expected: list[str]) -> None:
    """Wait until exactly `expected` is left in the namespace (deletion is asynchronous)."""
    try:
        wait_for(
            lambda: left_in(cluster, namespace) == expected,
            timeout=90,
            what=f"{expected} to be all that is left in {namespace}",
            interval=0.5,
        )
    except HarnessError:
        pytest.fail(f"{namespace} still holds {left_in(cluster, namespace)}, not {expected}")


@pytest.fixture
def volume_name(cluster: ControlPlane, namespace: str) -> Iterator[str]:
    name = f"{namespace}-redis-0"
    yield name
    cluster.kubectl("delete", "persistentvolume", name, "--wait=false", check=False)


def test_install_wait_upgrade_and_uninstall_leave_nothing_behind(
    cluster: ControlPlane, namespace: str, helm: Path, volume_name: str
) -> None:
    storage_class = f"static-{namespace}"
    static_volume(cluster, volume_name, storage_class)
    settings = [
        "--set", f"redis.statefulset.persistence.storageClassName={storage_class}",
        "--set", "redis.statefulset.persistence.size=1Gi",
        "--set", "redis.statefulset.persistence.retentionPolicy.whenDeleted=Delete",
    ]  # fmt: skip
    env = cluster.env()
    installed = run_helm(
        helm, "install", RELEASE, str(CHART), "-n", namespace, "--wait", "--timeout", "180s",
        "--take-ownership",  # of the CRDs an earlier test's release kept (crds.keep)
        *settings, env=env,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert f"existingSecret: {FULLNAME}-redis-url" in installed.stdout  # the NOTES

    statefulset = get_json(cluster, "statefulset", REDIS, "-n", namespace)
    assert statefulset["status"]["readyReplicas"] == 1
    pod = get_json(cluster, "pod", f"{REDIS}-0", "-n", namespace)
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    claim = get_json(cluster, "pvc", f"data-{REDIS}-0", "-n", namespace)
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["volumeName"] == volume_name
    endpoints = get_json(cluster, "endpointslices", "-n", namespace, "-l",
                         f"kubernetes.io/service-name={REDIS}")["items"]  # fmt: skip
    assert [e["targetRef"]["name"] for s in endpoints for e in s["endpoints"]] == [f"{REDIS}-0"]

    def password() -> str:
        secret = get_json(cluster, "secret", f"{REDIS}-password", "-n", namespace)
        return secret_value(secret, "redis-password")

    first = password()
    url_secret = get_json(cluster, "secret", f"{FULLNAME}-redis-url", "-n", namespace)
    assert secret_value(url_secret, "redis-url") == (
        f"redis://:{first}@{REDIS}.{namespace}.svc.cluster.local:6379/0"
    )

    upgraded = run_helm(
        helm, "upgrade", RELEASE, str(CHART), "-n", namespace, "--wait", "--timeout", "180s",
        *settings, "--set", "dashboard.labelValue=platform", env=env,
    )  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr
    assert password() == first  # generated once, read back with lookup on the upgrade
    dashboard = get_json(cluster, "configmap", f"{FULLNAME}-dashboard", "-n", namespace)
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "platform"

    removed = run_helm(helm, "uninstall", RELEASE, "-n", namespace, "--wait", env=env)
    assert removed.returncode == 0, removed.stderr
    # The PVC goes with the StatefulSet (whenDeleted: Delete), by the garbage collector.
    wait_until_left(cluster, namespace, [])
    # The CRDs stay (crds.keep): deleting them would delete every team and run of the cluster.
    for crd in ("agentteams.kubeagents.io", "agentruns.kubeagents.io"):
        kept = get_json(cluster, "crd", crd)["metadata"]["annotations"]
        assert kept["helm.sh/resource-policy"] == "keep"
    cluster_role = f"{namespace}-{FULLNAME}-operator"
    assert cluster.kubectl("get", "clusterrole", cluster_role, check=False).returncode != 0


def test_by_default_the_data_volume_outlives_uninstall_until_deleted_as_notes_say(
    cluster: ControlPlane, namespace: str, helm: Path, volume_name: str
) -> None:
    storage_class = f"static-{namespace}"
    static_volume(cluster, volume_name, storage_class)
    env = cluster.env()
    installed = run_helm(
        helm, "install", RELEASE, str(CHART), "-n", namespace, "--wait", "--timeout", "180s",
        "--take-ownership",  # of the CRDs an earlier test's release kept (crds.keep)
        "--set", f"redis.statefulset.persistence.storageClassName={storage_class}",
        "--set", "redis.statefulset.persistence.size=1Gi", env=env,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    delete_command = re.search(r"^\s+(kubectl -n \S+ delete pvc .+)$", installed.stdout, re.M)
    assert delete_command, installed.stdout

    removed = run_helm(helm, "uninstall", RELEASE, "-n", namespace, "--wait", env=env)
    assert removed.returncode == 0, removed.stderr
    wait_until_left(cluster, namespace, [f"PersistentVolumeClaim/data-{REDIS}-0"])

    deleted = subprocess.run(
        delete_command.group(1).split(), capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    assert f"data-{REDIS}-0" in deleted.stdout
    wait_until_left(cluster, namespace, [])
