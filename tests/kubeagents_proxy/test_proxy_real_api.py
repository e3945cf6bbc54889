"""What the real API does that a naive proxy gets wrong: compression, server tools, priced
options, connections that break after the request was sent, answers without usage, retried
5xx that billed, lost reservations. Each test judges the budget by the upstream's own bill."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
import redis

from harness.fake_anthropic import start_fake_anthropic
from harness.processes import free_port, wait_for
from harness.proxy import ProxyProcess, StartProxy, sdk, start_proxy
from harness.redis_servers import RedisServer, start_redis
from kubeagents.fake_anthropic import Drop, ErrorReply, FakeAnthropicControl, Reply
from kubeagents_proxy.input_bound import MESSAGE_OVERHEAD, REQUEST_OVERHEAD

MODEL = "claude-sonnet-5-5"
HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello"}]
HEADERS = {"x-api-key": "client", "anthropic-version": "2023-06-01"}


def post(proxy: ProxyProcess, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1/messages", json=body, headers={**HEADERS, **headers}, timeout=30
    )


def error_of(response: httpx.Response) -> tuple[int, str]:
    payload = response.json()
    assert payload["type"] == "error", payload
    return response.status_code, payload["error"]["message"]


def scopes(proxy: ProxyProcess, run: str | None = None) -> list[dict[str, Any]]:
    query = f"?run={run}" if run else ""
    result: list[dict[str, Any]] = httpx.get(
        f"{proxy.admin_url}/kubeagents/budget{query}", timeout=5
    ).json()["scopes"]
    return result


def settled_tokens(proxy: ProxyProcess, run: str | None = None) -> int:
    """Tokens used by the agent (or the run) once nothing is reserved any more."""

    def used() -> int | None:
        scope = scopes(proxy, run)[-1]["tokens"]
        return int(scope["used"]) if scope["reserved"] == 0 else None

    return wait_for(used, timeout=15, what="every reservation to be settled")


def worst_case(body: dict[str, Any]) -> int:
    """The proxy's token reservation of a body without tools or opaque content."""
    # httpx's json= encoding: the same bytes the proxy reads
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    max_tokens: int = body["max_tokens"]
    return len(raw) + MESSAGE_OVERHEAD * len(body["messages"]) + REQUEST_OVERHEAD + max_tokens


# --- compression ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compressing_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAnthropicControl]:
    """A second fake that gzips every answer, even when the client asked for identity (as a
    misbehaving intermediary does): the proxy must decode whatever arrives."""
    process, control = start_fake_anthropic(
        tmp_path_factory.mktemp("gzip-fake"), "--compression", "always"
    )
    yield control
    control.close()
    process.stop()


@pytest.mark.parametrize("upstream", ["auto", "always"])
def test_the_sdk_works_through_the_proxy_against_a_compressing_upstream(
    upstream: str,
    fake_anthropic: FakeAnthropicControl,
    compressing_fake: FakeAnthropicControl,
    redis_url: str,
    tmp_path: Path,
) -> None:
    fake = fake_anthropic if upstream == "auto" else compressing_fake
    fake.reset()
    proxy = start_proxy(
        tmp_path,
        upstream_url=fake.base_url,
        settings={"redis_url": redis_url, "budget_tokens_per_day": 1_000_000},
    )
    try:
        fake.enqueue(
            Reply.with_text("plain", input_tokens=40, output_tokens=7),
            Reply.with_text("streamed", input_tokens=50, output_tokens=9),
        )
        client = sdk(proxy)
        message = client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
        assert message.content[0].type == "text"
        assert message.content[0].text == "plain"
        with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream:
            assert stream.get_final_text() == "streamed"
        assert client.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens > 0
        assert any(model.id == MODEL for model in client.models.list())
        assert settled_tokens(proxy) == 40 + 7 + 50 + 9  # the exact usage, read from plain bytes
        sent = [r for r in fake.requests() if r.path.startswith("/v1/")]
        assert {r.headers.get("accept-encoding") for r in sent} == {"identity"}
    finally:
        proxy.stop()


def test_a_gzipped_request_body_is_decoded_before_it_is_planned(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies()
    body = {"model": MODEL, "max_tokens": 16, "messages": HELLO}
    response = httpx.post(
        f"{proxy.url}/v1/messages",
        content=gzip.compress(json.dumps(body).encode()),
        headers={**HEADERS, "content-type": "application/json", "content-encoding": "gzip"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert fake_anthropic.requests()[-1].body == body


# --- what the body cannot show --------------------------------------------------------------

WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}


@pytest.mark.parametrize(
    ("extra", "headers", "status", "message"),
    [
        ({"tools": [WEB_SEARCH]}, {}, 400, "tools[0]: server tool web_search is not allowed"),
        (
            {"mcp_servers": [{"type": "url", "url": "https://mcp.invalid", "name": "m"}]},
            {},
            400,
            "mcp_servers: server tool mcp_servers is not allowed",
        ),
        ({"container": "container_1"}, {}, 400, "container: runs in code execution"),
        ({}, {"anthropic-beta": "priority-lane-2027-01-01"}, 400, "anthropic-beta: priority-lane"),
        ({"surcharge": 1}, {}, 400, "surcharge: not a request field the proxy knows"),
        ({"speed": "fast"}, {}, 400, "speed: fast mode of claude-sonnet-5-5 has no price"),
        ({"inference_geo": "mars"}, {}, 400, "inference_geo: mars has no price multiplier"),
    ],
    ids=["server-tool", "mcp-servers", "container", "beta", "field", "speed", "geo"],
)
def test_what_the_proxy_cannot_bound_or_price_is_refused_naming_it(
    start_proxies: StartProxy,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
    redis_client: redis.Redis,
    extra: dict[str, Any],
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    proxy = start_proxies(redis_url=redis_url, budget_usd_per_day="5")
    got = error_of(
        post(proxy, {"model": MODEL, "max_tokens": 16, "messages": HELLO, **extra}, **headers)
    )
    assert got[0] == status
    assert message in got[1], got[1]
    assert [k for k in redis_client.keys("*") if b":agent:" in k] == []  # nothing reserved
    assert [r.path for r in fake_anthropic.requests()] == []


def test_allowed_server_tools_are_bounded_and_the_bill_stays_within_the_budget(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    budget = 12_000
    proxy = start_proxies(
        redis_url=redis_url,
        budget_tokens_per_day=budget,
        allowed_server_tools={"web_search": {"maxTokensPerUse": 2_000}},
    )
    body = {"model": MODEL, "max_tokens": 100, "messages": HELLO, "tools": [WEB_SEARCH]}
    # Each call searches twice and the results grow its input by the most the bound allows.
    fake_anthropic.set_default(
        Reply.with_text(
            "found it",
            output_tokens=100,
            server_tool_use={"web_search_requests": 2, "web_fetch_requests": 0},
            server_tool_input_tokens=4_000,
        )
    )
    statuses = [post(proxy, body).status_code for _ in range(5)]
    assert statuses[0] == 200
    assert 429 in statuses  # the budget ran out: the tools' bound entered each reservation
    bill = fake_anthropic.bill()
    assert bill.web_search_requests == 2 * statuses.count(200)
    assert bill.total_tokens <= budget
    assert settled_tokens(proxy) == bill.total_tokens


# --- settlement that must not record less than was billed -----------------------------------


def test_a_connection_broken_after_the_request_was_sent_is_charged_in_full(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(
        redis_url=redis_url, budget_tokens_per_day=100_000, upstream_max_retries=0
    )
    body = {"model": MODEL, "max_tokens": 300, "messages": HELLO}
    fake_anthropic.enqueue(Drop(after="request"))
    status, message = error_of(post(proxy, body))
    assert status == 502
    assert "broke after the request was sent" in message
    assert settled_tokens(proxy) == worst_case(body)
    assert fake_anthropic.bill().total_tokens <= worst_case(body)


def test_a_connection_refused_before_anything_was_sent_is_not_charged(
    start_proxies: StartProxy, redis_url: str
) -> None:
    proxy = start_proxies(
        redis_url=redis_url,
        budget_tokens_per_day=100_000,
        upstream_url=f"http://127.0.0.1:{free_port()}",
    )
    status, message = error_of(post(proxy, {"model": MODEL, "max_tokens": 300, "messages": HELLO}))
    assert status == 502
    assert "cannot reach the upstream" in message
    assert settled_tokens(proxy) == 0


def test_an_answer_broken_off_after_its_headers_is_charged_in_full(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(redis_url=redis_url, budget_tokens_per_day=100_000)
    body = {"model": MODEL, "max_tokens": 300, "messages": HELLO}
    fake_anthropic.enqueue(Drop(after="headers"))
    assert post(proxy, body).status_code == 502
    assert settled_tokens(proxy) == worst_case(body)


def test_a_200_without_usage_is_charged_in_full(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(redis_url=redis_url, budget_tokens_per_day=100_000)
    body = {"model": MODEL, "max_tokens": 300, "messages": HELLO}
    fake_anthropic.enqueue(Reply.with_text("no usage", omit_usage=True, output_tokens=30))
    response = post(proxy, body)
    assert response.status_code == 200
    assert "usage" not in response.json()
    assert settled_tokens(proxy) == worst_case(body)
    assert fake_anthropic.bill().total_tokens <= worst_case(body)


def test_a_retried_5xx_that_billed_is_charged_per_attempt(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(
        redis_url=redis_url, budget_tokens_per_day=100_000, upstream_max_retries=1
    )
    body = {"model": MODEL, "max_tokens": 300, "messages": HELLO}
    fake_anthropic.enqueue(
        ErrorReply(status=500, retry_after=0, billed=True, billed_output_tokens=300),
        Reply.with_text("second try", input_tokens=20, output_tokens=5),
    )
    response = post(proxy, body)
    assert response.status_code == 200
    assert response.json()["content"][0]["text"] == "second try"
    charged = settled_tokens(proxy)
    assert charged == worst_case(body) + 25  # the first attempt in full, the second as billed
    assert fake_anthropic.bill().total_tokens <= charged


def test_a_5xx_retry_is_not_made_when_its_reservation_is_refused(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    body = {"model": MODEL, "max_tokens": 300, "messages": HELLO}
    budget = worst_case(body) + 10  # room for one attempt only
    proxy = start_proxies(redis_url=redis_url, budget_tokens_per_day=budget, upstream_max_retries=2)
    fake_anthropic.enqueue(
        ErrorReply(status=503, retry_after=0, billed=True, billed_output_tokens=300),
        Reply.with_text("never reached"),
    )
    assert post(proxy, body).status_code == 503  # the upstream's own answer
    assert len([r for r in fake_anthropic.requests() if r.path == "/v1/messages"]) == 1
    assert settled_tokens(proxy) == worst_case(body)
    assert fake_anthropic.bill().total_tokens <= budget


def test_a_settle_after_the_reservation_was_lost_still_records_the_usage(
    start_proxies: StartProxy,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    proxy = start_proxies(redis_url=redis_url, budget_tokens_per_day=100_000)
    fake_anthropic.enqueue(
        Reply.with_text("slow", input_tokens=70, output_tokens=30, latency_ms=2_000)
    )
    results: list[int] = []
    caller = threading.Thread(
        target=lambda: results.append(
            post(proxy, {"model": MODEL, "max_tokens": 300, "messages": HELLO}).status_code
        )
    )
    caller.start()
    wait_for(lambda: scopes(proxy)[0]["tokens"]["reserved"] > 0, timeout=10, what="the reservation")
    for key in redis_client.keys("kubeagents:*"):  # a Redis that lost the reservation
        redis_client.delete(key)
    caller.join()
    assert results == [200]
    assert settled_tokens(proxy) == 100
    assert fake_anthropic.bill().total_tokens == 100


# --- Redis that can evict -------------------------------------------------------------------


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    with server.client() as client:
        client.config_set("maxmemory-policy", "allkeys-lru")
    yield server
    server.stop()


def test_an_evicting_maxmemory_policy_makes_the_proxy_refuse_to_meter(
    start_proxies: StartProxy, evicting_redis: RedisServer
) -> None:
    proxy = start_proxies(redis_url=evicting_redis.url, budget_tokens_per_day=100_000)
    body = {"model": MODEL, "max_tokens": 16, "messages": HELLO}
    status, message = error_of(post(proxy, body))
    assert status == 503
    assert "maxmemory-policy is allkeys-lru" in message
    ready = httpx.get(f"{proxy.admin_url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert "allkeys-lru" in ready.json()["checks"]["redis"]
    assert "maxmemory-policy is allkeys-lru" in proxy.process.log_text()
    with evicting_redis.client() as client:
        client.config_set("maxmemory-policy", "noeviction")
    wait_for(lambda: post(proxy, body).status_code == 200, timeout=15, what="metering to resume")


def test_accepting_the_eviction_risk_meters_anyway(
    start_proxies: StartProxy, evicting_redis: RedisServer
) -> None:
    proxy = start_proxies(
        redis_url=evicting_redis.url, budget_tokens_per_day=100_000, accept_eviction_risk=True
    )
    assert post(proxy, {"model": MODEL, "max_tokens": 16, "messages": HELLO}).status_code == 200
    assert settled_tokens(proxy) > 0


def test_used_never_goes_negative_when_the_totals_were_evicted(
    start_proxies: StartProxy,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    proxy = start_proxies(redis_url=redis_url, budget_tokens_per_day=1_000)
    fake_anthropic.enqueue(Reply.with_text("big", input_tokens=800, output_tokens=100))
    assert post(proxy, {"model": MODEL, "max_tokens": 100, "messages": HELLO}).status_code == 200
    assert settled_tokens(proxy) == 900
    (totals,) = [k for k in redis_client.keys("kubeagents:*:agent:totals")]
    redis_client.delete(totals)  # as an evicting Redis might
    state = scopes(proxy)[0]["tokens"]
    assert state["used"] >= 0
    assert state["reserved"] >= 0


# --- the run scope ---------------------------------------------------------------------------


def test_a_run_budget_holds_across_two_agents_and_three_proxies(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    limit = 3_000
    common = {"redis_url": redis_url, "budget_tokens_per_day": 1_000_000}
    proxies = [
        start_proxies("research-a", **common),
        start_proxies("research-b", **common),
        start_proxies("writer", agent="writer", **common),
    ]
    header = {"kubeagents-run-budget": f"run=team-run-1; tokens={limit}"}
    body = {"model": MODEL, "max_tokens": 200, "messages": HELLO}
    fake_anthropic.set_default(Reply.with_text("step", input_tokens=300, output_tokens=200))
    statuses = [post(proxies[i % 3], body, **header).status_code for i in range(12)]
    assert statuses.count(200) >= 3
    assert 429 in statuses
    billed = fake_anthropic.bill().total_tokens
    assert billed <= limit
    assert settled_tokens(proxies[2], run="team-run-1") == billed
    # A later call cannot raise the run's limit, from any agent.
    raised = {"kubeagents-run-budget": "run=team-run-1; tokens=1000000"}
    status, message = error_of(post(proxies[2], body, **raised))
    assert status == 400
    assert f"fixed by its first call at tokens={limit}" in message
    assert fake_anthropic.bill().total_tokens == billed


def test_a_run_with_a_dollar_limit_refuses_a_call_it_cannot_price(
    start_proxies: StartProxy, redis_url: str
) -> None:
    proxy = start_proxies(
        redis_url=redis_url,
        budget_tokens_per_day=1_000_000,
        allowed_models=[MODEL, "claude-opus-5-9"],
    )
    header = {"kubeagents-run-budget": "run=priced-run; usd=1"}
    body = {"model": "claude-opus-5-9", "max_tokens": 16, "messages": HELLO}
    status, message = error_of(post(proxy, body, **header))
    assert status == 403
    assert "run priced-run has a dollar limit, and this call has no price" in message
    assert post(proxy, {**body, "model": MODEL}, **header).status_code == 200


def test_an_allowed_model_without_its_own_price_is_refused_under_a_dollar_budget(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(
        redis_url=redis_url, allowed_models=[MODEL, "claude-opus-5-9"], budget_usd_per_day="1"
    )
    status, message = error_of(
        post(proxy, {"model": "claude-opus-5-9", "max_tokens": 16, "messages": HELLO})
    )
    assert status == 403
    assert "model claude-opus-5-9 has no price" in message  # not priced as claude-opus-5
    assert fake_anthropic.requests() == []


def test_a_call_charged_in_full_is_charged_in_full_in_dollars_too(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(
        redis_url=redis_url,
        budget_tokens_per_day=100_000,
        budget_usd_per_day="5",
        upstream_max_retries=0,
    )
    body = {"model": MODEL, "max_tokens": 300, "messages": HELLO}
    fake_anthropic.enqueue(Drop(after="request"))
    assert post(proxy, body).status_code == 502
    tokens = settled_tokens(proxy)
    usd = scopes(proxy)[0]["usd"]
    input_bound = tokens - 300
    # Sonnet 5.5: every input token at the dearest input price (a 1-hour cache write, 2 x $2
    # per MTok = 4,000 nano-dollars), every output token at $10 per MTok (10,000).
    assert usd["used"] == pytest.approx((input_bound * 4_000 + 300 * 10_000) / 1e9)
    assert usd["reserved"] == 0
