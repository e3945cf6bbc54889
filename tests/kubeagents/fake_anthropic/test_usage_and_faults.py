"""What the real API does that the body cannot show, and how it breaks: server-tool usage and
input, echoed request options, answers without usage, connections dropped on purpose."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import anthropic
import httpx
import pytest

from kubeagents.fake_anthropic import Drop, FakeAnthropicControl, Reply, ServerToolUse

MODEL = "claude-sonnet-4-6"
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
USER: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": USER}
STREAM_BODY = {**BODY, "stream": True}
ESTIMATE = 2 + 3  # "Hi" + "user" = 6 bytes -> 2 tokens, plus 3 for the one message
SEARCHES = ServerToolUse(web_search_requests=2, web_fetch_requests=1)
USES = {"web_search_requests": 2, "web_fetch_requests": 1}
NO_USES = {"web_search_requests": 0, "web_fetch_requests": 0}


def sse_data(text: str) -> dict[str, dict[str, Any]]:
    """The data of each SSE event by event name (the last one of a name wins)."""
    events = {}
    for frame in text.split("\n\n"):
        if frame:
            event_line, data_line = frame.split("\n")
            events[event_line.removeprefix("event: ")] = json.loads(
                data_line.removeprefix("data: ")
            )
    return events


# --- server tools ----------------------------------------------------------------------------


def test_a_message_reports_server_tool_use_and_the_input_the_tools_added(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        Reply.with_text("found", server_tool_use=SEARCHES, server_tool_input_tokens=500)
    )
    usage = client.messages.create(model=MODEL, max_tokens=100, messages=USER).usage
    assert usage.input_tokens == ESTIMATE + 500
    assert usage.server_tool_use is not None
    assert usage.server_tool_use.web_search_requests == 2
    assert usage.server_tool_use.web_fetch_requests == 1


def test_a_stream_reports_server_tools_cumulatively_from_message_start_to_message_delta(
    http: httpx.Client, client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    reply = Reply.with_text(
        "found", input_tokens=100, server_tool_use=SEARCHES, server_tool_input_tokens=500
    )
    fake_anthropic.enqueue(reply, reply)
    events = sse_data(http.post("/v1/messages", headers=HEADERS, json=STREAM_BODY).text)
    start_usage = events["message_start"]["message"]["usage"]
    assert (start_usage["input_tokens"], start_usage["server_tool_use"]) == (100, NO_USES)
    assert events["message_delta"]["usage"] == {
        "input_tokens": 600,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 2,
        "server_tool_use": USES,
    }
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.usage.input_tokens == 600
    assert final.usage.server_tool_use is not None
    assert final.usage.server_tool_use.web_search_requests == 2


def test_count_tokens_counts_only_the_body_never_the_server_tools_input(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("found", server_tool_input_tokens=500))
    counted = client.messages.count_tokens(model=MODEL, messages=USER)
    created = client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert counted.input_tokens == ESTIMATE
    assert created.usage.input_tokens == ESTIMATE + 500


def test_without_server_tools_the_usage_has_no_server_tool_use(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    message = http.post("/v1/messages", headers=HEADERS, json=BODY).json()
    assert "server_tool_use" not in message["usage"]
    events = sse_data(http.post("/v1/messages", headers=HEADERS, json=STREAM_BODY).text)
    assert "server_tool_use" not in events["message_start"]["message"]["usage"]
    assert "server_tool_use" not in events["message_delta"]["usage"]


# --- request options echoed in usage ---------------------------------------------------------


def test_usage_echoes_the_requested_speed_and_inference_geo(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    options = {"speed": "fast", "inference_geo": "us"}
    message = http.post("/v1/messages", headers=HEADERS, json={**BODY, **options}).json()
    assert (message["usage"]["speed"], message["usage"]["inference_geo"]) == ("fast", "us")
    stream = {**STREAM_BODY, **options}
    start = sse_data(http.post("/v1/messages", headers=HEADERS, json=stream).text)
    usage = start["message_start"]["message"]["usage"]
    assert (usage["speed"], usage["inference_geo"]) == ("fast", "us")


def test_usage_reports_standard_speed_and_no_geo_when_none_was_asked_for(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    usage = client.messages.create(model=MODEL, max_tokens=100, messages=USER).usage
    assert (usage.speed, usage.inference_geo) == ("standard", "not_available")


@pytest.mark.parametrize("option", ["speed", "inference_geo"])
def test_a_request_option_that_is_not_a_string_is_a_400_naming_it(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl, option: str
) -> None:
    response = http.post("/v1/messages", headers=HEADERS, json={**BODY, option: 5})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"{option}: Input should be a valid string"


# --- answers without usage -------------------------------------------------------------------


def test_omit_usage_sends_a_message_without_usage_that_is_still_billed(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("no usage", omit_usage=True, output_tokens=30))
    response = http.post("/v1/messages", headers=HEADERS, json=BODY)
    assert response.status_code == 200
    message = response.json()
    assert "usage" not in message
    assert message["content"] == [{"type": "text", "text": "no usage"}]
    (record,) = fake_anthropic.wait_for_requests(1)
    assert record.billed is not None
    assert (record.billed.input_tokens, record.billed.output_tokens) == (ESTIMATE, 30)


def test_omit_usage_sends_a_stream_whose_message_start_and_delta_have_no_usage(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("no usage", omit_usage=True))
    events = sse_data(http.post("/v1/messages", headers=HEADERS, json=STREAM_BODY).text)
    assert "usage" not in events["message_start"]["message"]
    assert "usage" not in events["message_delta"]
    assert events["message_delta"]["delta"]["stop_reason"] == "end_turn"
    assert "message_stop" in events
    (record,) = fake_anthropic.wait_for_requests(1)
    assert record.billed is not None


# --- dropped connections ---------------------------------------------------------------------


async def aiohttp_post(base_url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/v1/messages", json=body, headers=HEADERS) as response,
    ):
        return response.status, await response.read()


def test_a_drop_after_the_request_closes_the_connection_without_any_response(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Drop(), Drop(), Drop())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        asyncio.run(aiohttp_post(fake_anthropic.base_url, BODY))
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        httpx.post(f"{fake_anthropic.base_url}/v1/messages", headers=HEADERS, json=BODY)
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    records = fake_anthropic.wait_for_requests(3)
    assert [(r.status, r.dropped, r.disconnected, r.finished) for r in records] == [
        (None, True, False, True)
    ] * 3
    assert fake_anthropic.script()["queued"] == []


@pytest.mark.parametrize("body", [BODY, STREAM_BODY], ids=["json", "stream"])
def test_a_drop_after_the_headers_sends_200_headers_and_then_no_body(
    fake_anthropic: FakeAnthropicControl, body: dict[str, Any]
) -> None:
    fake_anthropic.enqueue(Drop(after="headers"), Drop(after="headers"))
    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(aiohttp_post(fake_anthropic.base_url, body))
    with (
        httpx.Client(base_url=fake_anthropic.base_url, timeout=10) as raw,
        raw.stream("POST", "/v1/messages", headers=HEADERS, json=body) as response,
    ):
        assert response.status_code == 200
        expected_type = "text/event-stream" if body is STREAM_BODY else "application/json"
        assert response.headers["content-type"].startswith(expected_type)
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()
    records = fake_anthropic.wait_for_requests(2)
    assert [(r.status, r.dropped, r.disconnected) for r in records] == [(200, True, False)] * 2


def test_a_drop_waits_its_latency_answers_times_requests_then_leaves_the_script(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Drop(latency_ms=300, times=2), Reply.with_text("after the drops"))
    began = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/messages", headers=HEADERS, json=BODY)
    assert time.monotonic() - began >= 0.3
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/messages", headers=HEADERS, json=BODY)
    response = http.post("/v1/messages", headers=HEADERS, json=BODY)
    assert response.json()["content"] == [{"type": "text", "text": "after the drops"}]


def test_a_drop_can_be_the_default_entry(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.set_default(Drop(billed=False))
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/v1/messages", headers=HEADERS, json=BODY)
    assert fake_anthropic.script()["default"] == {
        "kind": "drop",
        "after": "request",
        "billed": False,
        "billed_output_tokens": 0,
        "latency_ms": None,
        "times": 1,
    }
