"""`kubeagents operator` on a real kube-apiserver with two real agents and the fake upstream:
the diamond team runs to `Succeeded` from `kubectl create`, its status, printer columns,
condition and Events show it; a run of an invalid team fails at once naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import redis

from harness.agents import StartAgents
from harness.controlplane import ControlPlane
from harness.processes import ManagedProcess, wait_for
from harness.runtime import model_calls
from harness.teams import DIAMOND, RUN, SECTIONS, StartOperator, apply, get, run_status, step_phases
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply

TEAM = DIAMOND


def test_the_diamond_team_runs_to_succeeded_from_kubectl(
    cluster: ControlPlane,
    namespace: str,
    operator: ManagedProcess,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    fake_anthropic.enqueue(
        Reply.with_text("the facts", input_tokens=30, output_tokens=10),
        Reply.with_text(SECTIONS, input_tokens=30, output_tokens=10, times=2),
        Reply.with_text("the report", input_tokens=30, output_tokens=10),
    )
    apply(cluster, namespace, TEAM, tmp_path)
    team = wait_for(
        lambda: (t := get(cluster, namespace, "agentteam", "research-then-summarize"))
        .get("status", {}).get("conditions") and t,
        timeout=30,
        what="the team's Valid condition",
    )  # fmt: skip
    assert team["status"]["conditions"][0]["status"] == "True", team["status"]
    apply(cluster, namespace, RUN, tmp_path)
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=90s", "agentrun/report-1"
    )
    run = get(cluster, namespace, "agentrun", "report-1")
    status = run["status"]
    assert (status["phase"], status["output"], status["progress"]) == (
        "Succeeded", "the report", "4/4"
    )  # fmt: skip
    assert status["steps"]["outline"]["data"] == {"sections": ["intro", "risks"]}
    assert status["steps"]["research"]["output"] == "the facts"
    assert status["usage"]["tokens"] == 4 * 40
    prompts = [str(call.body["messages"][0]["content"]) for call in model_calls(fake_anthropic)]
    assert prompts[0] == "Research AI in healthcare"
    assert prompts[3] == f'Write ["intro","risks"], fixing: {SECTIONS}'
    table = cluster.kubectl("get", "-n", namespace, "agentruns").stdout.splitlines()
    assert table[0].split() == ["NAME", "TEAM", "PHASE", "STEPS", "TOKENS", "COST", "AGE"]
    assert table[1].split()[:5] == [
        "report-1",
        "research-then-summarize",
        "Succeeded",
        "4/4",
        "160",
    ]
    assert float(status["usage"]["cost"].lstrip("$")) > 0  # what the proxies metered
    step_costs = [float(step["cost"].lstrip("$")) for step in status["steps"].values()]
    assert all(cost > 0 for cost in step_costs)  # each step metered apart, by the proxies
    assert abs(sum(step_costs) - float(status["usage"]["cost"].lstrip("$"))) < 0.0003
    port = operator.wait_for_log(r"metrics on port (\d+)", timeout=5).group(1)
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert (
        'kubeagents_operator_runs_total{phase="Succeeded",team="research-then-summarize"} 1.0'
        in metrics
    )
    assert 'kubeagents_operator_steps_total{phase="Succeeded"} 4.0' in metrics
    assert "kubeagents_operator_dispatch_latency_seconds_count 2.0" in metrics
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=report-1",
        "-o", "jsonpath={.items[*].reason}",
    ).stdout.split()  # fmt: skip
    assert events.count("StepSucceeded") == 4


def test_a_run_whose_input_does_not_match_the_schema_fails_naming_the_key(
    cluster: ControlPlane, namespace: str, operator: ManagedProcess, tmp_path: Path
) -> None:
    apply(cluster, namespace, TEAM, tmp_path)
    apply(
        cluster,
        namespace,
        {**RUN, "spec": {"team": TEAM["metadata"]["name"], "input": {}}},
        tmp_path,
    )
    status = wait_for(
        lambda: (
            get(cluster, namespace, "agentrun", "report-1").get("status", {}).get("phase")
            and get(cluster, namespace, "agentrun", "report-1")["status"]
        ),
        timeout=30,
        what="the run to be judged",
    )
    assert status["phase"] == "Failed"
    assert status["message"] == "spec.input: at (root): 'topic' is a required property"


def test_a_killed_operator_resumes_the_run_and_no_step_runs_twice(
    cluster: ControlPlane,
    namespace: str,
    start_operator: StartOperator,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    first = start_operator()
    fake_anthropic.enqueue(
        Reply.with_text("the facts", input_tokens=30, output_tokens=10),
        Reply.with_text(SECTIONS, input_tokens=30, output_tokens=10, latency_ms=3000, times=2),
        Reply.with_text("the report", input_tokens=30, output_tokens=10),
    )
    apply(cluster, namespace, TEAM, tmp_path)
    apply(cluster, namespace, RUN, tmp_path)
    wait_for(
        lambda: step_phases(cluster, namespace, "report-1").get("outline") == "Running",
        timeout=60,
        what="the middle steps to run",
    )
    first.kill()  # kill -9, mid-run
    start_operator()
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=90s", "agentrun/report-1"
    )
    prompts = [str(call.body["messages"][0]["content"]) for call in model_calls(fake_anthropic)]
    assert len(prompts) == 4, prompts  # each step's prompt exactly once
    assert len(set(prompts)) == 4, prompts
    assert run_status(cluster, namespace, "report-1")["output"] == "the report"


def start_slow_diamond(
    cluster: ControlPlane, namespace: str, fake_anthropic: FakeAnthropicControl, tmp: Path
) -> None:
    """The diamond's run `report-1`, once its first step is running a slow model call: in
    flight while the test cancels the run, long enough for the operator to see the cancel (a
    watch event, milliseconds) before this answer could free the next steps."""
    fake_anthropic.enqueue(
        Reply.with_text("the facts", input_tokens=30, output_tokens=10, latency_ms=10_000),
    )
    apply(cluster, namespace, TEAM, tmp)
    apply(cluster, namespace, RUN, tmp)
    wait_for(
        lambda: step_phases(cluster, namespace, "report-1").get("research") == "Running",
        timeout=60,
        what="the first step to run",
    )


def test_cancel_through_the_spec_stops_the_run(
    cluster: ControlPlane,
    namespace: str,
    operator: ManagedProcess,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    start_slow_diamond(cluster, namespace, fake_anthropic, tmp_path)
    cluster.kubectl(
        "patch", "-n", namespace, "agentrun", "report-1", "--type", "merge",
        "-p", '{"spec": {"cancel": true}}',
    )  # fmt: skip
    wait_for(
        lambda: run_status(cluster, namespace, "report-1").get("phase") == "Cancelled",
        timeout=60,
        what="the run to be cancelled",
    )
    phases = step_phases(cluster, namespace, "report-1")
    assert phases["summarize"] == "Skipped"
    # The call in flight when the run was cancelled finishes; none follows it.
    wait_for(
        lambda: all(r.finished for r in model_calls(fake_anthropic)),
        timeout=30,
        what="the call in flight to finish",
    )
    assert len(model_calls(fake_anthropic)) == 1


def test_an_output_that_never_matches_its_schema_fails_the_step_and_the_run(
    cluster: ControlPlane,
    namespace: str,
    operator: ManagedProcess,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    team = json.loads(json.dumps(TEAM))
    team["spec"]["steps"][2]["maxAttempts"] = 2
    fake_anthropic.enqueue(
        Reply.with_text("the facts", input_tokens=30, output_tokens=10),
        Reply.with_text("no json here", input_tokens=30, output_tokens=10, times=4),
    )
    apply(cluster, namespace, team, tmp_path)
    apply(cluster, namespace, RUN, tmp_path)
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Failed", "--timeout=90s", "agentrun/report-1"
    )
    status = run_status(cluster, namespace, "report-1")
    outline = status["steps"]["outline"]
    assert (outline["phase"], outline["attempts"]) == ("Failed", 2)
    assert outline["message"] == "OutputInvalid: the output holds no JSON value (fenced or not)"
    assert status["message"].startswith("step outline failed: OutputInvalid")
    assert status["steps"]["summarize"]["phase"] == "Skipped"
    retry = [
        str(call.body["messages"][0]["content"])
        for call in model_calls(fake_anthropic)
        if "Outline" in str(call.body["messages"][0]["content"])
    ]
    assert len(retry) == 2
    assert "Your previous answer was rejected: the output holds no JSON value" in retry[1]


def test_the_run_budget_holds_across_both_agents_and_fails_the_run(
    cluster: ControlPlane,
    namespace: str,
    operator: ManagedProcess,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    team = json.loads(json.dumps(TEAM))
    team["spec"]["budget"] = {"tokens": 600}
    # About 220 tokens a call: the first step fits the run's budget, the two parallel ones
    # (one on each agent) cannot both fit what is left.
    fake_anthropic.set_default(Reply.with_text(SECTIONS, output_tokens=200))
    apply(cluster, namespace, team, tmp_path)
    apply(cluster, namespace, RUN, tmp_path)
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Failed", "--timeout=90s", "agentrun/report-1"
    )
    status = run_status(cluster, namespace, "report-1")
    assert "BudgetExceeded" in status["message"], status
    assert fake_anthropic.bill().total_tokens <= 600  # the upstream's own bill


def test_deleting_a_running_run_stops_its_tasks(
    cluster: ControlPlane,
    namespace: str,
    operator: ManagedProcess,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
    tmp_path: Path,
) -> None:
    agents = start_agents(namespace)
    start_slow_diamond(cluster, namespace, fake_anthropic, tmp_path)
    uid = get(cluster, namespace, "agentrun", "report-1")["metadata"]["uid"]
    cluster.kubectl("delete", "-n", namespace, "agentrun", "report-1", "--wait=false")
    with redis.Redis.from_url(redis_url) as client:
        mark = f"kubeagents:{{{namespace}/research}}:cancelled:report-1.{uid[:8]}"
        wait_for(lambda: client.exists(mark), timeout=30, what="the cancel mark")
    runtime = agents["research"][1]
    task = runtime.wait_final(f"{uid.replace('-', '')}.research.1", timeout=60)
    assert task["status"] == "succeeded"  # the call in flight finishes; nothing follows it
    assert len(model_calls(fake_anthropic)) == 1


def test_a_run_past_its_timeout_fails_and_its_tasks_stop(
    cluster: ControlPlane,
    namespace: str,
    operator: ManagedProcess,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    team = json.loads(json.dumps(TEAM))
    team["spec"]["timeoutSeconds"] = 2
    fake_anthropic.enqueue(
        Reply.with_text("the facts", input_tokens=30, output_tokens=10, latency_ms=10_000),
    )
    apply(cluster, namespace, team, tmp_path)
    apply(cluster, namespace, RUN, tmp_path)
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Failed", "--timeout=60s", "agentrun/report-1"
    )
    status = run_status(cluster, namespace, "report-1")
    assert status["conditions"][0]["reason"] == "Timeout"
    assert status["message"] == "the run took longer than its timeoutSeconds (2)"
    assert status["steps"]["summarize"]["phase"] == "Skipped"
