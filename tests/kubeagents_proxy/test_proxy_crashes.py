"""Crashes and Redis outages lose no spend: reservations expire into charges, settlements land."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from harness.processes import wait_for
from harness.proxy import ProxyProcess, StartProxy
from harness.redis_servers import start_redis
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply

MODEL = "claude-sonnet-5-5"
BODY = {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"x-api-key": "client", "anthropic-version": "2023-06-01"}


def call(proxy: ProxyProcess, results: list[int]) -> None:
    try:
        results.append(
            httpx.post(
                f"{proxy.url}/v1/messages", json=BODY, headers=HEADERS, timeout=30
            ).status_code
        )
    except httpx.HTTPError:
        results.append(0)  # the proxy died under the call


def agent_tokens(proxy: ProxyProcess) -> dict[str, Any]:
    scopes = httpx.get(f"{proxy.admin_url}/kubeagents/budget", timeout=5).json()["scopes"]
    tokens: dict[str, Any] = scopes[0]["tokens"]
    return tokens


def test_kill_9_mid_call_turns_the_reservation_into_a_charge_when_it_expires(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    settings = {
        "redis_url": redis_url,
        "budget_tokens_per_day": 1_000_000,
        "request_timeout_seconds": 6,
        "reservation_grace_seconds": 1,
    }
    victim = start_proxies("victim", **settings)
    observer = start_proxies("observer", **settings)
    fake_anthropic.enqueue(Reply.with_text("never delivered", latency_ms=10_000))
    results: list[int] = []
    caller = threading.Thread(target=call, args=(victim, results))
    caller.start()
    wait_for(
        lambda: any(r.path == "/v1/messages" for r in fake_anthropic.requests()),
        timeout=10,
        what="the call to reach the upstream",
    )
    reserved: int = wait_for(
        lambda: (tokens := agent_tokens(observer))["reserved"] > 200 and tokens["reserved"],
        timeout=5,
        what=f"the call's reservation (upstream saw {fake_anthropic.requests()})",
    )

    victim.kill()  # SIGKILL: no settlement can run
    caller.join()
    assert results == [0]

    # The reservation (timeout 6 s + grace 1 s) expires and is charged in full, never dropped.
    charged = wait_for(
        lambda: (state := agent_tokens(observer))["reserved"] == 0 and state,
        timeout=30,
        what="the expired reservation to be charged",
    )
    assert charged["used"] == reserved


def test_redis_restart_under_load_fails_closed_and_loses_no_settlement(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, tmp_path: Path
) -> None:
    workdir = tmp_path / "redis"
    server = start_redis(workdir, persistent=True)
    proxy = start_proxies(redis_url=server.url, budget_tokens_per_day=1_000_000)
    in_flight = 5
    fake_anthropic.enqueue(
        Reply.with_text(
            "slow answer", latency_ms=2000, input_tokens=100, output_tokens=7, times=in_flight
        )
    )
    results: list[int] = []
    callers = [threading.Thread(target=call, args=(proxy, results)) for _ in range(in_flight)]
    for caller in callers:
        caller.start()
    wait_for(
        lambda: len(fake_anthropic.requests()) == in_flight,
        timeout=10,
        what="every call to reach the upstream",
    )
    server.stop()  # Redis goes down while the calls are in flight
    refused = httpx.post(f"{proxy.url}/v1/messages", json=BODY, headers=HEADERS, timeout=30)
    assert refused.status_code == 503
    assert "budget ledger unavailable" in refused.json()["error"]["message"]
    for caller in callers:
        caller.join()
    assert results == [200] * in_flight  # the calls themselves completed

    restarted = start_redis(workdir, port=server.port, persistent=True)
    try:
        # Their settlements were retried until Redis came back: every token is accounted for.
        settled = wait_for(
            lambda: (state := agent_tokens(proxy))["reserved"] == 0 and state,
            timeout=30,
            what="the in-flight settlements to land",
        )
        assert settled["used"] == in_flight * 107
    finally:
        restarted.stop()
