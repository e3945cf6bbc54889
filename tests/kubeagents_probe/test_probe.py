"""`kubeagents probe` as a real process next to a real proxy, redis-server and the fake upstream."""

from __future__ import annotations

import itertools
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness.mcp_servers import start_mcp_server
from harness.probe import KUBEAGENTS, ProbeProcess, StartProbe
from harness.processes import ManagedProcess, free_port, settings_env, wait_for
from harness.proxy import ProxyProcess, StartProxy, sdk
from harness.redis_servers import start_redis
from harness.runtime import StartRuntime
from kubeagents.fake_anthropic import FakeAnthropicControl, RecordedRequest, Reply

VALIDATOR_PROMPT = "Reply with exactly the word READY and nothing else."


def wait_ready(probe: ProbeProcess, *, timeout: float = 20) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        status, body = probe.get("/readyz")
        return body if status == 200 else None

    return wait_for(ready, timeout=timeout, what=f"{probe.process.name} to be Ready")


def wait_failing(
    probe: ProbeProcess, expected: dict[str, str], *, exactly: bool = False, timeout: float = 20
) -> dict[str, Any]:
    """Wait until /readyz answers 503 with every check of `expected` failing for its reason
    (and, when `exactly`, no other check failing); that body."""

    def failing() -> dict[str, Any] | None:
        status, body = probe.get("/readyz")
        reasons = {f["check"]: f["reason"] for f in body["failing"]}
        if exactly:
            matched = reasons == expected
        else:
            matched = all(reasons.get(check) == reason for check, reason in expected.items())
        return body if status == 503 and matched else None

    return wait_for(failing, timeout=timeout, what=f"{expected} to fail")


def validator_calls(fake: FakeAnthropicControl) -> list[RecordedRequest]:
    """The semantic (validator) model calls that reached the upstream."""
    return [
        request
        for request in fake.requests()
        if request.path == "/v1/messages"
        and request.body["messages"][0]["content"] == VALIDATOR_PROMPT
    ]


def metric(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(f"{name}{{{label_text}}}" if labels else name) + r" (\S+)"
    found = re.search(pattern, text)
    assert found, f"{name} {labels} not in the metrics"
    return float(found.group(1))


# --- the semantic check ----------------------------------------------------------------------


def test_correct_answers_make_the_pod_ready(
    start_probes: StartProbe, ready_fake: FakeAnthropicControl, proxy: ProxyProcess
) -> None:
    probe = start_probes()
    body = wait_ready(probe)
    assert body["failing"] == []
    assert set(body["checks"]) == {"semantic", "proxy", "key", "budget"}
    assert all(check["passing"] for check in body["checks"].values())

    status, history = probe.get("/status")
    assert status == 200
    semantic = [entry for entry in history["history"] if entry["check"] == "semantic"]
    assert semantic[0]["passed"] is True
    assert semantic[0]["excerpt"] == "READY"
    assert semantic[0]["tokens"] == 32  # the fake's scripted usage: 30 in, 2 out
    assert semantic[0]["by"] == "probe"

    metrics = probe.metrics()
    assert metric(metrics, "kubeagents_probe_ready") == 1
    assert metric(metrics, "kubeagents_probe_check_success", check="semantic") == 1
    assert metric(metrics, "kubeagents_probe_tokens_total", type="output") >= 2
    # the call was marked as a probe call, so the proxy counted it apart
    counted = proxy_metrics(proxy.admin_url)
    assert metric(counted, "kubeagents_proxy_probe_calls_total", outcome="ok") >= 1
    # the validator call went out with temperature 0 and the configured max_tokens
    first = validator_calls(ready_fake)[0].body
    assert first["temperature"] == 0
    assert first["max_tokens"] == 16


def proxy_metrics(admin_url: str) -> str:
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as response:  # noqa: S310
        text: str = response.read().decode()
        return text


def test_nonsense_fails_after_failure_threshold_and_recovers_after_success_threshold(
    start_probes: StartProbe, ready_fake: FakeAnthropicControl
) -> None:
    probe = start_probes(interval_seconds=1, failure_threshold=2, success_threshold=2)
    wait_ready(probe)

    ready_fake.set_default(Reply.with_text("////"))
    seen: list[tuple[bool, int]] = []

    def flipped() -> dict[str, Any] | None:
        semantic = probe.readiness()["checks"]["semantic"]
        seen.append((semantic["passing"], semantic["consecutive_failures"]))
        return semantic if not semantic["passing"] else None

    wait_for(flipped, timeout=20, what="the semantic check to fail")
    assert (True, 1) in seen, f"one failure must not flip the check: {seen}"
    assert all(passing for passing, failures in seen if failures < 2), seen
    body = wait_failing(probe, {"semantic": "unexpected_reply"})
    (failure,) = [f for f in body["failing"] if f["check"] == "semantic"]
    assert "READY" in failure["detail"]

    ready_fake.set_default(Reply.with_text("READY"))
    recovering: list[tuple[bool, int]] = []

    def recovered() -> dict[str, Any] | None:
        semantic = probe.readiness()["checks"]["semantic"]
        recovering.append((semantic["passing"], semantic["consecutive_successes"]))
        return semantic if semantic["passing"] else None

    wait_for(recovered, timeout=20, what="the semantic check to pass again")
    assert (False, 1) in recovering, f"one pass must not flip it back: {recovering}"
    assert all(not passing for passing, successes in recovering if successes < 2), recovering
    wait_ready(probe)


def test_judge_asks_a_grader_and_follows_its_verdict(
    start_probes: StartProbe, ready_fake: FakeAnthropicControl
) -> None:
    ready_fake.enqueue(
        Reply.with_text("Paris", input_tokens=20, output_tokens=1),
        Reply.with_text("PASS", input_tokens=60, output_tokens=1),
    )
    rubric = "The reply names the capital of France."
    passing = start_probes(
        name="judged", shared=False, interval_seconds=3600, expect="judge", expect_value=rubric
    )
    wait_ready(passing)
    grading = [r for r in ready_fake.requests() if r.path == "/v1/messages"][1].body
    assert rubric in grading["messages"][0]["content"]
    assert "Paris" in grading["messages"][0]["content"]
    assert "PASS" in grading["system"]
    entry = next(e for e in passing.get("/status")[1]["history"] if e["check"] == "semantic")
    assert entry["tokens"] == 82  # validator + grader
    assert (
        metric(passing.metrics(), "kubeagents_probe_model_calls_total", kind="judge", outcome="ok")
        == 1
    )

    ready_fake.enqueue(Reply.with_text("London"), Reply.with_text("FAIL"))
    failing = start_probes(
        name="misjudged", shared=False, interval_seconds=3600, expect="judge", expect_value=rubric
    )
    body = wait_failing(failing, {"semantic": "judge_failed"})
    assert "FAIL" in next(f["detail"] for f in body["failing"] if f["check"] == "semantic")


def test_a_reply_slower_than_the_timeout_is_a_failure(
    start_probes: StartProbe, ready_fake: FakeAnthropicControl
) -> None:
    ready_fake.set_default(Reply.with_text("READY", latency_ms=3000))
    probe = start_probes(shared=False, timeout_seconds=1, interval_seconds=3600)
    body = wait_failing(probe, {"semantic": "timeout"})
    assert body["ready"] is False


# --- the path checks -------------------------------------------------------------------------


def test_proxy_down_makes_the_pod_not_ready(start_probes: StartProbe, proxy: ProxyProcess) -> None:
    probe = start_probes(failure_threshold=1)
    wait_ready(probe)
    proxy.stop()
    wait_failing(probe, {"proxy": "proxy_unreachable", "key": "proxy_unreachable"})


def test_a_rejected_key_makes_the_pod_not_ready(
    tmp_path: Path, start_proxies: StartProxy, redis_url: str, start_probes: StartProbe
) -> None:
    # an upstream that accepts only another key than the one the proxy holds
    strict = ManagedProcess(
        "strict-fake",
        [str(KUBEAGENTS), "fake-anthropic", "--port", "0", "--api-key", "sk-ant-another-key"],
        tmp_path / "strict-fake.log",
    )
    try:
        upstream = strict.wait_for_log(r"listening on (http://\S+)", timeout=30).group(1)
        proxy = start_proxies(name="proxy-with-revoked-key", upstream_url=upstream)
        probe = start_probes(proxy_url=proxy.url, proxy_admin_url=proxy.admin_url)
        rejected = {"semantic": "key_rejected", "key": "key_rejected"}
        body = wait_failing(probe, rejected, exactly=True)
        assert body["checks"]["proxy"]["passing"] is True  # the proxy itself is fine
    finally:
        strict.stop()


def test_an_exhausted_budget_makes_the_pod_not_ready(
    start_proxies: StartProxy,
    redis_url: str,
    start_probes: StartProbe,
    ready_fake: FakeAnthropicControl,
) -> None:
    proxy = start_proxies(name="small-budget-proxy", redis_url=redis_url, budget_tokens_per_day=500)
    # one call whose real usage (scripted by the fake) spends more than the whole budget
    ready_fake.enqueue(Reply.with_text("big", input_tokens=600, output_tokens=1))
    sdk(proxy).messages.create(
        model="claude-sonnet-5-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    probe = start_probes(proxy_url=proxy.url, proxy_admin_url=proxy.admin_url)
    exhausted = {"budget": "budget_exhausted", "semantic": "budget_exhausted"}
    body = wait_failing(probe, exhausted, exactly=True)
    detail = next(f["detail"] for f in body["failing"] if f["check"] == "budget")
    assert "tokens budget of agent research exhausted" in detail


# --- the MCP check: the runtime's view of its servers -----------------------------------------


def test_mcp_servers_up_then_one_dying_makes_the_pod_not_ready_naming_it(
    tmp_path: Path, start_probes: StartProbe, start_runtimes: StartRuntime
) -> None:
    """Both servers up (one of them speaks only the handshake-free revision, which the probe's
    former hand-written client refused) -> ready; one dies -> NotReady, naming it and why."""
    tools = start_mcp_server(tmp_path / "tools")
    modern = start_mcp_server(tmp_path / "modern", name="modern", no_handshake=True)
    try:
        runtime = start_runtimes(
            mcp_servers=[
                {"name": "tools", "transport": "http", "url": tools.url},
                {"name": "modern", "transport": "http", "url": modern.url, "timeoutSeconds": 2},
            ]
        )
        probe = start_probes(
            check_mcp=True, runtime_status_url=f"{runtime.url}/status", failure_threshold=1
        )
        body = wait_ready(probe)
        assert body["checks"]["mcp"]["passing"] is True
        assert set(body["checks"]) == {"semantic", "proxy", "key", "budget", "mcp"}

        modern.process.kill()
        body = wait_failing(probe, {"mcp": "mcp_server_down"}, exactly=True)
        [failure] = body["failing"]
        assert failure["detail"].startswith("modern: ")
        assert re.match(r"modern: (unreachable|disconnected) \(", failure["detail"])
    finally:
        modern.stop()
        tools.stop()


def test_one_of_two_mcp_servers_down_makes_the_pod_not_ready(
    tmp_path: Path, start_probes: StartProbe, start_runtimes: StartRuntime
) -> None:
    server = start_mcp_server(tmp_path / "mcp")
    try:
        servers = [
            {"name": "tools", "transport": "http", "url": server.url},
            {"name": "search", "transport": "http", "url": f"http://127.0.0.1:{free_port()}/mcp"},
        ]
        runtime = start_runtimes(mcp_servers=servers)
        probe = start_probes(check_mcp=True, runtime_status_url=f"{runtime.url}/status")
        body = wait_failing(probe, {"mcp": "mcp_server_down"}, exactly=True)
        detail = body["failing"][0]["detail"]
        assert detail.startswith("search: unreachable (MCP server 'search' unavailable")
        assert body["checks"]["semantic"]["passing"] is True
    finally:
        server.stop()


def test_a_runtime_that_does_not_answer_makes_the_mcp_check_fail_with_the_reason(
    start_probes: StartProbe,
) -> None:
    status_url = f"http://127.0.0.1:{free_port()}/status"
    probe = start_probes(check_mcp=True, runtime_status_url=status_url)
    body = wait_failing(probe, {"mcp": "runtime_unreachable"}, exactly=True)
    assert body["failing"][0]["detail"].startswith(status_url)


def test_without_check_mcp_the_probe_neither_checks_nor_needs_a_runtime(
    start_probes: StartProbe,
) -> None:
    probe = start_probes(runtime_status_url=f"http://127.0.0.1:{free_port()}/status")
    assert "mcp" not in wait_ready(probe)["checks"]


# --- cost bound ------------------------------------------------------------------------------


def test_three_pods_of_one_agent_make_one_semantic_call_per_interval(
    start_probes: StartProbe, ready_fake: FakeAnthropicControl
) -> None:
    interval = 2.0
    probes = [start_probes(name=f"pod-{i}", interval_seconds=interval) for i in range(3)]
    for probe in probes:
        wait_ready(probe)
    started = time.time()
    wait_for(
        lambda: len([c for c in validator_calls(ready_fake) if c.received_at > started]) >= 4,
        timeout=6 * interval,
        what="four more intervals of semantic calls",
    )
    calls = sorted(call.received_at for call in validator_calls(ready_fake))
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert min(gaps) >= interval - 0.05, f"two semantic calls within one interval: {gaps}"

    def one_shared_verdict() -> list[dict[str, Any]] | None:
        # Read one after the other, the pods can straddle the moment a new verdict lands:
        # poll until a read of all three falls inside one interval.
        verdicts = [probe.readiness()["checks"]["semantic"] for probe in probes]
        return verdicts if len({v["by"] for v in verdicts}) == 1 else None

    verdicts = wait_for(one_shared_verdict, timeout=4 * interval, what="one shared verdict")
    assert all(v["passing"] for v in verdicts)


def test_pods_whose_checks_differ_keep_their_own_verdicts(
    start_probes: StartProbe, ready_fake: FakeAnthropicControl
) -> None:
    """A rollout that changes the check (here its expectation): the new pod neither borrows the
    old pods' passing verdict nor turns them NotReady with its failing one."""
    interval = 2.0
    old = start_probes(name="old-pod", interval_seconds=interval)
    wait_ready(old)
    new = start_probes(
        name="new-pod", interval_seconds=interval, expect_value="a word the model never says"
    )
    body = wait_failing(new, {"semantic": "unexpected_reply"})
    assert body["checks"]["semantic"]["by"] == "new-pod"
    # several intervals later the old pod still holds its own passing verdict
    started = time.time()
    wait_for(
        lambda: len([c for c in validator_calls(ready_fake) if c.received_at > started]) >= 4,
        timeout=6 * interval,
        what="both checks to run again",
    )
    assert old.get("/readyz")[0] == 200
    assert old.readiness()["checks"]["semantic"]["by"] == "old-pod"
    assert new.get("/readyz")[0] == 503


@pytest.mark.timeout(150)
def test_polling_readyz_at_10_hz_for_a_minute_makes_no_model_call(
    start_probes: StartProbe, ready_fake: FakeAnthropicControl
) -> None:
    probe = start_probes(interval_seconds=3600)
    wait_ready(probe)
    before = len(validator_calls(ready_fake))
    assert before == 1
    statuses = set()
    next_poll = time.monotonic()
    for _ in range(600):  # 10 Hz for 60 s: the kubelet's worst case, paced, not a sync sleep
        statuses.add(probe.get("/readyz")[0])
        next_poll += 0.1
        time.sleep(max(0.0, next_poll - time.monotonic()))
    assert statuses == {200}
    assert len(validator_calls(ready_fake)) == before
    assert [r for r in ready_fake.requests() if r.path == "/v1/messages"] == validator_calls(
        ready_fake
    )


def test_a_verdict_older_than_its_ttl_counts_as_unknown(
    tmp_path: Path, start_probes: StartProbe
) -> None:
    own_redis = start_redis(tmp_path / "redis")
    try:
        probe = start_probes(redis_url=own_redis.url, interval_seconds=1, verdict_ttl_seconds=3)
        wait_ready(probe)
        own_redis.stop()  # nobody can publish a verdict any more
        body = wait_failing(probe, {"semantic": "verdict_stale"}, timeout=15)
        detail = next(f["detail"] for f in body["failing"] if f["check"] == "semantic")
        assert "shared verdict unavailable" in detail
    finally:
        own_redis.stop()


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ({"KUBEAGENTS_PROBE_EXPECT": "similar"}, "expect: Input should be 'exact', 'contains'"),
        (
            {"KUBEAGENTS_PROBE_EXPECT": "regex", "KUBEAGENTS_PROBE_EXPECT_VALUE": "READY("},
            "expect_value: Value error, not a valid regex",
        ),
        (
            {"KUBEAGENTS_PROBE_EXPECT": "jsonSchema", "KUBEAGENTS_PROBE_EXPECT_VALUE": "{"},
            "expect_value: Value error, the JSON schema is not JSON",
        ),
        (
            {
                "KUBEAGENTS_PROBE_EXPECT": "jsonSchema",
                "KUBEAGENTS_PROBE_EXPECT_VALUE": '{"type": "nonsense"}',
            },
            "expect_value: Value error, not a valid JSON schema",
        ),
        ({"KUBEAGENTS_PROBE_SHARED": "true"}, "redis_url is required when shared is true"),
    ],
)
def test_bad_configuration_stops_the_probe_with_the_setting_named(
    setting: dict[str, str], problem: str
) -> None:
    env = settings_env(
        "KUBEAGENTS_PROBE_", {"agent": "research", "model": "claude-haiku-4-5", "shared": False}
    )
    env.update(setting)
    done = subprocess.run(
        [str(KUBEAGENTS), "probe"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("kubeagents probe: invalid configuration: ")
    assert problem in done.stderr
