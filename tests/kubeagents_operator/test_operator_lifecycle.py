"""The operator over time, on a real kube-apiserver with real agents and the fake upstream:
`resumeFrom` runs only what is missing; schedules create runs with CronJob's semantics and an
operator restart never fires one twice; of two replicas only the Lease holder drives runs and
the other takes over when it dies; a step waits in the queue of an agent whose probe fails, and
says why."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

from harness.agents import StartAgents
from harness.controlplane import ControlPlane
from harness.probe import start_probe
from harness.processes import HarnessError, wait_for
from harness.proxy import StartProxy
from harness.runtime import model_calls, start_runtime
from harness.teams import (
    DIAMOND,
    INPUT,
    ONE_STEP,
    RUN,
    SECTIONS,
    StartOperator,
    apply,
    get,
    run_of,
    run_status,
)
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply


def prompts(fake: FakeAnthropicControl, since: int = 0) -> list[str]:
    return [str(call.body["messages"][0]["content"]) for call in model_calls(fake)[since:]]


def wait_phase(cluster: ControlPlane, namespace: str, run: str, phase: str) -> dict[str, Any]:
    condition = "Succeeded" if phase == "Succeeded" else phase
    cluster.kubectl(
        "wait", "-n", namespace, f"--for=condition={condition}", "--timeout=90s", f"agentrun/{run}"
    )
    return run_status(cluster, namespace, run)


def scheduled_runs(cluster: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl(
            "get", "-n", namespace, "agentruns", "-l", "kubeagents.io/scheduled=true", "-o", "json"
        ).stdout
    )["items"]
    return items


def team_status(cluster: ControlPlane, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = get(cluster, namespace, "agentteam", "one-step").get("status", {})
    return status


def team_events(cluster: ControlPlane, namespace: str, team: str) -> list[str]:
    return cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector",
        f"involvedObject.name={team},involvedObject.kind=AgentTeam",
        "-o", "jsonpath={.items[*].reason}",
    ).stdout.split()  # fmt: skip


def test_resume_from_a_failed_run_runs_only_the_steps_that_did_not_succeed(
    cluster: ControlPlane,
    namespace: str,
    start_operator: StartOperator,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    start_operator()
    fake_anthropic.enqueue(Reply.with_text("the facts", input_tokens=30, output_tokens=10))
    fake_anthropic.set_default(Reply.with_text("no json here", input_tokens=30, output_tokens=10))
    apply(cluster, namespace, DIAMOND, tmp_path)
    apply(cluster, namespace, RUN, tmp_path)
    failed = wait_phase(cluster, namespace, "report-1", "Failed")
    assert failed["steps"]["outline"]["phase"] == "Failed"
    succeeded = {name for name, step in failed["steps"].items() if step["phase"] == "Succeeded"}
    assert "research" in succeeded
    seen = len(model_calls(fake_anthropic))

    fake_anthropic.set_default(Reply.with_text(SECTIONS, input_tokens=30, output_tokens=10))
    apply(cluster, namespace, run_of(DIAMOND, "report-2", resumeFrom="report-1"), tmp_path)
    resumed = wait_phase(cluster, namespace, "report-2", "Succeeded")
    again = prompts(fake_anthropic, since=seen)
    rerun = {"research", "critique", "outline", "summarize"} - succeeded
    assert len(again) == len(rerun), again  # the succeeded steps were not paid for again
    assert not any(prompt.startswith("Research") for prompt in again)
    assert resumed["input"] == INPUT  # taken over from report-1
    for step in succeeded:
        assert resumed["steps"][step]["reusedFrom"] == "report-1"
        assert resumed["steps"][step]["output"] == failed["steps"][step]["output"]
    assert resumed["usage"]["tokens"] == 40 * len(rerun)
    assert resumed["output"] == SECTIONS


def test_resume_from_a_run_of_another_team_or_with_another_input_fails_naming_why(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    fake_anthropic.set_default(Reply.with_text("READY"))
    apply(cluster, namespace, ONE_STEP, tmp_path)
    apply(cluster, namespace, DIAMOND, tmp_path)
    apply(cluster, namespace, run_of(ONE_STEP, "first", input={"topic": "a"}), tmp_path)
    wait_phase(cluster, namespace, "first", "Succeeded")
    apply(cluster, namespace, run_of(DIAMOND, "other-team", resumeFrom="first"), tmp_path)
    apply(
        cluster, namespace, run_of(ONE_STEP, "other-input", input={"topic": "b"},
                                   resumeFrom="first"), tmp_path,
    )  # fmt: skip
    other_team = wait_phase(cluster, namespace, "other-team", "Failed")
    assert other_team["conditions"][0]["reason"] == "InvalidResume"
    assert other_team["message"] == (
        "spec.resumeFrom: run first is a run of team one-step, not of research-then-summarize"
    )
    other_input = wait_phase(cluster, namespace, "other-input", "Failed")
    assert other_input["message"].startswith("spec.input differs from the input of run first")


def test_a_schedule_creates_runs_honours_forbid_and_prunes_history(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    # The first run is slow: the schedule fires meanwhile and must skip (Forbid).
    fake_anthropic.enqueue(Reply.with_text("slow", latency_ms=6000))
    fake_anthropic.set_default(Reply.with_text("quick"))
    team = json.loads(json.dumps(ONE_STEP))
    team["spec"]["schedule"] = {
        "intervalSeconds": 1, "concurrencyPolicy": "Forbid", "input": {"topic": "news"},
    }  # fmt: skip
    team["spec"]["runsHistoryLimit"] = {"succeeded": 1, "failed": 1}
    apply(cluster, namespace, team, tmp_path)
    first = wait_for(
        lambda: scheduled_runs(cluster, namespace) or None,
        timeout=60,
        what="the first scheduled run",
    )[0]["metadata"]["name"]

    def skipped_while_the_first_runs() -> bool:
        runs = scheduled_runs(cluster, namespace)
        names = [run["metadata"]["name"] for run in runs]
        if run_status(cluster, namespace, first).get("phase") in ("Running", None) and names != [
            first
        ]:
            raise HarnessError(f"a second run while {first} runs, despite Forbid: {names}")
        return "ScheduleSkipped" in team_events(cluster, namespace, "one-step")

    wait_for(skipped_while_the_first_runs, timeout=60, what="a skipped schedule time")
    assert run_status(cluster, namespace, first).get("phase") in ("Running", "Succeeded")

    def history_pruned() -> bool:
        created = team_events(cluster, namespace, "one-step").count("ScheduledRun")
        phases = [
            (run.get("status") or {}).get("phase") for run in scheduled_runs(cluster, namespace)
        ]
        names = [run["metadata"]["name"] for run in scheduled_runs(cluster, namespace)]
        return created >= 4 and phases.count("Succeeded") <= 1 and first not in names

    wait_for(history_pruned, timeout=90, what="runs created and the history pruned to 1")
    found = get(cluster, namespace, "agentteam", "one-step")
    assert found["status"]["lastScheduleTime"]
    assert found["status"]["lastRun"]["name"].startswith("one-step-")
    table = cluster.kubectl("get", "-n", namespace, "agentteams").stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "STEPS", "SCHEDULE", "LAST", "RUN"]
    assert table[1].split()[:3] == ["one-step", "1", "@every"]


def test_an_operator_restart_never_fires_a_schedule_time_twice(
    cluster: ControlPlane,
    namespace: str,
    start_operator: StartOperator,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    fake_anthropic.set_default(Reply.with_text("quick"))
    interval = 3
    team = json.loads(json.dumps(ONE_STEP))
    team["spec"]["schedule"] = {"intervalSeconds": interval, "input": {"topic": "news"}}
    first = start_operator()
    apply(cluster, namespace, team, tmp_path)
    wait_for(lambda: scheduled_runs(cluster, namespace) or None, timeout=60, what="a scheduled run")
    first.kill()  # kill -9, right after a time fired
    before = {run["metadata"]["name"] for run in scheduled_runs(cluster, namespace)}
    last_before = max(slot(run) for run in scheduled_runs(cluster, namespace))
    # Let two schedule times pass while no operator runs (the clock is what is awaited).
    down_until = time.time() + 2 * interval + 0.5
    wait_for(lambda: time.time() > down_until, timeout=3 * interval, what="two missed times")
    restarted_at = datetime.datetime.now(datetime.UTC)
    start_operator()
    wait_for(
        lambda: len(scheduled_runs(cluster, namespace)) >= len(before) + 2,
        timeout=60,
        what="the schedule to go on after the restart",
    )
    slots = sorted(slot(run) for run in scheduled_runs(cluster, namespace))
    assert len(slots) == len(set(slots))  # no time fired twice
    after = [at for at in slots if at > last_before]
    # The times missed while down were not replayed: the first run after the restart is for
    # the latest time due when it looked (at or after the restart).
    assert after[0] - last_before >= datetime.timedelta(seconds=2 * interval), slots
    assert after[0] > restarted_at - datetime.timedelta(seconds=interval), slots


def slot(run: dict[str, Any]) -> datetime.datetime:
    text = run["metadata"]["annotations"]["kubeagents.io/scheduled-at"]
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_of_two_replicas_only_the_lease_holder_drives_and_the_other_takes_over(
    cluster: ControlPlane,
    namespace: str,
    start_operator: StartOperator,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    fake_anthropic.set_default(Reply.with_text("READY"))
    lease = {"leader_election": True, "lease_namespace": namespace, "lease_duration_seconds": 6}
    leader = start_operator(identity="replica-a", **lease)
    standby = start_operator(
        ready_log=r"waiting for the Lease \S+ held by replica-a", identity="replica-b", **lease
    )
    apply(cluster, namespace, ONE_STEP, tmp_path)
    apply(cluster, namespace, run_of(ONE_STEP, "one", input={"topic": "first"}), tmp_path)
    wait_phase(cluster, namespace, "one", "Succeeded")
    assert "kubeagents operator watching" not in standby.log_text()
    holder = get(cluster, namespace, "lease", "kubeagents-operator")["spec"]["holderIdentity"]
    assert holder == "replica-a"

    leader.kill()  # kill -9: the Lease is not released, it expires
    standby.wait_for_log(r"kubeagents operator watching", timeout=60)
    apply(cluster, namespace, run_of(ONE_STEP, "two", input={"topic": "second"}), tmp_path)
    wait_phase(cluster, namespace, "two", "Succeeded")
    assert prompts(fake_anthropic) == ["Research first", "Research second"]  # once each
    lease_after = get(cluster, namespace, "lease", "kubeagents-operator")["spec"]
    assert (lease_after["holderIdentity"], lease_after["leaseTransitions"]) == ("replica-b", 1)


def test_a_step_waits_in_the_queue_of_an_agent_whose_probe_fails_and_says_why(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    start_proxies: StartProxy,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
    tmp_path: Path,
) -> None:
    fake_anthropic.set_default(Reply.with_text("////"))  # the probe's validator fails
    proxy = start_proxies("proxy-research", agent="research", namespace=namespace,
                          redis_url=redis_url, budget_tokens_per_day=10**7)  # fmt: skip
    probe = start_probe(
        tmp_path / "probe",
        proxy_url=proxy.url,
        proxy_admin_url=proxy.admin_url,
        settings={"redis_url": redis_url, "namespace": namespace, "interval_seconds": 1,
                  "path_interval_seconds": 0.5},
    )  # fmt: skip
    runtime = start_runtime(
        tmp_path / "runtime",
        proxy_url=proxy.url,
        redis_url=redis_url,
        settings={"agent": "research", "namespace": namespace, "max_tokens": 200,
                  "readiness_url": probe.url + "/readyz", "readiness_poll_seconds": 0.2},
        name="runtime-research",
    )  # fmt: skip
    try:
        apply(cluster, namespace, ONE_STEP, tmp_path)
        apply(cluster, namespace, run_of(ONE_STEP, "held", input={"topic": "x"}), tmp_path)
        held = wait_for(
            lambda: (step := run_status(cluster, namespace, "held").get("steps", {})
                     .get("research", {})).get("message", "").startswith(
                         "queued: agent research is not Ready: its semantic probe") and step,
            timeout=60,
            what="the step to say why it waits",
        )  # fmt: skip
        assert held["phase"] == "Running"
        assert run_status(cluster, namespace, "held")["phase"] == "Running"
        team = wait_for(
            lambda: team_status(cluster, namespace).get("agents"),
            timeout=60,
            what="the team's agents status",
        )  # fmt: skip
        assert team["researcher"]["ready"] is False
        assert team["researcher"]["message"].startswith(
            f"no Deployment labelled kubeagents.io/agent=research in {namespace}"
        )
        describe = cluster.kubectl("describe", "-n", namespace, "agentteam", "one-step").stdout
        assert "no Deployment labelled kubeagents.io/agent=research" in describe

        fake_anthropic.set_default(Reply.with_text("READY"))  # the probe passes, the step runs
        done = wait_phase(cluster, namespace, "held", "Succeeded")
        assert done["output"] == "READY"
        assert "message" not in done["steps"]["research"]
    finally:
        runtime.stop()
        probe.stop()


def test_a_run_is_one_trace_continued_by_the_runtime_and_the_proxy(
    cluster: ControlPlane,
    namespace: str,
    start_operator: StartOperator,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    agents = start_agents(namespace)
    operator = start_operator(extra_env={"OTEL_TRACES_EXPORTER": "console"})
    fake_anthropic.set_default(Reply.with_text(SECTIONS))
    apply(cluster, namespace, DIAMOND, tmp_path)
    apply(cluster, namespace, RUN, tmp_path)
    status = wait_phase(cluster, namespace, "report-1", "Succeeded")
    uid = get(cluster, namespace, "agentrun", "report-1")["metadata"]["uid"]
    trace_id = uid.replace("-", "")
    for step, entry in status["steps"].items():
        runtime = agents[entry["agent"]][1]
        assert runtime.task(entry["taskId"])["trace_id"] == trace_id, step
        assert entry["startTime"] <= entry["completionTime"]
    for call in model_calls(fake_anthropic):
        assert call.headers["traceparent"].split("-")[1] == trace_id  # through the proxy
    wait_for(
        lambda: operator.log_text().count(f'"trace_id": "0x{trace_id}"') >= 5,
        timeout=30,
        what="the run's spans in the operator's log",
    )
    spans = operator.log_text()
    assert '"name": "invoke_workflow research-then-summarize"' in spans
    for step in ("research", "critique", "outline", "summarize"):
        assert f'"name": "step {step}"' in spans


def test_a_team_with_a_cycle_is_not_valid_naming_the_cycle_and_its_runs_fail_at_once(
    cluster: ControlPlane, namespace: str, operator: Any, tmp_path: Path
) -> None:
    team = json.loads(json.dumps(DIAMOND))
    team["metadata"]["name"] = "circular"
    team["spec"]["steps"][0]["dependsOn"] = ["summarize"]  # research waits for the end
    apply(cluster, namespace, team, tmp_path)
    valid = wait_for(
        lambda: next(
            (c for c in get(cluster, namespace, "agentteam", "circular").get("status", {})
             .get("conditions", []) if c["type"] == "Valid"), None),
        timeout=30,
        what="the team's Valid condition",
    )  # fmt: skip
    assert (valid["status"], valid["reason"]) == ("False", "Invalid")
    assert (
        valid["message"] == "steps: dependency cycle research -> summarize -> critique -> research"
    )
    table = cluster.kubectl("get", "-n", namespace, "agentteam", "circular").stdout.splitlines()
    assert table[1].split()[2] == "False"  # VALID (no schedule, no last run)
    apply(cluster, namespace, run_of(team, "doomed", input=INPUT), tmp_path)
    failed = wait_phase(cluster, namespace, "doomed", "Failed")
    assert failed["conditions"][0]["reason"] == "InvalidTeam"
    assert "dependency cycle" in failed["message"]


def test_a_leader_that_stops_cleanly_hands_the_lease_over_at_once(
    cluster: ControlPlane, namespace: str, start_operator: StartOperator
) -> None:
    # A Lease that would take a minute to expire: only a release lets the other replica in
    # within the wait below.
    lease = {"leader_election": True, "lease_namespace": namespace, "lease_duration_seconds": 60}
    leader = start_operator(identity="replica-a", **lease)
    standby = start_operator(
        ready_log=r"waiting for the Lease \S+ held by replica-a", identity="replica-b", **lease
    )
    leader.stop()  # SIGTERM
    standby.wait_for_log(r"kubeagents operator watching", timeout=40)
    holder = get(cluster, namespace, "lease", "kubeagents-operator")["spec"]["holderIdentity"]
    assert holder == "replica-b"


def test_an_output_invalid_once_is_retried_with_the_error_and_then_succeeds(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    start_agents: StartAgents,
    fake_anthropic: FakeAnthropicControl,
    tmp_path: Path,
) -> None:
    start_agents(namespace)
    team = json.loads(json.dumps(ONE_STEP))
    team["spec"]["steps"][0].update(
        outputSchema={"type": "object", "required": ["sections"]}, maxAttempts=2
    )
    fake_anthropic.enqueue(Reply.with_text("no json here"), Reply.with_text(SECTIONS))
    apply(cluster, namespace, team, tmp_path)
    apply(cluster, namespace, run_of(team, "retried", input={"topic": "x"}), tmp_path)
    status = wait_phase(cluster, namespace, "retried", "Succeeded")
    step = status["steps"]["research"]
    assert (step["attempts"], step["data"]) == (2, {"sections": ["intro", "risks"]})
    first, second = prompts(fake_anthropic)
    assert first == "Research x"
    assert second.startswith("Research x\n\nYour previous answer was rejected: the output holds")
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=retried",
        "-o", "jsonpath={.items[*].reason}",
    ).stdout.split()  # fmt: skip
    assert "StepRetrying" in events
