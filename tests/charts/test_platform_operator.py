"""The team-run operator in the platform chart (charts/kubeagents): its Deployment, least-privilege
RBAC, the CRDs (a copy of operator/crds/ that must not drift), monitoring, and on a real
kube-apiserver: what its ServiceAccount may and may not do (`kubectl auth can-i`), the real
`kubeagents operator` running with that account's token, and the CRDs kept on uninstall.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from charts.test_platform_chart import (
    CHART,
    FULLNAME,
    RELEASE,
    Obj,
    find,
    kinds,
    render,
    run_helm,
    values_args,
)
from harness.controlplane import ControlPlane
from harness.processes import HarnessError, ManagedProcess, wait_for
from harness.proxy import KUBEAGENTS
from harness.teams import DIAMOND
from kubeagents_operator.settings import OperatorSettings

OPERATOR = f"{FULLNAME}-operator"
CLUSTER_ROLE = f"agents-{OPERATOR}"  # the release's namespace first: unique in the cluster
LEADER = f"{OPERATOR}-leader-election"
CRDS = ("agentteams.kubeagents.io", "agentruns.kubeagents.io")
SOURCE_CRDS = CHART.parents[1] / "operator" / "crds"
CHART_CRDS = CHART / "files" / "crds"
MONITORING = (
    "--api-versions", "monitoring.coreos.com/v1/PodMonitor",
    "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
)  # fmt: skip
PREFIX = "KUBEAGENTS_OPERATOR_"

# What the operator may do where it drives runs (ClusterRole, or a Role per watched namespace).
DRIVING_RULES: list[Obj] = [
    {"apiGroups": ["kubeagents.io"], "resources": ["agentteams", "agentruns"],
     "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["kubeagents.io"], "resources": ["agentruns"], "verbs": ["create", "delete"]},
    {"apiGroups": ["kubeagents.io"], "resources": ["agentteams/status", "agentruns/status"],
     "verbs": ["get", "patch", "update"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
]  # fmt: skip
# kopf watching every namespace follows the CRDs (its resource scanning)
CRD_WATCH: Obj = {
    "apiGroups": ["apiextensions.k8s.io"],
    "resources": ["customresourcedefinitions"],
    "verbs": ["list", "watch"],
}
LEASE_RULES: list[Obj] = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [OPERATOR],
     "verbs": ["get", "update"]},
]  # fmt: skip


def operator_container(objects: list[Obj]) -> Obj:
    (container,) = find(objects, "Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def env_of(container: Obj) -> dict[str, Obj]:
    return {entry["name"]: entry for entry in container["env"]}


def binding_subjects(binding: Obj) -> list[Obj]:
    subjects: list[Obj] = binding["subjects"]
    return subjects


# --- the Deployment ----------------------------------------------------------------------------


def test_by_default_the_operator_runs_with_its_own_account(helm: Path) -> None:
    objects = render(helm)
    deployment = find(objects, "Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == OPERATOR
    assert pod["automountServiceAccountToken"] is True  # it talks to the API server
    assert find(objects, "ServiceAccount", OPERATOR)["automountServiceAccountToken"] is True
    container = operator_container(objects)
    assert container["command"] == ["kubeagents", "operator"]
    assert container["image"] == "ghcr.io/kubeagents/kubeagents:0.1.0"  # the appVersion
    assert container["ports"] == [{"name": "metrics", "containerPort": 9092, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "operator"
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_the_operator_pod_is_hardened_like_the_redis_pods(helm: Path) -> None:
    objects = render(helm)
    pod = find(objects, "Deployment", OPERATOR)["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    container = operator_container(objects)
    context = container["securityContext"]
    assert context["runAsUser"] == 10001  # the image's kubeagents user, as in charts/agent
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


def test_the_environment_is_exactly_the_operators_settings(
    helm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every KUBEAGENTS_OPERATOR_ variable names a setting and every setting is set, so a typo in
    the chart cannot be ignored silently; the values parse as the operator parses them."""
    env = env_of(operator_container(render(helm)))
    names = {name.removeprefix(PREFIX).lower() for name in env if name.startswith(PREFIX)}
    assert names == set(OperatorSettings.model_fields)
    assert env[f"{PREFIX}REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{FULLNAME}-redis-url",  # the agents' connection Secret
        "key": "redis-url",
    }
    assert env[f"{PREFIX}IDENTITY"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    for name in [name for name in os.environ if name.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    for name, entry in env.items():
        if "value" in entry:
            monkeypatch.setenv(name, entry["value"])
    settings = OperatorSettings()  # as `kubeagents operator` reads its environment
    assert settings.watch_namespaces == []
    assert settings.redis_cluster is False
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9092)
    assert settings.leader_election is True  # always: it makes a second replica safe
    assert (settings.lease_name, settings.lease_namespace) == (OPERATOR, "agents")
    assert (settings.output_max_chars, settings.wait_seconds) == (4096, 5.0)
    assert settings.lease_duration_seconds == 15.0


def test_the_operator_follows_the_agents_redis_secret_and_topology(helm: Path) -> None:
    objects = render(helm, None, CHART / "ci" / "external-cluster-secret-values.yaml")
    env = env_of(operator_container(objects))
    assert env[f"{PREFIX}REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "managed-redis",
        "key": "url",
    }
    assert env[f"{PREFIX}REDIS_CLUSTER"]["value"] == "true"
    mine = render(helm, None, CHART / "ci" / "existing-secret-values.yaml")
    ref = env_of(operator_container(mine))[f"{PREFIX}REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "platform-redis", "key": "url"}


# --- RBAC --------------------------------------------------------------------------------------


def test_by_default_a_cluster_role_holds_exactly_what_the_operator_needs(helm: Path) -> None:
    objects = render(helm)
    assert find(objects, "ClusterRole", CLUSTER_ROLE)["rules"] == [*DRIVING_RULES, CRD_WATCH]
    binding = find(objects, "ClusterRoleBinding", CLUSTER_ROLE)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE,
    }  # fmt: skip
    subject = {"kind": "ServiceAccount", "name": OPERATOR, "namespace": "agents"}
    assert binding_subjects(binding) == [subject]
    lease_role = find(objects, "Role", LEADER)
    assert lease_role["metadata"]["namespace"] == "agents"
    assert lease_role["rules"] == LEASE_RULES
    assert binding_subjects(find(objects, "RoleBinding", LEADER)) == [subject]
    roles = [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    assert {o["metadata"]["name"] for o in roles} == {LEADER}  # no other Role anywhere


def test_watched_namespaces_get_roles_and_nothing_cluster_wide(helm: Path) -> None:
    objects = render(helm, None, CHART / "ci" / "operator-namespaced-values.yaml")
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "Role"}
    assert set(roles) == {"team-a", "team-b", "agents"}
    for namespace in ("team-a", "team-b"):
        assert roles[namespace]["metadata"]["name"] == OPERATOR
        assert roles[namespace]["rules"] == DRIVING_RULES
    assert roles["agents"]["metadata"]["name"] == LEADER  # the Lease stays in the release's
    assert roles["agents"]["rules"] == LEASE_RULES
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["agents", "team-a", "team-b"]
    for binding in bindings:
        assert binding_subjects(binding) == [
            {"kind": "ServiceAccount", "name": OPERATOR, "namespace": "agents"}
        ]
    container = operator_container(objects)
    env = env_of(container)
    assert json.loads(env[f"{PREFIX}WATCH_NAMESPACES"]["value"]) == ["team-a", "team-b"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4317"
    assert container["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert find(objects, "Deployment", OPERATOR)["spec"]["replicas"] == 2


def test_turned_off_there_is_no_operator_and_no_crds(helm: Path) -> None:
    objects = render(helm, None, CHART / "ci" / "operator-off-values.yaml")
    assert not [
        o for o in objects
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
        or o["kind"] == "CustomResourceDefinition"
    ]  # fmt: skip
    assert ("StatefulSet", f"{FULLNAME}-redis") in kinds(objects)


# --- the CRDs ----------------------------------------------------------------------------------


def crds(objects: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "CustomResourceDefinition"}


def test_the_charts_crds_are_the_operators_crds() -> None:
    """files/crds/ is a copy of operator/crds/ (Helm reads no file outside the chart, and a
    symlink is dropped by some chart loaders, e.g. Flux building charts from Git)."""
    source = {path.name: path.read_bytes() for path in SOURCE_CRDS.glob("*.yaml")}
    copy = {path.name: path.read_bytes() for path in CHART_CRDS.glob("*.yaml")}
    assert copy == source, (
        "charts/kubeagents/files/crds/ differs from operator/crds/: "
        "run `cp operator/crds/*.yaml charts/kubeagents/files/crds/` (and remove stale copies)"
    )


def test_the_rendered_crds_are_the_source_plus_labels_and_the_keep_policy(helm: Path) -> None:
    rendered = crds(render(helm))
    assert set(rendered) == set(CRDS)
    for path in SOURCE_CRDS.glob("*.yaml"):
        source = yaml.safe_load(path.read_text())
        crd = rendered[source["metadata"]["name"]]
        metadata = crd["metadata"]
        assert metadata.pop("annotations") == {"helm.sh/resource-policy": "keep"}
        labels = metadata.pop("labels")
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert crd == source  # nothing else changed on the way through the template


def test_crds_install_and_keep_are_values(helm: Path, tmp_path: Path) -> None:
    unkept = crds(render(helm, {"crds": {"keep": False}}, tmp=tmp_path))
    assert set(unkept) == set(CRDS)
    assert all("annotations" not in crd["metadata"] for crd in unkept.values())
    assert crds(render(helm, {"crds": {"install": False}}, tmp=tmp_path)) == {}
    # The operator does not need the chart's CRDs: another release's, or applied by hand.
    off = render(helm, {"crds": {"install": False}}, tmp=tmp_path)
    assert find(off, "Deployment", OPERATOR)


def test_a_chart_without_its_crd_files_refuses_to_render(helm: Path, tmp_path: Path) -> None:
    copy = tmp_path / "kubeagents"
    shutil.copytree(CHART, copy)
    shutil.rmtree(copy / "files" / "crds")
    result = run_helm(helm, "template", RELEASE, str(copy))
    assert result.returncode != 0
    assert "crds.install: the chart holds no CRDs in files/crds/" in result.stderr


# --- monitoring --------------------------------------------------------------------------------


def test_pod_monitor_and_rule_render_only_where_the_cluster_has_them(
    helm: Path, tmp_path: Path
) -> None:
    def monitoring_kinds(values: Obj | None, *args: str) -> set[str]:
        result = run_helm(
            helm, "template", RELEASE, str(CHART), "-n", "agents", *args,
            *values_args(values, (), tmp_path),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return {d["kind"] for d in docs} & {"PodMonitor", "PrometheusRule"}

    assert monitoring_kinds(None) == set()  # no monitoring API: nothing that would fail
    assert monitoring_kinds(None, *MONITORING) == {"PodMonitor", "PrometheusRule"}
    only_monitors = ("--api-versions", "monitoring.coreos.com/v1/PodMonitor")
    assert monitoring_kinds(None, *only_monitors) == {"PodMonitor"}
    off = {"operator": {"monitoring": {"podMonitor": {"enabled": False},
                                       "prometheusRule": {"enabled": False}}}}  # fmt: skip
    assert monitoring_kinds(off, *MONITORING) == set()
    assert monitoring_kinds({"operator": {"enabled": False}}, *MONITORING) == set()


def test_the_pod_monitor_scrapes_the_operator_and_the_rule_alerts_on_failing_runs(
    helm: Path,
) -> None:
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "-n", "agents", *MONITORING,
        "-f", str(CHART / "ci" / "operator-namespaced-values.yaml"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    monitor = find(objects, "PodMonitor", OPERATOR)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    pod_labels = find(objects, "Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]
    ((rule,),) = [group["rules"] for group in find(objects, "PrometheusRule")["spec"]["groups"]]
    assert rule["alert"] == "KubeagentsTeamRunsFailing"
    assert rule["expr"] == (
        'sum by (namespace, team) (increase(kubeagents_operator_runs_total{namespace="agents", '
        'phase="Failed"}[30m])) > 0'
    )
    assert rule["labels"] == {"severity": "critical"}
    assert "{{ $labels.team }}" in rule["annotations"]["summary"]


def test_the_dashboard_has_a_row_of_the_operators_metrics(helm: Path) -> None:
    configmap = find(render(helm), "ConfigMap", f"{FULLNAME}-dashboard")
    dashboard = json.loads(configmap["data"]["kubeagents.json"])
    panels = dashboard["panels"]
    row = next(i for i, p in enumerate(panels) if p["title"] == "Team runs (operator)")
    exprs = [t["expr"] for p in panels[row + 1 :] for t in p["targets"]]
    text = "\n".join(exprs)
    assert "rate(kubeagents_operator_runs_total{" in text
    assert "sum by (phase) (rate(kubeagents_operator_steps_total[" in text
    assert (
        "histogram_quantile(0.99, sum by (le) "
        "(rate(kubeagents_operator_dispatch_latency_seconds_bucket[" in text
    )
    assert "kubeagents_operator_run_duration_seconds_bucket{" in text
    assert "kubeagents_operator_run_cost_usd_total{" in text
    assert all(expr.startswith(("sum", "histogram_quantile")) for expr in exprs)
    assert "team" in {v["name"] for v in dashboard["templating"]["list"]}
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


# --- values the schema refuses, naming the key --------------------------------------------------

INVALID: list[tuple[str, Obj, str]] = [
    ("a typo", {"operator": {"replica": 2}}, "at '/operator': additional properties 'replica'"),
    ("a typo in crds", {"crds": {"instal": False}}, "at '/crds': additional properties 'instal'"),
    ("no pods", {"operator": {"replicas": 0}}, "at '/operator/replicas': minimum"),
    (
        "a namespace that is no name",
        {"operator": {"watchNamespaces": ["Team_A"]}},
        "at '/operator/watchNamespaces/0': 'Team_A' does not match pattern",
    ),
    (
        "a namespace twice",
        {"operator": {"watchNamespaces": ["a", "a"]}},
        "at '/operator/watchNamespaces': items at 0 and 1 are equal",
    ),
    ("an unpinned image", {"operator": {"image": {"tag": "latest"}}}, "at '/operator/image/tag'"),
    (
        "a digest that is none",
        {"operator": {"image": {"digest": "latest"}}},
        "at '/operator/image/digest': 'latest' does not match pattern",
    ),
    (
        "a chart setting in extraEnv",
        {
            "operator": {
                "extraEnv": [{"name": "KUBEAGENTS_OPERATOR_WATCH_NAMESPACES", "value": "x"}]
            }
        },
        "at '/operator/extraEnv/0/name'",
    ),
    (
        "a window that is no duration",
        {"operator": {"monitoring": {"prometheusRule": {"runsFailingWindow": "15 minutes"}}}},
        "at '/operator/monitoring/prometheusRule/runsFailingWindow'",
    ),
    (
        "a wait of zero",
        {"operator": {"waitSeconds": 0}},
        "at '/operator/waitSeconds': exclusiveMinimum",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"),
    [(values, message) for _, values, message in INVALID],
    ids=[case for case, _, _ in INVALID],
)
def test_the_schema_rejects_bad_operator_values_naming_the_key(
    helm: Path, tmp_path: Path, values: Obj, message: str
) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), *values_args(values, (), tmp_path))
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


def test_notes_say_how_to_check_the_operator_and_list_runs(helm: Path, tmp_path: Path) -> None:
    def notes(values: Obj | None) -> str:
        result = run_helm(
            helm, "install", RELEASE, str(CHART), "--dry-run=client", "-n", "agents", "-o", "json",
            *values_args(values, (), tmp_path),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return str(json.loads(result.stdout)["info"]["notes"])

    default = notes(None)
    assert f"kubectl -n agents rollout status deployment/{OPERATOR}" in default
    assert "kubectl -n agents get agentruns" in default
    assert "(every namespace)" in default
    assert "kubectl delete crd agentteams.kubeagents.io agentruns.kubeagents.io" in default
    namespaced = notes({"operator": {"watchNamespaces": ["team-a"]}, "crds": {"install": False}})
    assert "(namespaces team-a)" in namespaced
    assert "crds.install is false" in namespaced
    assert "team-run operator" not in notes({"operator": {"enabled": False}})


# --- on the real API server --------------------------------------------------------------------


@dataclass
class Installed:
    namespace: str
    service_account: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def install(cluster: ControlPlane, helm: Path, namespace: str, *settings: str) -> Installed:
    """`helm install` of the chart (Redis without a volume, not waited for), CRDs included.
    `--take-ownership`: the session's API server is shared, and the CRDs outlive each release
    (crds.keep), so another test's release (or kubectl) may hold them already; a second release
    in a real cluster would set crds.install=false instead."""
    result = run_helm(
        helm, "install", RELEASE, str(CHART), "-n", namespace, "--take-ownership",
        "--set", "redis.statefulset.persistence.enabled=false", *settings, env=cluster.env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{c}" for c in CRDS)
    )
    return Installed(namespace, OPERATOR)


@pytest.fixture(scope="module")
def installed(cluster: ControlPlane, helm: Path) -> Iterator[Installed]:
    """The chart with its defaults (the operator watching every namespace) in a namespace of
    its own, for the tests of this module that only read."""
    namespace = "platform-operator-rbac"
    cluster.kubectl("create", "namespace", namespace)
    yield install(cluster, helm, namespace)
    run_helm(helm, "uninstall", RELEASE, "-n", namespace, env=cluster.env())
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def can_i(cluster: ControlPlane, user: str, verb: str, resource: str, *scope: str) -> bool:
    result = cluster.kubectl("auth", "can-i", verb, resource, f"--as={user}", *scope, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def test_the_operator_account_can_do_its_job_and_nothing_more(
    cluster: ControlPlane, installed: Installed
) -> None:
    ns = ("-n", installed.namespace)
    other = ("-n", "default")
    lease = f"leases.coordination.k8s.io/{OPERATOR}"
    allowed = [
        ("patch", "agentruns.kubeagents.io", "--subresource=status", *ns),
        ("update", "agentteams.kubeagents.io", "--subresource=status", *ns),
        ("patch", "agentruns.kubeagents.io", *other),  # kopf's annotations and finalizers
        ("watch", "agentteams.kubeagents.io", "--all-namespaces"),
        ("create", "agentruns.kubeagents.io", *other),
        ("delete", "agentruns.kubeagents.io", *other),
        ("create", "events", *other),
        ("create", "events.events.k8s.io", *ns),
        ("list", "deployments.apps", *other),
        ("create", "leases.coordination.k8s.io", *ns),
        ("get", lease, *ns),
        ("update", lease, *ns),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ]
    refused = [
        ("create", "deployments.apps", *ns),
        ("patch", "deployments.apps", *other),
        ("update", "deployments.apps", "--subresource=scale", *ns),
        ("get", "secrets", *ns),
        ("list", "secrets", "--all-namespaces"),
        ("delete", "agentteams.kubeagents.io", *ns),
        ("create", "agentteams.kubeagents.io", *ns),
        ("update", "agentruns.kubeagents.io", *ns),  # only its status, and patches
        ("create", "pods", *ns),
        ("create", "leases.coordination.k8s.io", *other),
        ("get", f"leases.coordination.k8s.io/{OPERATOR}", *other),
        ("update", "leases.coordination.k8s.io/kube-controller-manager", "-n", "kube-system"),
        ("delete", lease, *ns),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
        ("list", "namespaces"),
        ("create", "rolebindings.rbac.authorization.k8s.io", *ns),
    ]
    check = {" ".join(case): can_i(cluster, installed.user, *case) for case in [*allowed, *refused]}
    assert [case for case in allowed if not check[" ".join(case)]] == []
    assert [case for case in refused if check[" ".join(case)]] == []


def service_account_kubeconfig(cluster: ControlPlane, installed: Installed, path: Path) -> Path:
    """A kubeconfig of the API server that logs in with a token of the chart's ServiceAccount,
    as the pod would (kopf reads the same token from the service account's files there)."""
    token = cluster.kubectl(
        "create", "token", installed.service_account, "-n", installed.namespace,
        "--duration", "1h",
    ).stdout.strip()  # fmt: skip
    config = json.loads(cluster.kubeconfig.read_text())
    (user,) = config["users"]
    user["user"] = {"token": token}
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def pod_environment(cluster: ControlPlane, installed: Installed, redis_url: str) -> dict[str, str]:
    """The operator container's environment from the installed Deployment, resolved as the
    kubelet would: the Redis URL (here: the session's redis-server) and the pod's name."""
    deployment = json.loads(
        cluster.kubectl(
            "get", "deployment", OPERATOR, "-n", installed.namespace, "-o", "json"
        ).stdout
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    resolved = {
        f"{PREFIX}REDIS_URL": redis_url,
        f"{PREFIX}IDENTITY": f"{OPERATOR}-7d9f8-x2x4q",
        f"{PREFIX}METRICS_HOST": "127.0.0.1",  # one host, many tests: no fixed port
        f"{PREFIX}METRICS_PORT": "0",
    }
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert set(resolved) <= set(env)
    return {name: value for name, value in {**env, **resolved}.items() if value is not None}


def status_of(cluster: ControlPlane, namespace: str, kind: str, name: str) -> Obj:
    found = json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
    status: Obj = found.get("status") or {}
    return status


StartOperator = Callable[[Installed], ManagedProcess]


@pytest.fixture
def start_operator(
    cluster: ControlPlane, redis_url: str, tmp_path: Path
) -> Iterator[StartOperator]:
    """`start(installed)`: the real `kubeagents operator`, outside the cluster, with the chart's
    environment and a token of the chart's ServiceAccount: nothing but the chart's RBAC lets it
    act. Stopped after the test."""
    started: list[ManagedProcess] = []

    def start(installed: Installed) -> ManagedProcess:
        kubeconfig = service_account_kubeconfig(cluster, installed, tmp_path / "kubeconfig")
        env = {
            **{k: v for k, v in cluster.env().items() if not k.startswith((PREFIX, "OTEL_"))},
            **pod_environment(cluster, installed, redis_url),
            "KUBECONFIG": str(kubeconfig),
        }
        process = ManagedProcess(
            "chart-operator", [str(KUBEAGENTS), "operator"], tmp_path / "operator.log", env=env
        )
        started.append(process)
        try:
            process.wait_for_log(r"kubeagents operator watching", timeout=60)
        except HarnessError as error:
            pytest.fail(f"the operator did not start: {error}", pytrace=False)
        return process

    yield start
    for process in started:
        process.stop()


def assert_it_judges_a_team_and_a_run(
    cluster: ControlPlane, installed: Installed, operator: ManagedProcess, tmp_path: Path, *,
    within: float,
) -> None:  # fmt: skip
    """A valid team gets `Valid=True`, a run of a missing team fails with `TeamNotFound`, the
    Lease is held by the pod's name, and nothing was forbidden on the way."""
    ns = installed.namespace
    team = tmp_path / "team.json"
    team.write_text(json.dumps(DIAMOND))
    run = tmp_path / "run.json"
    run.write_text(json.dumps({
        "apiVersion": "kubeagents.io/v1alpha1", "kind": "AgentRun",
        "metadata": {"name": "orphan"}, "spec": {"team": "no-such-team"},
    }))  # fmt: skip
    cluster.kubectl("create", "-n", ns, "-f", str(team), "-f", str(run))
    name = DIAMOND["metadata"]["name"]

    conditions = wait_for(
        lambda: status_of(cluster, ns, "agentteam", name).get("conditions"),
        timeout=within,
        what="the team's Valid condition",
    )
    assert [(c["type"], c["status"]) for c in conditions] == [("Valid", "True")]
    failed = wait_for(
        lambda: (s := status_of(cluster, ns, "agentrun", "orphan")).get("phase") and s,
        timeout=within,
        what="the run of a missing team to be judged",
    )
    assert failed["phase"] == "Failed"
    assert failed["message"] == f"spec.team: no AgentTeam no-such-team in {ns}"
    assert {c["type"]: c["reason"] for c in failed["conditions"]}["Failed"] == "TeamNotFound"
    # leader election over the chart's Lease, in the release's namespace, as this pod
    lease = json.loads(cluster.kubectl("get", "lease", OPERATOR, "-n", ns, "-o", "json").stdout)
    assert lease["spec"]["holderIdentity"] == f"{OPERATOR}-7d9f8-x2x4q"
    log = operator.log_text()
    assert "403" not in log
    assert "forbidden" not in log.lower()


def test_the_real_operator_does_its_job_with_the_charts_service_account(
    cluster: ControlPlane, installed: Installed, start_operator: StartOperator, tmp_path: Path
) -> None:
    operator = start_operator(installed)
    assert "watching every namespace" in operator.log_text()
    assert_it_judges_a_team_and_a_run(cluster, installed, operator, tmp_path, within=60)


def test_the_real_operator_watching_its_namespaces_needs_no_cluster_wide_rights(
    cluster: ControlPlane,
    namespace: str,
    helm: Path,
    start_operator: StartOperator,
    tmp_path: Path,
) -> None:
    installed = install(
        cluster, helm, namespace, "--set", f"operator.watchNamespaces={{{namespace}}}"
    )
    operator = start_operator(installed)
    assert f"watching {namespace}" in operator.log_text()
    assert_it_judges_a_team_and_a_run(cluster, installed, operator, tmp_path, within=20)


def test_namespaced_rbac_reaches_no_other_namespace_and_uninstall_keeps_the_crds(
    cluster: ControlPlane, namespace: str, helm: Path
) -> None:
    installed = install(
        cluster, helm, namespace, "--set", f"operator.watchNamespaces={{{namespace}}}"
    )
    ns = ("-n", namespace)
    assert can_i(
        cluster, installed.user, "patch", "agentruns.kubeagents.io", "--subresource=status", *ns
    )
    assert can_i(cluster, installed.user, "list", "deployments.apps", *ns)
    assert not can_i(cluster, installed.user, "list", "agentruns.kubeagents.io", "-n", "default")
    assert not can_i(cluster, installed.user, "list", "agentruns.kubeagents.io", "--all-namespaces")
    assert not can_i(
        cluster, installed.user, "list", "customresourcedefinitions.apiextensions.k8s.io"
    )
    assert can_i(cluster, installed.user, "create", "leases.coordination.k8s.io", *ns)

    removed = run_helm(helm, "uninstall", RELEASE, "-n", namespace, "--wait", env=cluster.env())
    assert removed.returncode == 0, removed.stderr
    for crd in CRDS:
        kept = json.loads(cluster.kubectl("get", "crd", crd, "-o", "json").stdout)
        assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    roles = cluster.kubectl("get", "roles,rolebindings", *ns, "-o", "name").stdout.split()
    assert roles == []
