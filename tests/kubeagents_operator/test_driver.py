"""The Redis half of the operator against real parts: two agents (a runtime and a proxy each),
one Redis, the fake upstream. The diamond team runs to its end over the task contract: parallel
steps overlap, templates reach the model, the run's budget is metered across both agents, a
retry after crash-like repetition queues nothing twice, a cancel stops the run's tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from harness.agents import AGENTS, StartAgents
from harness.proxy import ProxyProcess
from harness.runtime import RuntimeProcess, model_calls
from harness.teams import DIAMOND, INPUT, SECTIONS
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply
from kubeagents.redis_link import RedisLink
from kubeagents_operator.driver import DoneCursor, RunDriver
from kubeagents_operator.runs import Progress, StepState, TeamSpec

TEAM = TeamSpec.parse(DIAMOND["spec"])


@pytest.fixture
def agents(start_agents: StartAgents) -> dict[str, tuple[ProxyProcess, RuntimeProcess]]:
    return start_agents("tests")


async def drive(
    redis_url: str, run: str, *, until: Callable[[dict[str, StepState]], bool] | None = None
) -> tuple[dict[str, StepState], Progress]:
    """Drive `run` as the operator will: dispatch, wait for a completion, collect, repeat."""
    links = {agent: RedisLink(redis_url) for agent in AGENTS}
    waits = {agent: RedisLink(redis_url) for agent in AGENTS}
    driver = RunDriver(links.__getitem__, namespace="tests", wait_link_for=waits.__getitem__)
    cursor = DoneCursor()
    try:
        async with asyncio.timeout(90):
            states, progress = await driver.dispatch(
                TEAM, run=run, run_uid=f"uid-{run}", run_input=INPUT, states={}
            )
            while progress.phase == "Running" and not (until and until(states)):
                await driver.wait(TEAM, run, cursor, within=5)
                states = await driver.collect(TEAM, states)
                states, progress = await driver.dispatch(
                    TEAM, run=run, run_uid=f"uid-{run}", run_input=INPUT, states=states
                )
            return states, progress
    finally:
        await cursor.close()
        for link in (*links.values(), *waits.values()):
            await link.aclose()


def prompt_of(request: Any) -> str:
    return str(request.body["messages"][0]["content"])


def test_the_diamond_runs_to_its_end_over_two_agents(
    agents: dict[str, tuple[ProxyProcess, RuntimeProcess]],
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
) -> None:
    fake_anthropic.enqueue(
        Reply.with_text("the facts", input_tokens=30, output_tokens=10),
        # critique and outline: one entry for both, slow, so that the second arrives while the
        # first is still being answered (a dispatch takes milliseconds; this is 5 s).
        Reply.with_text(SECTIONS, input_tokens=30, output_tokens=10, latency_ms=5000, times=2),
        Reply.with_text("the report", input_tokens=30, output_tokens=10),
    )
    states, progress = asyncio.run(drive(redis_url, "run-1"))
    assert (progress.phase, progress.output) == ("Succeeded", "the report")
    assert states["outline"].data == {"sections": ["intro", "risks"]}
    calls = model_calls(fake_anthropic)
    prompts = [prompt_of(call) for call in calls]
    assert prompts[0] == "Research AI in healthcare"
    assert sorted(prompts[1:3]) == ["Critique: the facts", "Outline: the facts"]
    assert prompts[3] == f'Write ["intro","risks"], fixing: {SECTIONS}'
    first, second = sorted(calls[1:3], key=lambda call: call.received_at)
    assert second.received_at < first.received_at + 5.0, "critique and outline did not overlap"
    for agent in AGENTS:  # every call of the run was metered in the run's one budget
        proxy = agents[agent][0]
        scope = httpx.get(f"{proxy.admin_url}/kubeagents/budget?run=run-1").json()["scopes"][-1]
        assert scope["tokens"]["limit"] == 100_000
    assert scope["tokens"]["used"] == 4 * 40


def test_a_repeated_dispatch_queues_nothing_twice(
    agents: dict[str, tuple[ProxyProcess, RuntimeProcess]],
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
) -> None:
    async def dispatch_twice() -> None:
        link = RedisLink(redis_url)
        driver = RunDriver(lambda _: link, namespace="tests")
        try:
            for _ in range(2):  # as after an operator crash between the submit and the status
                await driver.dispatch(
                    TEAM, run="run-2", run_uid="uid-run-2", run_input=INPUT, states={}
                )
        finally:
            await link.aclose()

    asyncio.run(dispatch_twice())
    runtime = agents["research"][1]
    task = runtime.wait_final("uidrun2.research.1")
    assert task["status"] == "succeeded"
    assert len(model_calls(fake_anthropic)) == 1


def test_a_cancel_stops_the_runs_next_model_turn(
    agents: dict[str, tuple[ProxyProcess, RuntimeProcess]],
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
) -> None:
    async def cancel() -> None:
        link = RedisLink(redis_url)
        try:
            await RunDriver(lambda _: link, namespace="tests").cancel(TEAM, "run-3")
        finally:
            await link.aclose()

    asyncio.run(cancel())
    states, progress = asyncio.run(drive(redis_url, "run-3"))
    assert progress.phase == "Failed"
    assert states["research"].message == "run cancelled"
    assert model_calls(fake_anthropic) == []
