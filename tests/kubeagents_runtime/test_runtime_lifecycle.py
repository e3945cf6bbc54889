"""The runtime's lifecycle: SIGTERM drains, a final task is never run again, the loop's limits."""

from __future__ import annotations

import json
import os
import signal
from typing import cast

import redis

from harness.processes import wait_for
from harness.runtime import StartRuntime, model_calls
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply
from kubeagents.tasks import QueueKeys

KEYS = QueueKeys.of("tests", "research")


def test_sigterm_finishes_the_running_task_and_leaves_the_queued_one_for_others(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("finished during shutdown", latency_ms=1500))
    first = start_runtimes(name="leaving", max_concurrent_tasks=1, shutdown_grace_seconds=10)
    running = first.submit("slow one")
    waiting = first.submit("next one")
    wait_for(lambda: len(model_calls(fake_anthropic)) == 1, timeout=10, what="the first call")
    os.kill(first.process.pid, signal.SIGTERM)
    exit_code = first.process.popen.wait(timeout=20)
    assert exit_code == 0

    fake_anthropic.enqueue(Reply.with_text("picked up by the next pod"))
    second = start_runtimes(name="staying")
    assert second.task(running)["output"] == "finished during shutdown"
    assert second.task(running)["worker"] == "leaving"
    result = second.wait_final(waiting)
    assert result["worker"] == "staying"
    assert result["output"] == "picked up by the next pod"
    assert len(model_calls(fake_anthropic)) == 2


def test_a_task_with_a_final_result_is_never_run_again(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    fake_anthropic.set_default(Reply.with_text("once"))
    runtime = start_runtimes()
    task_id = runtime.submit("only once")
    assert runtime.wait_final(task_id)["output"] == "once"
    # the same task delivered again (a duplicate message, as after a lost acknowledgement)
    client = redis.Redis.from_url(redis_url)
    client.xadd(
        KEYS.stream,
        {
            "id": task_id,
            "input": json.dumps({"prompt": "only once"}),
            "attempt": 1,
            "traceparent": "",
            "run": "",
            "step": "",
            "submitted_at": 0,
        },
    )
    wait_for(
        lambda: (
            client.xpending(KEYS.stream, "runtime")["pending"] == 0
            and client.xinfo_groups(KEYS.stream)[0]["lag"] == 0
        ),
        timeout=10,
        what="the duplicate to be acknowledged",
    )
    assert len(model_calls(fake_anthropic)) == 1
    assert runtime.task(task_id)["output"] == "once"


def test_the_turn_limit_stops_the_loop_with_its_reason(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.set_default(Reply.with_tool_use("echo", {"text": "again"}))
    runtime = start_runtimes(max_turns=3)
    result = runtime.wait_final(runtime.submit("loop forever"))
    assert result["status"] == "succeeded"
    assert result["stop_reason"] == "max_turns"
    assert result["turns"] == 3
    assert result["tool_calls"] == 3


def test_the_token_ceiling_stops_the_loop_with_its_reason(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.set_default(
        Reply.with_tool_use("echo", {"text": "more"}, input_tokens=400, output_tokens=100)
    )
    runtime = start_runtimes(max_task_tokens=1200)
    result = runtime.wait_final(runtime.submit("spend"))
    assert result["stop_reason"] == "token_ceiling"
    assert result["turns"] == 3  # 500 + 500 + 500 >= 1200 after the third turn
    usage = result["usage"]
    assert usage["input_tokens"] + usage["output_tokens"] == 1500


def test_a_task_whose_pods_keep_dying_goes_to_the_dead_letters_instead_of_looping(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    fake_anthropic.enqueue(Reply.with_text("never answered in time", latency_ms=10_000))
    doomed = start_runtimes(name="doomed", visibility_timeout_seconds=1, max_attempts=1)
    task_id = doomed.submit("crash me")
    wait_for(lambda: len(model_calls(fake_anthropic)) == 1, timeout=10, what="the model call")
    doomed.kill()
    client = redis.Redis.from_url(redis_url)
    client.hset(KEYS.result(task_id), "reclaims", 1)  # as if one pod had taken it over already
    survivor = start_runtimes(name="survivor", visibility_timeout_seconds=1, max_attempts=1)
    result = survivor.wait_final(task_id)
    assert result["status"] == "dead"
    assert result["reclaims"] == 2
    assert "taken over 2 times" in result["error"]
    assert len(model_calls(fake_anthropic)) == 1  # not run again
    (entry,) = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(KEYS.dead))
    assert entry[1][b"id"].decode() == task_id
