"""`kubeagents runtime` as a real process: a real proxy, redis-server and MCP tool server in front
of the fake upstream."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any, cast

import redis

from harness.probe import start_probe
from harness.processes import log_records, wait_for
from harness.proxy import ProxyProcess, StartProxy, sdk
from harness.runtime import StartRuntime, model_calls
from kubeagents.fake_anthropic import ErrorReply, FakeAnthropicControl, Reply
from kubeagents.tasks import QueueKeys

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
KEYS = QueueKeys.of("tests", "research")


def console_spans(log: str) -> list[dict[str, Any]]:
    return [json.loads(block) for block in re.findall(r"(?ms)^\{\n.*?^\}$", log)]


def test_a_task_with_two_tool_calls_completes_with_result_usage_and_spans(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        Reply.with_tool_use("add", {"a": 2, "b": 3}, input_tokens=100, output_tokens=10),
        Reply.with_tool_use("echo", {"text": "five"}, input_tokens=150, output_tokens=12),
        Reply.with_text('{"answer": 5}', input_tokens=200, output_tokens=8),
    )
    runtime = start_runtimes(extra_env={"OTEL_TRACES_EXPORTER": "console"})
    status, body = runtime.request(
        "POST",
        "/v1/tasks",
        json.dumps({"input": {"prompt": "What is 2 + 3?"}, "id": "sum-1"}).encode(),
    )
    assert (status, body) == (202, {"id": "sum-1", "status": "queued"})
    result = runtime.wait_final("sum-1")
    assert result["status"] == "succeeded", result
    assert result["output"] == '{"answer": 5}'
    assert result["output_json"] == {"answer": 5}
    assert result["stop_reason"] == "end_turn"
    assert result["turns"] == 3
    assert result["tool_calls"] == 2
    assert result["attempts"] == 1
    assert result["usage"]["input_tokens"] == 450
    assert result["usage"]["output_tokens"] == 30
    assert result["worker"] == "runtime"

    calls = model_calls(fake_anthropic)
    assert len(calls) == 3
    first, second, third = (call.body for call in calls)
    assert first["system"] == "You are a careful research agent."
    assert {tool["name"] for tool in first["tools"]} >= {"add", "echo", "lookup", "record"}
    tool_result = second["messages"][-1]["content"][0]
    assert tool_result["type"] == "tool_result"
    assert tool_result["content"] == "5"
    assert third["messages"][-1]["content"][0]["content"] == "five"

    def three_spans() -> list[dict[str, Any]] | None:
        found = console_spans(runtime.process.log_text())
        return found if len(found) >= 3 else None

    spans = wait_for(three_spans, timeout=10, what="the runtime to export its spans")
    by_name = {span["name"]: span for span in spans}
    agent = by_name["invoke_agent research"]
    assert agent["attributes"]["kubeagents.task.id"] == "sum-1"
    assert agent["attributes"]["gen_ai.usage.input_tokens"] == 450
    for tool in ("add", "echo"):
        span = by_name[f"execute_tool {tool}"]
        assert span["parent_id"] == agent["context"]["span_id"]
        assert span["context"]["trace_id"] == agent["context"]["trace_id"]
    assert result["trace_id"] == agent["context"]["trace_id"].removeprefix("0x")

    metrics = runtime.request_text("/metrics")
    for line in (
        'kubeagents_runtime_tasks_total{outcome="succeeded"} 1.0',
        "kubeagents_runtime_model_turns_total 3.0",
        'kubeagents_runtime_tool_calls_total{outcome="ok",tool="add"} 1.0',
        'kubeagents_runtime_tool_calls_total{outcome="ok",tool="echo"} 1.0',
        "kubeagents_runtime_tasks_in_flight 0.0",
    ):
        assert line in metrics, line
    log_line = next(
        record
        for record in log_records(runtime.process.log_text())
        if record.get("event") == "task"
    )
    assert log_line["level"] == "info"
    assert log_line["logger"] == "kubeagents.runtime"
    assert log_line["task_id"] == "sum-1"
    assert log_line["trace_id"] == result["trace_id"]
    assert log_line["outcome"] == "succeeded"


def test_the_submitters_traceparent_is_continued_to_the_proxy(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("traced"))
    runtime = start_runtimes()
    status, body = runtime.request(
        "POST",
        "/v1/tasks",
        json.dumps({"input": {"prompt": "hello"}}).encode(),
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
    )
    assert status == 202, body
    result = runtime.wait_final(body["id"])
    assert result["trace_id"] == TRACE_ID
    (upstream,) = model_calls(fake_anthropic)
    assert upstream.headers["traceparent"].split("-")[1] == TRACE_ID


def test_a_runtime_killed_mid_task_is_resumed_elsewhere_without_repeating_tool_calls(
    start_runtimes: StartRuntime,
    fake_anthropic: FakeAnthropicControl,
    tool_log: Path,
    redis_url: str,
) -> None:
    fake_anthropic.enqueue(
        Reply.with_tool_use("record", {"note": "one"}),
        Reply.with_text("never seen", latency_ms=10_000),  # the second turn: killed meanwhile
    )
    first = start_runtimes(name="runtime-a", visibility_timeout_seconds=2)
    task_id = first.submit("Record three notes.")
    wait_for(
        lambda: tool_log.exists() and tool_log.read_text().splitlines() == ["one"],
        timeout=20,
        what="the first tool call to run",
    )
    wait_for(
        lambda: len(model_calls(fake_anthropic)) == 2, timeout=10, what="the second model turn"
    )
    first.kill()  # kill -9 while the second model turn is in flight

    fake_anthropic.enqueue(
        Reply.with_tool_use("record", {"note": "two"}),
        Reply.with_tool_use("record", {"note": "three"}),
        Reply.with_text("recorded three notes"),
    )
    second = start_runtimes(name="runtime-b", visibility_timeout_seconds=2)
    result = second.wait_final(task_id, timeout=40)
    assert result["status"] == "succeeded", result
    assert result["output"] == "recorded three notes"
    assert result["worker"] == "runtime-b"
    assert result["tool_calls"] == 3
    assert tool_log.read_text().splitlines() == ["one", "two", "three"]  # each exactly once
    # the resumed turn carried the first tool's saved result, not a new call
    resumed = model_calls(fake_anthropic)[2].body["messages"]
    assert resumed[-1]["content"][0]["content"] == "recorded"
    client = redis.Redis.from_url(redis_url)
    assert client.hget(KEYS.result(task_id), "finished_at") is not None
    assert client.exists(KEYS.checkpoint(task_id)) == 0
    pending = client.xpending(KEYS.stream, "runtime")
    assert pending["pending"] == 0


def test_retryable_failures_back_off_and_succeed(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(ErrorReply(status=529, times=2), Reply.with_text("third time lucky"))
    runtime = start_runtimes(max_attempts=3)
    result = runtime.wait_final(runtime.submit("try"))
    assert result["status"] == "succeeded", result
    assert result["attempts"] == 3
    assert result["output"] == "third time lucky"
    assert result["error"] == ""


def test_a_permanent_failure_fails_at_once(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(ErrorReply(status=400, message="messages: roles must alternate"))
    runtime = start_runtimes(max_attempts=3)
    result = runtime.wait_final(runtime.submit("bad"))
    assert result["status"] == "failed"
    assert result["attempts"] == 1
    assert "400" in result["error"]
    assert "roles must alternate" in result["error"]
    assert len(model_calls(fake_anthropic)) == 1


def test_exhausted_attempts_land_in_the_dead_letter_stream(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    fake_anthropic.enqueue(ErrorReply(status=500, times=2))
    runtime = start_runtimes(max_attempts=2)
    task_id = runtime.submit("doomed")
    result = runtime.wait_final(task_id)
    assert result["status"] == "dead"
    assert result["attempts"] == 2
    client = redis.Redis.from_url(redis_url)
    (entry,) = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(KEYS.dead))
    fields = {key.decode(): value.decode() for key, value in entry[1].items()}
    assert fields["id"] == task_id
    assert fields["attempt"] == "2"
    assert "500" in fields["error"]
    assert json.loads(fields["input"]) == {"prompt": "doomed"}


def test_no_task_is_pulled_while_the_probe_says_not_ready(
    tmp_path: Path,
    start_runtimes: StartRuntime,
    proxy: ProxyProcess,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
) -> None:
    fake_anthropic.set_default(Reply.with_text("////"))  # the probe's validator fails
    probe = start_probe(
        tmp_path / "probe",
        proxy_url=proxy.url,
        proxy_admin_url=proxy.admin_url,
        settings={"redis_url": redis_url, "interval_seconds": 1, "path_interval_seconds": 0.5},
    )
    try:
        wait_for(
            lambda: probe.get("/readyz")[0] == 503 and probe.readiness()["failing"],
            timeout=20,
            what="the probe to say NotReady",
        )
        runtime = start_runtimes(readiness_url=probe.url + "/readyz", readiness_poll_seconds=0.2)
        task_id = runtime.submit("wait for the probe")
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # observing that nothing happens, with a deadline
            assert runtime.task(task_id)["status"] == "queued"
            time.sleep(0.2)
        assert client.xpending(KEYS.stream, "runtime")["pending"] == 0
        assert runtime.request("GET", "/readyz")[1]["probe_gate"] == "closed"

        fake_anthropic.set_default(Reply.with_text("READY"))
        result = runtime.wait_final(task_id, timeout=30)
        assert result["status"] == "succeeded"
    finally:
        probe.stop()


def test_an_exhausted_budget_makes_the_task_wait_for_retry_after_then_complete(
    start_proxies: StartProxy,
    start_runtimes: StartRuntime,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
) -> None:
    proxy = start_proxies(
        name="tight-proxy",
        redis_url=redis_url,
        budget_tokens_per_day=5000,
        request_timeout_seconds=2,
        reservation_grace_seconds=1,
        upstream_max_retries=0,
    )
    runtime = start_runtimes(proxy_url=proxy.url, max_tokens=200, max_attempts=2)
    # a slow call holds a reservation of most of the budget for a while
    fake_anthropic.enqueue(Reply.with_text("slow", latency_ms=1500, output_tokens=5))
    blocker = threading.Thread(
        target=lambda: sdk(proxy).messages.create(
            model="claude-sonnet-5-5",
            max_tokens=4500,
            messages=[{"role": "user", "content": "hold"}],
        )
    )
    blocker.start()
    wait_for(lambda: len(model_calls(fake_anthropic)) == 1, timeout=10, what="the blocker")
    fake_anthropic.enqueue(Reply.with_text("done after the wait"))
    task_id = runtime.submit("needs budget")
    retrying = wait_for(
        lambda: (task := runtime.task(task_id))["status"] == "retrying" and task,
        timeout=10,
        what="the task to wait for the budget",
    )
    assert "budget" in retrying["error"]
    blocker.join(timeout=10)
    result = runtime.wait_final(task_id, timeout=20)
    assert result["status"] == "succeeded", result
    assert result["attempts"] == 2
    assert result["output"] == "done after the wait"


def test_tasks_of_one_agent_are_never_taken_by_another(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    fake_anthropic.set_default(Reply.with_text("ok"))
    writer = start_runtimes(name="writer-pod", agent="writer")
    research = start_runtimes(name="research-pod")
    ids = [research.submit(f"research {i}") for i in range(5)]
    for task_id in ids:
        assert research.wait_final(task_id)["worker"] == "research-pod"
    assert writer.request("GET", f"/v1/tasks/{ids[0]}")[0] == 404  # another agent's queue
    client = redis.Redis.from_url(redis_url)
    writer_keys = QueueKeys.of("tests", "writer")
    assert client.xlen(writer_keys.stream) == 0


def test_bad_task_input_is_refused_at_submit_and_never_reaches_the_model(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    runtime = start_runtimes()
    client = redis.Redis.from_url(redis_url)
    keys_before = client.dbsize()
    cases = [
        (b"{not json", 400, "body is not JSON"),
        (json.dumps({"input": {"text": "no prompt"}}).encode(), 400, "input.prompt"),
        (json.dumps({"input": {"prompt": ""}}).encode(), 400, "input.prompt"),
        (json.dumps({"input": "just a string"}).encode(), 400, "must be a JSON object"),
        (json.dumps({"input": {"prompt": "x"}, "id": "bad id!"}).encode(), 400, "task id"),
        (json.dumps({"input": {"prompt": "x"}, "priority": 1}).encode(), 400, "unknown fields"),
        (json.dumps({"input": {"prompt": "x" * 300_000}}).encode(), 413, "exceeds"),
    ]
    for body, status, message in cases:
        got, answer = runtime.request("POST", "/v1/tasks", body)
        assert got == status, (body[:60], answer)
        assert message in answer["error"], answer
    assert client.dbsize() == keys_before
    assert model_calls(fake_anthropic) == []
