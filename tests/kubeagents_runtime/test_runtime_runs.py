"""Tasks of a team run: the run's budget reaches the proxy, a finished task is announced on the
agent's completion stream, a cancel mark stops the next model turn, and the run budget's 429
fails the task instead of waiting a day."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx
import redis

from harness.processes import wait_for
from harness.proxy import ProxyProcess
from harness.runtime import StartRuntime, model_calls
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply
from kubeagents.redis_link import RedisLink
from kubeagents.tasks import QueueKeys, TaskQueue

KEYS = QueueKeys.of("tests", "research")


def submit(redis_url: str, prompt: str, *, task_id: str, **run: str) -> None:
    """Submit through the task contract, as the operator does."""

    async def main() -> None:
        link = RedisLink(redis_url)
        try:
            queue = TaskQueue(link, namespace="tests", agent="research")
            await queue.submit({"prompt": prompt}, task_id=task_id, **run)
        finally:
            await link.aclose()

    asyncio.run(main())


def done_entries(client: redis.Redis) -> list[dict[str, str]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(KEYS.done))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def run_scope(proxy: ProxyProcess, run: str) -> dict[str, Any]:
    scopes: list[dict[str, Any]] = httpx.get(
        f"{proxy.admin_url}/kubeagents/budget?run={run}", timeout=5
    ).json()["scopes"]
    return scopes[-1]


def test_a_run_task_is_metered_in_the_run_scope_and_announced_when_done(
    start_runtimes: StartRuntime,
    fake_anthropic: FakeAnthropicControl,
    proxy: ProxyProcess,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    fake_anthropic.enqueue(Reply.with_text("researched", input_tokens=40, output_tokens=10))
    runtime = start_runtimes()
    submit(
        redis_url,
        "research it",
        task_id="run-a.research.1",
        run="run-a",
        step="research",
        run_budget="run=run-a; tokens=100000",
    )
    assert runtime.wait_final("run-a.research.1")["status"] == "succeeded"
    entries = wait_for(lambda: done_entries(redis_client), timeout=10, what="the done entry")
    assert [{k: v for k, v in e.items() if k != "finished_at"} for e in entries] == [
        {"id": "run-a.research.1", "run": "run-a", "step": "research", "status": "succeeded"}
    ]
    scope = wait_for(
        lambda: (s := run_scope(proxy, "run-a"))["tokens"]["reserved"] == 0 and s,
        timeout=10,
        what="the run scope to be settled",
    )
    assert scope["tokens"]["used"] == 50
    assert scope["tokens"]["limit"] == 100_000


def test_a_task_without_a_run_is_not_announced(
    start_runtimes: StartRuntime, redis_client: redis.Redis
) -> None:
    runtime = start_runtimes()
    assert runtime.wait_final(runtime.submit("plain task"))["status"] == "succeeded"
    assert done_entries(redis_client) == []


def test_a_cancel_mark_stops_the_task_before_its_next_model_turn(
    start_runtimes: StartRuntime,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    redis_client.set(KEYS.cancelled("run-b"), "1")
    runtime = start_runtimes(max_attempts=3)
    submit(redis_url, "never asked", task_id="run-b.s.1", run="run-b", step="s")
    result = runtime.wait_final("run-b.s.1")
    assert (result["status"], result["error"], result["attempts"]) == ("failed", "run cancelled", 1)
    assert model_calls(fake_anthropic) == []
    assert done_entries(redis_client)[0]["status"] == "failed"


def test_the_run_budgets_429_fails_the_task_at_once(
    start_runtimes: StartRuntime,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
) -> None:
    fake_anthropic.enqueue(Reply.with_text("spent", cache_read_input_tokens=1300, output_tokens=50))
    runtime = start_runtimes(max_attempts=3, max_tokens=100)
    budget = {"run": "run-c", "step": "s", "run_budget": "run=run-c; tokens=1500"}
    submit(redis_url, "first", task_id="run-c.s.1", **budget)
    assert runtime.wait_final("run-c.s.1")["status"] == "succeeded"
    submit(redis_url, "second", task_id="run-c.s.2", **budget)
    result = runtime.wait_final("run-c.s.2")
    assert result["status"] == "failed"
    assert result["attempts"] == 1  # not retried after the budget's retry-after (a day)
    assert result["error"].startswith("BudgetExceeded: model call failed: 429")
    assert "budget of run run-c exhausted" in result["error"]
    assert len(model_calls(fake_anthropic)) == 1
