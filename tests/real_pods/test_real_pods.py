"""The product on a real node: real containers from the images built here, the kubelet's real
probes, native sidecars, security contexts, rollouts gated by semantic readiness, failover of a
killed pod's task, one budget shared by two replicas, and the team-run operator in-cluster.

Everything is installed once per session by the `product` fixture, as `make run` installs it:
the platform chart with its defaults (Valkey with AOF on a dynamically provisioned volume), the
fake Anthropic API as a Deployment (examples/local/fake-anthropic.yaml), and the example agents
`research` (2 replicas) and `summarizer` (1 replica) from examples/ with their local overrides.
Tests that change a release put it back before they end, so their order does not matter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.binaries import REPO, tools_dir
from harness.processes import wait_for
from harness.product import AGENTS, FAKE_API_KEY, NAMESPACE, PLATFORM_RELEASE, Product

pytestmark = pytest.mark.timeout(900)

RESEARCH, SUMMARIZER = AGENTS
Pod = dict[str, Any]
ROLLOUT_TIMEOUT = 240.0


# --- helpers ----------------------------------------------------------------------------------


def pods_of(product: Product, release: str) -> list[Pod]:
    """The release's pods that are not being deleted."""
    listed = product.json("get", "pods", "-l", f"app.kubernetes.io/instance={release}")["items"]
    return [pod for pod in listed if not pod["metadata"].get("deletionTimestamp")]


def is_ready(pod: Pod) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def template_hash(pod: Pod) -> str:
    return str(pod["metadata"]["labels"]["pod-template-hash"])


def deployment(release: str) -> str:
    return f"{release}-agent"


def submit(product: Product, target: str, agent: str, prompt: str, *, wait: int = 90) -> Any:
    """`kubeagents task submit --wait` in the runtime container of `target`; the task's result."""
    out = product.kubectl(
        "exec", target, "-c", "runtime", "--", "kubeagents", "task", "submit",
        "--agent", agent, "--namespace", NAMESPACE, "--prompt", prompt, "--wait", str(wait),
        timeout=wait + 60,
    )  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def task_result(product: Product, agent: str, task_id: str) -> Any:
    out = product.kubectl(
        "exec", f"deploy/{deployment(agent)}", "-c", "runtime", "--", "kubeagents", "task",
        "get", "--agent", agent, "--namespace", NAMESPACE, task_id,
    )  # fmt: skip
    return json.loads(out)


def wait_rolled_out(product: Product, release: str) -> list[Pod]:
    product.kubectl(
        "rollout", "status", f"deployment/{deployment(release)}",
        f"--timeout={ROLLOUT_TIMEOUT:.0f}s", timeout=ROLLOUT_TIMEOUT + 30,
    )  # fmt: skip

    def settled() -> list[Pod] | None:
        pods = pods_of(product, release)
        return pods if pods and all(is_ready(p) for p in pods) else None

    return wait_for(settled, timeout=ROLLOUT_TIMEOUT, what=f"{release}'s pods all Ready")


def container_exec(product: Product, pod: str, container: str, script: str) -> str:
    return product.kubectl("exec", pod, "-c", container, "--", "sh", "-c", script)


def python_in(product: Product, pod: str, container: str, code: str) -> str:
    return product.kubectl("exec", pod, "-c", container, "--", "python", "-c", code)


def probe_status(product: Product, pod: str) -> Any:
    """The probe's GET /status (readiness, checks, history newest first), from inside the pod."""
    return json.loads(
        python_in(
            product,
            pod,
            "probe",
            "import urllib.request;print(urllib.request.urlopen("
            "'http://127.0.0.1:9091/status').read().decode())",
        )
    )


@pytest.fixture
def fake(product: Product, tmp_path: Path) -> Iterator[str]:
    """The in-cluster fake's URL through a port-forward (its control API: /_fake/...)."""
    with product.port_forward("svc/fake-anthropic", 8787, tmp_path) as url:
        yield url


def billed_tokens(fake_url: str, api_key: str) -> int:
    """Tokens the fake billed to requests made with `api_key`."""
    records = httpx.get(f"{fake_url}/_fake/requests", timeout=30).json()["requests"]
    total = 0
    for record in records:
        headers = {k.lower(): v for k, v in record["headers"].items()}
        if headers.get("x-api-key") == api_key and record.get("billed"):
            total += record["billed"]["input_tokens"] + record["billed"]["output_tokens"]
    return total


# --- the platform ------------------------------------------------------------------------------


def test_valkey_runs_with_aof_on_a_dynamically_provisioned_volume(product: Product) -> None:
    [claim] = product.json("get", "pvc", "-l", f"app.kubernetes.io/instance={PLATFORM_RELEASE}")[
        "items"
    ]
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == "local-path"  # the default class, not named
    volume = product.json("get", "pv", claim["spec"]["volumeName"])
    assert volume["spec"]["claimRef"]["name"] == claim["metadata"]["name"]
    # the platform chart's NOTES command, verbatim
    pong = product.kubectl("exec", "kubeagents-redis-0", "-c", "redis", "--", "valkey-cli", "ping")
    assert pong.strip() == "PONG"
    aof = product.kubectl(
        "exec", "kubeagents-redis-0", "-c", "redis", "--",
        "valkey-cli", "config", "get", "appendonly",
    )  # fmt: skip
    assert aof.split() == ["appendonly", "yes"]
    server = product.kubectl(
        "exec", "kubeagents-redis-0", "-c", "redis", "--", "valkey-cli", "info", "server"
    )  # fmt: skip
    assert "valkey_version:8.0." in server  # the chart's default server is Valkey 8
    listing = container_exec(product, "kubeagents-redis-0", "redis", "ls -R /data")
    assert ".aof" in listing


# --- pods, probes and sidecars ----------------------------------------------------------------


@pytest.mark.parametrize("agent", AGENTS, ids=lambda agent: agent.release)
def test_every_agent_pod_is_ready_with_its_semantic_check_passing(
    product: Product, agent: Any
) -> None:
    """The kubelet's readiness probe of the runtime is the probe sidecar's /readyz: each Ready
    pod reports the semantic check passing, from a model answer its expectation accepted. (That
    a failing check keeps a pod out of Ready is the rollout test below.)"""
    for pod in wait_rolled_out(product, agent.release):
        name = pod["metadata"]["name"]
        runtime = next(c for c in pod["spec"]["containers"] if c["name"] == "runtime")
        assert runtime["readinessProbe"]["httpGet"] == {
            "path": "/readyz", "port": 9091, "scheme": "HTTP"
        }  # fmt: skip
        status = probe_status(product, name)
        assert status["ready"] is True
        assert status["checks"]["semantic"]["passing"] is True
        semantic = [h for h in status["history"] if h["check"] == "semantic"]
        assert semantic[0]["passed"] is True, semantic[0]
        assert semantic[0]["excerpt"], semantic[0]


def test_the_proxy_and_the_probe_start_before_the_runtime(product: Product) -> None:
    [pod, *_] = pods_of(product, SUMMARIZER.release)
    sidecars = {c["name"]: c for c in pod["spec"]["initContainers"]}
    assert {name: c.get("restartPolicy") for name, c in sidecars.items()} == {
        "proxy": "Always",
        "probe": "Always",
    }
    started = {
        s["name"]: datetime.fromisoformat(s["state"]["running"]["startedAt"])
        for s in pod["status"]["initContainerStatuses"] + pod["status"]["containerStatuses"]
    }
    assert started["proxy"] <= started["probe"] <= started["runtime"]
    # the kubelet starts the runtime only once the sidecars are started (their startup probes)
    assert all(s["started"] for s in pod["status"]["initContainerStatuses"])


PACKAGES = {
    "kubeagents": "kubeagents",
    "kubeagents_proxy": "sidecar/kubeagents_proxy",
    "kubeagents_probe": "probe/kubeagents_probe",
    "kubeagents_runtime": "runtime/kubeagents_runtime",
    "kubeagents_operator": "operator/kubeagents_operator",
}
DIGEST_PACKAGES = """
import hashlib, importlib, json, pathlib, sys
digests = {}
for name in sys.argv[1:]:
    root = pathlib.Path(importlib.import_module(name).__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\\0" + path.read_bytes())
    digests[name] = digest.hexdigest()
print(json.dumps(digests))
"""


def test_the_pods_run_the_code_of_this_checkout(product: Product) -> None:
    """The image was built from these sources (a stale build cache once shipped old code)."""
    [pod, *_] = pods_of(product, SUMMARIZER.release)
    argv = ["exec", pod["metadata"]["name"], "-c", "runtime", "--", "python", "-c"]
    running = json.loads(product.kubectl(*argv, DIGEST_PACKAGES, *PACKAGES))
    for name, folder in PACKAGES.items():
        digest = hashlib.sha256()
        root = REPO / folder
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        assert running[name] == digest.hexdigest(), f"{name} in the image differs from {folder}"


# --- the chart's NOTES, verbatim ----------------------------------------------------------------


def notes_commands(product: Product, release: str) -> list[str]:
    notes = product.helm("get", "notes", release)
    return [line.strip() for line in notes.splitlines() if re.match(r"\s+(kubectl|curl) ", line)]


def run_shell(script: str, product: Product) -> str:
    env = {
        **os.environ,
        "KUBECONFIG": str(product.kubeconfig),
        "PATH": f"{tools_dir()}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=180, check=False
    )
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_every_command_the_agent_notes_print_works_verbatim(product: Product) -> None:
    commands = notes_commands(product, SUMMARIZER.release)
    submit_line = next(c for c in commands if "task submit" in c)
    submitted = json.loads(run_shell(submit_line, product).strip().splitlines()[-1])
    assert submitted["status"] == "succeeded"
    get_line = next(c for c in commands if "task get" in c)
    got = json.loads(run_shell(get_line.replace("TASK_ID", submitted["id"]), product))
    assert got["status"] == "succeeded"
    assert got["output"] == submitted["output"]

    def forwarded(port_forward: str, *curls: str) -> str:
        """A NOTES `kubectl port-forward … &` line, then its curl lines, as a user runs them
        (the forward's own chatter goes to stderr, so the output is the curls')."""
        port = port_forward.split()[-2].split(":")[0]
        script = "\n".join([
            "set -euo pipefail",
            f"{{ {port_forward} }} >&2",
            "trap 'kill %1' EXIT",
            # wait for the forward to listen, as a user would retry
            f"for _ in $(seq 300); do curl -so /dev/null localhost:{port} && break;"
            " sleep 0.2; done",
            *curls,
        ])  # fmt: skip
        return run_shell(script, product)

    status_pf = next(c for c in commands if "9091:9091" in c)
    probe_status = json.loads(forwarded(status_pf, "curl -s localhost:9091/status"))
    assert probe_status["ready"] is True
    api_pf = next(c for c in commands if "8081" in c and "port-forward" in c)
    post, get = (c for c in commands if "localhost:8081" in c)
    created = json.loads(forwarded(api_pf, post))
    fetched = json.loads(
        forwarded(
            api_pf,
            f"for i in $(seq 300); do out=$({get.replace('TASK_ID', created['id'])}); "
            'case $out in *\'"succeeded"\'*) break;; esac; sleep 0.2; done; echo "$out"',
        )
    )
    assert fetched["status"] == "succeeded", fetched
    budget_pf = next(c for c in commands if "9090:9090" in c)
    budget = json.loads(forwarded(budget_pf, "curl -s localhost:9090/kubeagents/budget"))
    assert budget["scopes"][0]["tokens"]["limit"] == 1_000_000, budget


# --- security in the running pod ------------------------------------------------------------------


def test_runtime_has_no_api_key_no_token_and_runs_non_root_on_a_read_only_root(
    product: Product,
) -> None:
    [pod, *_] = pods_of(product, SUMMARIZER.release)
    name = pod["metadata"]["name"]
    runtime_env = product.kubectl("exec", name, "-c", "runtime", "--", "env")
    assert FAKE_API_KEY not in runtime_env
    assert "API_KEY" not in runtime_env
    found = container_exec(
        product, name, "runtime",
        f"grep -rls {shlex.quote(FAKE_API_KEY)} /etc /var /run /tmp /nonexistent 2>/dev/null; true",
    )  # fmt: skip
    assert found.strip() == ""
    # the key is where it belongs: a file in the proxy container only
    proxy_files = product.kubectl("exec", name, "-c", "proxy", "--", "env")
    key_file = re.search(r"KUBEAGENTS_PROXY_API_KEY_FILE=(\S+)", proxy_files)
    assert key_file is not None
    key = product.kubectl("exec", name, "-c", "proxy", "--", "cat", key_file.group(1))
    assert key.strip() == FAKE_API_KEY
    for container in ("runtime", "proxy", "probe"):
        checks = python_in(
            product, name, container,
            "import os,json;"
            "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(),"
            " 'token': os.path.exists('/var/run/secrets/kubernetes.io/serviceaccount'),"
            " 'writable_root': os.access('/', os.W_OK) or os.access('/usr', os.W_OK)}))",
        )  # fmt: skip
        assert json.loads(checks) == {
            "uid": 10001, "gid": 10001, "token": False, "writable_root": False
        }, container  # fmt: skip
        write = product.kubectl(
            "exec", name, "-c", container, "--", "sh", "-c", "touch /x 2>&1; echo $?",
            check=False,
        )  # fmt: skip
        assert "Read-only file system" in write
    restarts = {s["name"]: s["restartCount"] for s in pod["status"]["containerStatuses"]}
    restarts |= {s["name"]: s["restartCount"] for s in pod["status"]["initContainerStatuses"]}
    assert restarts == {"runtime": 0, "proxy": 0, "probe": 0}


# --- rollouts gated by semantic readiness -------------------------------------------------------


def test_an_upgrade_the_model_cannot_pass_never_becomes_ready_and_rollback_restores_it(
    product: Product,
) -> None:
    agent = SUMMARIZER
    [old] = wait_rolled_out(product, agent.release)
    old_name = old["metadata"]["name"]
    product.helm(
        "upgrade", agent.release, str(REPO / "charts" / "agent"), "--reuse-values",
        "--set", "probe.expectation.value=a word the fake never says",
    )  # fmt: skip

    def new_pod_failed_its_probe() -> Pod | None:
        for pod in pods_of(product, agent.release):
            if pod["metadata"]["name"] == old_name or not pod.get("status", {}).get("podIP"):
                continue
            try:
                status = probe_status(product, pod["metadata"]["name"])
            except Exception:  # noqa: BLE001 - the probe may not listen yet
                return None
            semantic = [h for h in status["history"] if h["check"] == "semantic"]
            if semantic and not semantic[0]["passed"]:
                return pod
        return None

    new = wait_for(new_pod_failed_its_probe, timeout=ROLLOUT_TIMEOUT, what="the new pod's check")
    assert not is_ready(product.json("get", "pod", new["metadata"]["name"]))
    # the old pod is still Ready and still answers tasks
    assert is_ready(product.json("get", "pod", old_name))
    answered = submit(product, f"pod/{old_name}", agent.release, "Say hello")
    assert answered["status"] == "succeeded"
    assert answered["worker"] == old_name
    product.helm("rollback", agent.release, "--wait", "--timeout", "4m")
    [restored] = wait_rolled_out(product, agent.release)
    assert template_hash(restored) == template_hash(old)
    assert (
        submit(product, f"deploy/{deployment(agent.release)}", agent.release, "Hi")["status"]
        == "succeeded"
    )


def test_a_prompt_upgrade_replaces_every_pod_and_tasks_run_under_the_new_prompt(
    product: Product, fake: str, tmp_path: Path
) -> None:
    agent = RESEARCH
    before = {template_hash(p) for p in wait_rolled_out(product, agent.release)}
    prompt = tmp_path / "prompt.txt"
    marker = f"You are the upgraded research assistant {time.time_ns()}."
    prompt.write_text(marker)
    product.helm(
        "upgrade", agent.release, str(REPO / "charts" / "agent"), "--reuse-values",
        "--set-file", f"systemPrompt={prompt}", "--wait", "--timeout", "4m",
    )  # fmt: skip
    try:
        after = wait_rolled_out(product, agent.release)
        assert len(after) == 2
        assert {template_hash(p) for p in after}.isdisjoint(before)
        question = f"What changed? {time.time_ns()}"
        answered = submit(product, f"deploy/{deployment(agent.release)}", agent.release, question)
        assert answered["status"] == "succeeded"
        records = httpx.get(f"{fake}/_fake/requests", timeout=30).json()["requests"]
        [asked] = [
            r for r in records if question in json.dumps(r["body"]) and r["path"] == "/v1/messages"
        ]
        assert marker in json.dumps(asked["body"]["system"])
    finally:
        product.helm("rollback", agent.release, "--wait", "--timeout", "4m")


# --- failover and the shared budget ---------------------------------------------------------------


def test_a_force_deleted_pod_mid_task_is_taken_over_and_the_result_written_once(
    product: Product, tmp_path: Path
) -> None:
    agent = RESEARCH
    pods = wait_rolled_out(product, agent.release)
    assert len(pods) == 2
    queued = product.kubectl(
        "exec", f"deploy/{deployment(agent.release)}", "-c", "runtime", "--",
        "kubeagents", "task", "submit", "--agent", agent.release, "--namespace", NAMESPACE,
        "--prompt", "Take 30 seconds to answer: who takes over?",
    )  # fmt: skip
    task_id = json.loads(queued)["id"]

    def running_on() -> str | None:
        result = task_result(product, agent.release, task_id)
        return str(result["worker"]) if result["status"] == "running" else None

    first = wait_for(running_on, timeout=60, what="the slow task to start")
    product.kubectl("delete", "pod", first, "--force", "--grace-period=0")

    def finished() -> Any:
        result = task_result(product, agent.release, task_id)
        return result if result["status"] in ("succeeded", "failed", "dead") else None

    result = wait_for(finished, timeout=180, what="the task to finish on another pod")
    assert result["status"] == "succeeded", result
    assert result["worker"] != first
    # taken over (a reclaim), not retried (a second attempt): one attempt, one final write
    assert (result["reclaims"], result["attempts"]) == (1, 1), result
    assert result["output"] == "After 30 seconds: who takes over?"
    with product.port_forward("svc/fake-anthropic", 8787, tmp_path) as fake:
        records = httpx.get(f"{fake}/_fake/requests", timeout=30).json()["requests"]
    asked = [r for r in records if "who takes over?" in json.dumps(r["body"])]
    assert len(asked) == 2  # the killed pod's call, then the one that answered


def test_two_replicas_share_one_budget_under_a_burst(
    product: Product, fake: str, tmp_path: Path
) -> None:
    """A third agent with 2 replicas, its own API key and a small token budget: a burst of tasks
    taken by both replicas gets no more billed by the fake than the budget, and the tasks past
    it fail on the budget."""
    release, key, budget, tasks = "budgeted", "sk-ant-local-budgeted", 1500, 16
    agent = f"budgeted-{secrets.token_hex(3)}"  # a fresh ledger: budgets roll over 24 hours
    product.kubectl("create", "secret", "generic", "budgeted-key", f"--from-literal=api-key={key}")
    product.helm(
        "install", release, str(REPO / "charts" / "agent"),
        "-f", str(SUMMARIZER.values), "-f", str(SUMMARIZER.local_values),
        "--set", f"agentName={agent}", "--set", "replicaCount=2",
        "--set", "apiKey.existingSecret=budgeted-key",
        "--set", f"budgets.tokensPerDay={budget}", "--set", "budgets.usdPerDay=null",
        "--set", "probe.intervalSeconds=3600",
        "--wait", "--timeout", "4m",
    )  # fmt: skip
    try:
        assert len(wait_rolled_out(product, release)) == 2
        forward = product.port_forward(f"deploy/{deployment(release)}", 8081, tmp_path)
        with forward as api, httpx.Client(base_url=api, timeout=30) as client:
            ids = [
                client.post(
                    "/v1/tasks",
                    json={"input": {"prompt": f"Summarize in one bullet point: burst {i}"}},
                ).json()["id"]
                for i in range(tasks)
            ]

            def settled(result: Any) -> bool:
                """Answered, or held back by the budget (the runtime retries it later)."""
                return bool(
                    result["status"] == "succeeded"
                    or (result["status"] != "running" and "budget" in result.get("error", ""))
                )

            def all_settled() -> list[Any] | None:
                results = [client.get(f"/v1/tasks/{task_id}").json() for task_id in ids]
                return results if all(settled(r) for r in results) else None

            results = wait_for(all_settled, timeout=300, what="every task of the burst to settle")
        billed = billed_tokens(fake, key)
        assert 0 < billed <= budget, billed
        answered = [r for r in results if r["status"] == "succeeded"]
        refused = [r for r in results if r["status"] != "succeeded"]
        assert answered
        assert refused, "the budget never bound: raise `tasks` or lower `budget`"
        assert all(f"token budget of agent {agent} exhausted" in r["error"] for r in refused)
    finally:
        product.helm("uninstall", release, "--wait")
        product.kubectl("delete", "secret", "budgeted-key")


# --- the team-run operator in-cluster -------------------------------------------------------------


def test_the_operator_runs_the_example_team_to_succeeded(product: Product) -> None:
    operator = product.json("get", "pods", "-l", "app.kubernetes.io/component=operator")["items"]
    assert operator
    assert all(is_ready(p) for p in operator)
    product.kubectl("apply", "-f", str(REPO / "examples" / "team.yaml"))
    name = product.kubectl("create", "-f", str(REPO / "examples" / "run.yaml"), "-o", "name")
    run = name.strip().split("/", 1)[1]
    product.kubectl(
        "wait", f"agentrun/{run}", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=300s",
        timeout=330,
    )  # fmt: skip
    listed = product.kubectl("get", "agentruns")
    assert re.search(rf"^{run}\s+research-then-summarize\s+Succeeded\s+4/4\s", listed, re.M), listed
    status = product.json("get", "agentrun", run)["status"]
    assert status["output"].startswith("# Report")
    assert status["steps"]["outline"]["data"] == {
        "sections": ["Summary", "Findings", "Open questions"]
    }
    assert status["usage"]["tokens"] > 0
