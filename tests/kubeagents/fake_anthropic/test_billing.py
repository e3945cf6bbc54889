"""The fake's bill: what the provider billed per request (`RecordedRequest.billed`) and in sum
(`GET /_fake/bill`), for replies, disconnected streams, errors and drops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest

from kubeagents.fake_anthropic import (
    Bill,
    Drop,
    ErrorReply,
    FakeAnthropicControl,
    Reply,
    ServerToolUse,
    StreamError,
)

MODEL = "claude-sonnet-4-6"
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
USER: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": USER}
ESTIMATE = 2 + 3  # "Hi" + "user" = 6 bytes -> 2 tokens, plus 3 for the one message
NOTHING = Bill(
    requests=0,
    input_tokens=0,
    output_tokens=0,
    cache_creation_input_tokens=0,
    cache_read_input_tokens=0,
    web_search_requests=0,
    web_fetch_requests=0,
    total_tokens=0,
)
StartFake = Callable[..., FakeAnthropicControl]  # the `start_fake` fixture (conftest.py)


def billed(
    input_tokens: int,
    output_tokens: int,
    *,
    cache_creation: int = 0,
    cache_read: int = 0,
    searches: int = 0,
    fetches: int = 0,
    speed: str = "standard",
    inference_geo: str | None = None,
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
        "server_tool_use": {"web_search_requests": searches, "web_fetch_requests": fetches},
        "speed": speed,
        "inference_geo": inference_geo,
    }


def test_a_200_reply_bills_its_usage_and_the_bill_sums_the_replies(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        Reply.with_text(
            "first",
            input_tokens=100,
            output_tokens=20,
            cache_creation_input_tokens=30,
            cache_read_input_tokens=40,
        ),
        Reply.with_text(
            "second",
            input_tokens=50,
            output_tokens=5,
            server_tool_use=ServerToolUse(web_search_requests=2, web_fetch_requests=1),
            server_tool_input_tokens=700,
        ),
    )
    client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        stream.until_done()
    first, second = fake_anthropic.wait_for_requests(2)
    assert first.billed is not None
    assert first.billed.model_dump() == billed(100, 20, cache_creation=30, cache_read=40)
    assert second.billed is not None
    assert second.billed.model_dump() == billed(750, 5, searches=2, fetches=1)
    assert fake_anthropic.bill() == Bill(
        requests=2,
        input_tokens=850,
        output_tokens=25,
        cache_creation_input_tokens=30,
        cache_read_input_tokens=40,
        web_search_requests=2,
        web_fetch_requests=1,
        total_tokens=850 + 25 + 30 + 40,
    )


def test_a_stream_the_client_left_early_bills_the_whole_reply(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("x" * 400, chunk_chars=4, event_delay_ms=20))
    with http.stream("POST", "/v1/messages", headers=HEADERS, json={**BODY, "stream": True}) as r:
        assert next(r.iter_bytes()).startswith(b"event: message_start")
    (record,) = fake_anthropic.wait_for_requests(1)
    assert record.disconnected is True
    assert record.billed is not None
    assert record.billed.model_dump() == billed(ESTIMATE, 100)  # 400 bytes: all of it
    assert fake_anthropic.bill().output_tokens == 100


def test_a_scripted_error_bills_nothing_by_default(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(ErrorReply(status=529))
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    (record,) = fake_anthropic.wait_for_requests(1)
    assert record.billed is None
    assert fake_anthropic.bill() == NOTHING


def test_an_error_that_billed_bills_the_input_estimate_and_its_output_tokens(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(ErrorReply(status=500, billed=True, billed_output_tokens=7))
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    (record,) = fake_anthropic.wait_for_requests(1)
    assert record.status == 500
    assert record.billed is not None
    assert record.billed.model_dump() == billed(ESTIMATE, 7)
    assert fake_anthropic.bill().model_dump() == {
        **NOTHING.model_dump(),
        "requests": 1,
        "input_tokens": ESTIMATE,
        "output_tokens": 7,
        "total_tokens": ESTIMATE + 7,
    }


def test_a_stream_error_bills_as_a_200_stream_but_not_as_an_http_error(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    broken = Reply.with_text("abc", output_tokens=9, stream_error=StreamError(after_events=2))
    fake_anthropic.enqueue(broken, broken)
    with pytest.raises(anthropic.APIStatusError):  # not streamed: a 529
        client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream,
    ):
        stream.until_done()
    as_http_error, as_stream = fake_anthropic.wait_for_requests(2)
    assert (as_http_error.status, as_http_error.billed) == (529, None)
    assert as_stream.status == 200
    assert as_stream.billed is not None
    assert as_stream.billed.output_tokens == 9
    assert fake_anthropic.bill().requests == 1


def test_a_drop_bills_unless_told_otherwise(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Drop(billed_output_tokens=11), Drop(after="headers", billed=False))
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/v1/messages", headers=HEADERS, json=BODY)
    billed_drop, free_drop = fake_anthropic.wait_for_requests(2)
    assert billed_drop.billed is not None
    assert billed_drop.billed.model_dump() == billed(ESTIMATE, 11)
    assert free_drop.billed is None
    assert fake_anthropic.bill().total_tokens == ESTIMATE + 11


def test_requests_refused_before_the_script_and_other_endpoints_bill_nothing(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    assert http.post("/v1/messages", headers={"x-api-key": "k"}, json=BODY).status_code == 400
    assert http.post("/v1/messages", headers=HEADERS, json={**BODY, "max_tokens": 0}).is_error
    count = {"model": MODEL, "messages": USER}
    assert http.post("/v1/messages/count_tokens", headers=HEADERS, json=count).is_success
    assert http.get("/v1/models", headers=HEADERS).is_success
    records = fake_anthropic.wait_for_requests(4)
    assert [record.billed for record in records] == [None] * 4
    assert fake_anthropic.bill() == NOTHING


def test_the_bill_records_the_requested_speed_and_inference_geo(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        Reply.with_text("fast", input_tokens=10, output_tokens=2),
        ErrorReply(status=500, billed=True),
    )
    options = {"speed": "fast", "inference_geo": "us"}
    assert http.post("/v1/messages", headers=HEADERS, json={**BODY, **options}).is_success
    assert http.post("/v1/messages", headers=HEADERS, json={**BODY, **options}).is_error
    reply, error = fake_anthropic.wait_for_requests(2)
    assert reply.billed is not None
    assert reply.billed.model_dump() == billed(10, 2, speed="fast", inference_geo="us")
    assert error.billed is not None
    assert error.billed.model_dump() == billed(ESTIMATE, 0, speed="fast", inference_geo="us")


def test_reset_and_clearing_the_records_zero_the_bill(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    http.post("/v1/messages", headers=HEADERS, json=BODY)
    assert fake_anthropic.bill().requests == 1
    fake_anthropic.clear_requests()
    assert fake_anthropic.bill() == NOTHING
    http.post("/v1/messages", headers=HEADERS, json=BODY)
    assert fake_anthropic.bill().requests == 1
    fake_anthropic.reset()
    assert fake_anthropic.bill() == NOTHING


def test_the_bill_stays_exact_when_old_records_are_forgotten(start_fake: StartFake) -> None:
    fake = start_fake("--max-recorded", "1")
    fake.enqueue(*(Reply.with_text("r", input_tokens=10, output_tokens=1) for _ in range(3)))
    with httpx.Client(base_url=fake.base_url, timeout=10) as raw:
        for _ in range(3):
            assert raw.post("/v1/messages", headers=HEADERS, json=BODY).is_success
    assert len(fake.requests()) == 1
    assert fake.bill().model_dump() == {
        **NOTHING.model_dump(),
        "requests": 3,
        "input_tokens": 30,
        "output_tokens": 3,
        "total_tokens": 33,
    }
