"""Every limit of the proxy refuses with the right status, error type, message and retry-after."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
import redis

from harness.processes import wait_for
from harness.proxy import ProxyProcess, StartProxy, sdk
from harness.redis_servers import start_redis
from kubeagents.fake_anthropic import ErrorReply, FakeAnthropicControl, Reply

MODEL = "claude-sonnet-5-5"
HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello"}]


def post(proxy: ProxyProcess, body: Any, **kwargs: Any) -> httpx.Response:
    headers = {"x-api-key": "client", "anthropic-version": "2023-06-01"}
    if isinstance(body, bytes):
        headers["content-type"] = kwargs.pop("content_type", "application/json")
        return httpx.post(f"{proxy.url}/v1/messages", content=body, headers=headers, timeout=30)
    return httpx.post(f"{proxy.url}/v1/messages", json=body, headers=headers, timeout=30)


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    payload = response.json()
    assert payload["type"] == "error"
    return response.status_code, payload["error"]["type"], payload["error"]["message"]


def budget(proxy: ProxyProcess) -> dict[str, Any]:
    scopes: list[dict[str, Any]] = httpx.get(f"{proxy.admin_url}/kubeagents/budget").json()[
        "scopes"
    ]
    return scopes[0]


def settled(proxy: ProxyProcess) -> dict[str, Any]:
    """The agent scope once no reservation is outstanding (settlement is asynchronous)."""
    return wait_for(
        lambda: (state := budget(proxy))["tokens"]["reserved"] == 0 and state,
        timeout=10,
        what="every reservation to be settled",
    )


def start_slow_call(proxy: ProxyProcess, fake: FakeAnthropicControl) -> threading.Thread:
    """A call that holds its slot for 6 s; returns once the upstream is working on it."""
    fake.enqueue(Reply.with_text("slow", latency_ms=6000))
    slow = threading.Thread(
        target=post, args=(proxy, {"model": MODEL, "max_tokens": 10, "messages": HELLO})
    )
    slow.start()
    wait_for(
        lambda: fake.script()["queued"] == [],  # the slow reply was taken
        timeout=10,
        what=f"the slow call upstream (upstream saw {fake.requests()})",
    )
    return slow


def test_a_model_off_the_allow_list_is_refused_with_403(start_proxies: StartProxy) -> None:
    proxy = start_proxies()
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        sdk(proxy).messages.create(model="claude-opus-5-5", max_tokens=16, messages=HELLO)
    message = str(refused.value.body)
    assert "model claude-opus-5-5 is not allowed for agent research" in message
    assert "allowed: claude-haiku-4-5, claude-sonnet-5-5" in message


def test_max_tokens_over_the_per_call_cap_is_rejected_with_the_numbers(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies(max_tokens_per_call=1000)
    status, kind, message = error_of(
        post(proxy, {"model": MODEL, "max_tokens": 990, "messages": HELLO})
    )
    assert (status, kind) == (400, "invalid_request_error")
    assert "max_tokens 990 exceeds the" in message
    assert "per-call cap of 1,000" in message
    assert [r.path for r in fake_anthropic.requests()] == ["/v1/messages/count_tokens"]


def test_clamp_policy_lowers_max_tokens_to_what_the_cap_leaves(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies(max_tokens_per_call=1000, max_tokens_policy="clamp")
    response = post(proxy, {"model": MODEL, "max_tokens": 990, "messages": HELLO})
    assert response.status_code == 200, response.text
    sent = fake_anthropic.requests()[-1].body["max_tokens"]
    assert 0 < sent < 990


def test_an_input_alone_over_the_cap_is_413(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies(max_tokens_per_call=500)
    long_text = [{"role": "user", "content": "word " * 3000}]
    status, kind, message = error_of(
        post(proxy, {"model": MODEL, "max_tokens": 10, "messages": long_text})
    )
    assert (status, kind) == (413, "request_too_large")
    assert "per-call cap of 500 tokens" in message


BAD_INPUTS: list[tuple[str, Any, int, str]] = [
    ("malformed JSON", b'{"model": ', 400, "body: not valid JSON"),
    ("not an object", b"[1, 2]", 400, "body: must be a JSON object"),
    ("missing max_tokens", {"model": MODEL, "messages": HELLO}, 400, "max_tokens: an integer"),
    ("negative max_tokens", {"model": MODEL, "max_tokens": -5, "messages": HELLO}, 400, "max_tokens: must be between 1"),  # noqa: E501
    ("huge max_tokens", {"model": MODEL, "max_tokens": 2**40, "messages": HELLO}, 400, "max_tokens: must be between 1"),  # noqa: E501
    ("string max_tokens", {"model": MODEL, "max_tokens": "100", "messages": HELLO}, 400, "max_tokens: an integer"),  # noqa: E501
    ("model not a string", {"model": 7, "max_tokens": 10, "messages": HELLO}, 400, "model: a non-empty string"),  # noqa: E501
    ("unknown model", {"model": "gpt-9", "max_tokens": 10, "messages": HELLO}, 403, "model gpt-9 is not allowed"),  # noqa: E501
    ("messages not a list", {"model": MODEL, "max_tokens": 10, "messages": "hi"}, 400, "messages: a non-empty list"),  # noqa: E501
    ("stream not a bool", {"model": MODEL, "max_tokens": 10, "messages": HELLO, "stream": "yes"}, 400, "stream: must be a boolean"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "body", "status", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_a_clear_4xx_and_changes_no_ledger_state(
    start_proxies: StartProxy,
    fake_anthropic: FakeAnthropicControl,
    redis_url: str,
    redis_client: redis.Redis,
    case: str,
    body: Any,
    status: int,
    message: str,
) -> None:
    proxy = start_proxies(
        redis_url=redis_url, budget_tokens_per_day=100_000, requests_per_minute=100
    )
    got_status, _, got_message = error_of(post(proxy, body))
    assert (got_status, message in got_message) == (status, True), got_message
    assert redis_client.keys("*") == []
    assert "/v1/messages" not in [r.path for r in fake_anthropic.requests()]


def test_wrong_content_type_and_oversized_body_are_refused(
    start_proxies: StartProxy, redis_url: str, redis_client: redis.Redis
) -> None:
    proxy = start_proxies(redis_url=redis_url, budget_tokens_per_day=100_000, max_body_bytes=4096)
    body = json.dumps({"model": MODEL, "max_tokens": 10, "messages": HELLO}).encode()
    status, _, message = error_of(post(proxy, body, content_type="text/plain"))
    assert (status, "content-type must be application/json, not text/plain" in message) == (
        400,
        True,
    )
    big = json.dumps(
        {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x" * 10_000}]}
    )
    status, kind, message = error_of(post(proxy, big.encode()))
    assert (status, kind) == (413, "request_too_large")
    assert "4,096 bytes" in message
    assert redis_client.keys("*") == []


def test_exhausted_token_budget_is_a_429_naming_the_numbers_with_retry_after(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(redis_url=redis_url, budget_tokens_per_day=3000)
    fake_anthropic.enqueue(Reply.with_text("long answer", input_tokens=2500, output_tokens=400))
    assert post(proxy, {"model": MODEL, "max_tokens": 500, "messages": HELLO}).status_code == 200
    assert settled(proxy)["tokens"]["used"] == 2900

    refused = post(proxy, {"model": MODEL, "max_tokens": 500, "messages": HELLO})
    status, kind, message = error_of(refused)
    assert (status, kind) == (429, "rate_limit_error")
    assert message.startswith("daily token budget of agent research exhausted: 2,900 used")
    assert "of 3,000 in the last 24h" in message
    retry_after = int(refused.headers["retry-after"])
    assert 86_000 <= retry_after <= 86_400 + 60
    calls = [r.path for r in fake_anthropic.requests() if r.path == "/v1/messages"]
    assert len(calls) == 1  # the refused call never went upstream (only count_tokens did)


def test_dollar_budget_refuses_when_spent_and_refuses_unpriced_models(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(
        redis_url=redis_url,
        budget_usd_per_day="0.05",
        allowed_models=[MODEL, "claude-mythos-5"],
    )
    with pytest.raises(anthropic.PermissionDeniedError, match="has no price"):
        sdk(proxy).messages.create(model="claude-mythos-5", max_tokens=16, messages=HELLO)
    # Sonnet 5.5: $2/$10 per MTok -> 20,000 input tokens cost $0.04.
    fake_anthropic.enqueue(Reply.with_text("ok", input_tokens=20_000, output_tokens=1))
    assert post(proxy, {"model": MODEL, "max_tokens": 1000, "messages": HELLO}).status_code == 200
    state = settled(proxy)
    assert state["usd"]["used"] == pytest.approx(0.04001)
    status, kind, message = error_of(
        post(proxy, {"model": MODEL, "max_tokens": 1000, "messages": HELLO})
    )
    assert (status, kind) == (429, "rate_limit_error")
    assert "USD budget of agent research exhausted" in message


def test_requests_per_minute_cap_is_a_429_with_retry_after(
    start_proxies: StartProxy, redis_url: str
) -> None:
    proxy = start_proxies(redis_url=redis_url, requests_per_minute=2)
    for _ in range(2):
        assert post(proxy, {"model": MODEL, "max_tokens": 10, "messages": HELLO}).status_code == 200
    refused = post(proxy, {"model": MODEL, "max_tokens": 10, "messages": HELLO})
    status, kind, message = error_of(refused)
    assert (status, kind) == (429, "rate_limit_error")
    assert "request rate of agent research exhausted: 2 calls in the last 60s" in message
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_pod_concurrency_cap_waits_then_refuses(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies(max_concurrent_calls=1, concurrency_wait_seconds=0.2)
    slow = start_slow_call(proxy, fake_anthropic)
    status, kind, message = error_of(
        post(proxy, {"model": MODEL, "max_tokens": 10, "messages": HELLO})
    )
    slow.join()
    assert (status, kind) == (429, "rate_limit_error")
    assert "concurrency cap of this pod reached: 1 calls in flight" in message


def test_a_timeout_is_a_504_and_the_reservation_is_settled_not_leaked(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(
        redis_url=redis_url, budget_tokens_per_day=100_000, request_timeout_seconds=1
    )
    fake_anthropic.enqueue(Reply.with_text("too late", latency_ms=3000))
    status, kind, _ = error_of(post(proxy, {"model": MODEL, "max_tokens": 100, "messages": HELLO}))
    assert (status, kind) == (504, "timeout_error")
    state = settled(proxy)
    # Nobody knows what the model did before the timeout: the worst case is charged, not leaked.
    assert state["tokens"]["reserved"] == 0
    assert state["tokens"]["used"] > 100


def test_overloaded_upstream_is_retried_within_the_deadline(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies()
    fake_anthropic.enqueue(ErrorReply(status=529, retry_after=0), Reply.with_text("second try"))
    message = sdk(proxy).messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    assert message.content[0].type == "text"
    assert message.content[0].text == "second try"
    assert len(fake_anthropic.requests()) == 2


def test_a_spend_limit_429_from_the_provider_is_not_retried(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies()
    fake_anthropic.enqueue(
        ErrorReply(
            status=429, retry_after=0, message="Your organization has reached its spend limit"
        ),
        Reply.with_text("must not be reached"),
    )
    with pytest.raises(anthropic.RateLimitError, match="spend limit"):
        sdk(proxy).messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    assert len(fake_anthropic.requests()) == 1


def test_redis_down_fails_closed_with_503_and_recovers_by_itself(
    start_proxies: StartProxy, tmp_path: Path
) -> None:
    server = start_redis(tmp_path / "redis")
    proxy = start_proxies(redis_url=server.url, budget_tokens_per_day=100_000)
    body = {"model": MODEL, "max_tokens": 10, "messages": HELLO}
    assert post(proxy, body).status_code == 200
    server.stop()
    status, kind, message = error_of(post(proxy, body))
    assert (status, kind) == (503, "api_error")
    assert "budget ledger unavailable" in message
    assert httpx.get(f"{proxy.admin_url}/readyz").status_code == 503
    restarted = start_redis(tmp_path / "redis-again", port=server.port)
    try:
        wait_for(
            lambda: post(proxy, body).status_code == 200, timeout=20, what="the proxy to recover"
        )
        assert httpx.get(f"{proxy.admin_url}/readyz").status_code == 200
    finally:
        restarted.stop()


def test_agent_concurrency_cap_holds_across_replicas(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    settings = {
        "redis_url": redis_url,
        "max_concurrent_calls_per_agent": 1,
        "concurrency_wait_seconds": 0.2,
    }
    first, second = start_proxies("replica-a", **settings), start_proxies("replica-b", **settings)
    slow = start_slow_call(first, fake_anthropic)
    refused = post(second, {"model": MODEL, "max_tokens": 10, "messages": HELLO})
    slow.join()
    status, kind, message = error_of(refused)
    assert (status, kind) == (429, "rate_limit_error")
    assert "concurrency cap of agent research reached: 1 calls in flight across all" in message
    # The lease is released at the end of the call: the next call gets the slot.
    assert post(second, {"model": MODEL, "max_tokens": 10, "messages": HELLO}).status_code == 200


def test_a_silent_stream_ends_with_a_timeout_error_event(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies(stream_idle_timeout_seconds=1)
    fake_anthropic.enqueue(Reply.with_text("a b c d e f", event_delay_ms=4000))
    body = {"model": MODEL, "max_tokens": 50, "messages": HELLO, "stream": True}
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/messages",
        json=body,
        headers={"x-api-key": "client", "anthropic-version": "2023-06-01"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    assert lines[0] == "event: message_start"
    assert "event: error" in lines
    error = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))
    assert error["error"]["type"] == "timeout_error"


def test_a_run_budget_header_adds_a_second_scope_that_refuses_on_its_own(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(redis_url=redis_url, budget_tokens_per_day=1_000_000)
    run_budget = {"kubeagents-run-budget": "run=team-run-7; tokens=600"}
    fake_anthropic.enqueue(Reply.with_text("first", input_tokens=300, output_tokens=200))
    client = sdk(proxy, default_headers=run_budget)
    client.messages.create(model=MODEL, max_tokens=200, messages=HELLO)
    run = wait_for(
        lambda: (
            (s := httpx.get(f"{proxy.admin_url}/kubeagents/budget?run=team-run-7").json())[
                "scopes"
            ][1]["tokens"]["reserved"]
            == 0
            and s
        ),
        timeout=10,
        what="the run scope to be settled",
    )
    assert run["scopes"][1]["scope"] == "run:team-run-7"
    assert run["scopes"][1]["tokens"]["used"] == 500
    with pytest.raises(anthropic.RateLimitError, match="budget of run team-run-7 exhausted"):
        client.messages.create(model=MODEL, max_tokens=200, messages=HELLO)
    # The agent scope alone would have let it through.
    assert sdk(proxy).messages.create(model=MODEL, max_tokens=200, messages=HELLO).content


def test_a_malformed_run_budget_header_is_a_400(start_proxies: StartProxy, redis_url: str) -> None:
    proxy = start_proxies(redis_url=redis_url, budget_tokens_per_day=1_000)
    client = sdk(proxy, default_headers={"kubeagents-run-budget": "run=r1; tokens=lots"})
    with pytest.raises(anthropic.BadRequestError, match="tokens must be an integer"):
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)


def test_content_the_body_cannot_bound_is_measured_with_count_tokens_first(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl, redis_url: str
) -> None:
    proxy = start_proxies(redis_url=redis_url, budget_tokens_per_day=1_000_000)
    image: anthropic.types.MessageParam = {
        "role": "user",
        "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.invalid/x.png"}},
            {"type": "text", "text": "what is this?"},
        ],
    }
    sdk(proxy).messages.create(model=MODEL, max_tokens=10, messages=[image])
    paths = [r.path for r in fake_anthropic.requests()]
    assert paths == ["/v1/messages/count_tokens", "/v1/messages"]
