"""Promise 2: no mix of calls spends more than the budget, and nothing used goes uncharged.

200 concurrent calls spread over 3 proxy processes sharing one ledger, streaming and not mixed,
some clients disconnecting mid-stream, random usage per reply: the ledger's spend never exceeds
the budget, is at least what the upstream billed, and at most that plus the worst case of the
calls whose clients disconnected (their usage is unknowable, so they are charged in full).
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from harness.processes import wait_for
from harness.proxy import ProxyProcess, StartProxy
from harness.redis_servers import RedisClusterNodes
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply
from kubeagents_proxy.input_bound import MESSAGE_OVERHEAD, REQUEST_OVERHEAD

MODEL = "claude-sonnet-5-5"
CALLS = 200
BUDGET = 30_000
HEADERS = {"x-api-key": "client", "anthropic-version": "2023-06-01"}


@dataclass
class Tally:
    billed: int = 0  # tokens the upstream reported for calls that completed
    disconnected_worst_case: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def usage_tokens(usage: dict[str, Any]) -> int:
    return sum(
        int(usage.get(k) or 0)
        for k in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
    )


def disconnects(index: int) -> bool:
    """Whether call `index` streams and drops its connection mid-stream."""
    return index % 6 == 0


def call_body(index: int) -> tuple[bytes, int]:
    """Call `index`'s body and its worst case (the proxy's reservation)."""
    rng = random.Random(index)  # noqa: S311 - reproducible test data
    max_tokens = rng.randint(50, 400)
    body = {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"task {index}: " + "x" * rng.randint(0, 300)}],
        "stream": index % 2 == 0,
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    return raw, len(raw) + MESSAGE_OVERHEAD + REQUEST_OVERHEAD + max_tokens


async def one_call(
    client: httpx.AsyncClient, proxy: ProxyProcess, index: int, tally: Tally
) -> None:
    raw, worst_case = call_body(index)
    stream = index % 2 == 0
    disconnect = disconnects(index)
    request = client.build_request(
        "POST",
        f"{proxy.url}/v1/messages",
        content=raw,
        headers={**HEADERS, "content-type": "application/json"},
    )
    response = await client.send(request, stream=True)
    try:
        if response.status_code != 200:
            await response.aread()
            tally.count(f"refused_{response.status_code}")
            return
        if not stream:
            payload = json.loads(await response.aread())  # await first: += must not span it
            tally.billed += usage_tokens(payload["usage"])
            tally.count("ok")
            return
        usage: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if disconnect and line.startswith("event: content_block_delta"):
                tally.disconnected_worst_case += worst_case
                tally.count("disconnected")
                return  # closing the response drops the connection mid-stream
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "message_start":
                    usage = dict(event["message"]["usage"])
                elif event["type"] == "message_delta":
                    usage.update(event["usage"])
        tally.billed += usage_tokens(usage)
        tally.count("ok")
    finally:
        await response.aclose()


async def run_calls(proxies: list[ProxyProcess]) -> Tally:
    """First the calls that will disconnect (all admitted: their worst cases fit the budget
    together), then the others, concurrently, to contend what is left of it."""
    tally = Tally()
    first = [i for i in range(CALLS) if disconnects(i)]
    rest = [i for i in range(CALLS) if not disconnects(i)]
    limits = httpx.Limits(max_connections=CALLS, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for batch in (first, rest):
            await asyncio.gather(
                *(one_call(client, proxies[i % len(proxies)], i, tally) for i in batch)
            )
    return tally


def program_random_usage(fake: FakeAnthropicControl) -> None:
    rng = random.Random(2026)  # noqa: S311 - reproducible test data
    replies = [
        Reply.with_text(
            "partial answer " * 20,
            output_tokens=rng.randint(1, 50),
            event_delay_ms=5,
            chunk_chars=8,
        )
        for _ in range(CALLS)
    ]
    fake.enqueue(*replies)


def ledger_used(proxy: ProxyProcess) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        state: dict[str, Any] = httpx.get(f"{proxy.admin_url}/kubeagents/budget").json()["scopes"][
            0
        ]
        return state if state["tokens"]["reserved"] == 0 else None

    return wait_for(settled, timeout=30, what="every reservation to be settled")


@pytest.mark.parametrize("ledger", ["redis-server", "redis-cluster"])
def test_concurrent_mixed_calls_over_three_proxies_never_overshoot(
    start_proxies: StartProxy,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
    redis_cluster: RedisClusterNodes,
    ledger: str,
) -> None:
    backend: dict[str, Any] = (
        {"redis_url": redis_url}
        if ledger == "redis-server"
        else {"redis_url": redis_cluster.url, "redis_cluster": True}
    )
    proxies = [
        start_proxies(
            f"proxy-{n}", budget_tokens_per_day=BUDGET, max_concurrent_calls=100, **backend
        )
        for n in range(3)
    ]
    program_random_usage(fake_anthropic)
    disconnecting = [i for i in range(CALLS) if disconnects(i)]
    assert sum(call_body(i)[1] for i in disconnecting) < BUDGET  # a precondition, not luck

    tally = asyncio.run(run_calls(proxies))

    state = ledger_used(proxies[0])
    used = state["tokens"]["used"]
    assert tally.outcomes.get("ok", 0) > 0, tally
    assert tally.outcomes.get("refused_429", 0) > 0, tally  # the budget really was contended
    assert tally.outcomes.get("disconnected", 0) == len(disconnecting), tally
    assert used <= BUDGET, f"overshoot: {used} > {BUDGET} ({tally})"
    billed = fake_anthropic.bill().total_tokens  # the upstream's own view
    assert billed <= BUDGET, f"the upstream billed {billed} > {BUDGET} ({tally})"
    assert used >= tally.billed, f"charged {used} < billed {tally.billed} ({tally})"
    assert used <= tally.billed + tally.disconnected_worst_case, tally
