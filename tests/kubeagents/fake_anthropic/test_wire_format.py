"""The fake's wire format, seen with raw HTTP: what the SDK hides from its users."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from kubeagents.fake_anthropic import FakeAnthropicControl, Reply, StreamError

HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
MODEL = "claude-sonnet-4-6"
BODY: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Hi"}],
}


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; every event has exactly one event and data line."""
    events = []
    for frame in text.split("\n\n"):
        if not frame:
            continue
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ")
        assert data_line.startswith("data: ")
        events.append((event_line[len("event: ") :], json.loads(data_line[len("data: ") :])))
    return events


def test_stream_has_anthropics_exact_event_names_order_and_ping(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_tool_use("f", {"a": 1}, text="Hello!", chunk_chars=3))
    response = http.post("/v1/messages", headers=HEADERS, json={**BODY, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["request-id"].startswith("req_")
    assert response.text.endswith("\n\n")
    events = parse_sse(response.text)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_01")
    assert (start["content"], start["stop_reason"], start["stop_sequence"]) == ([], None, None)
    assert set(start["usage"]) >= {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    }
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert [data["delta"]["text"] for _, data in events[3:5]] == ["Hel", "lo!"]
    tool_block = events[6][1]["content_block"]
    assert tool_block["input"] == {}
    assert tool_block["id"].startswith("toolu_01")
    assert [data["delta"]["partial_json"] for _, data in events[7:11]] == ["", '{"a', '":1', "}"]
    message_delta = events[-2][1]
    assert message_delta["delta"]["stop_reason"] == "tool_use"
    assert message_delta["usage"] == {
        "input_tokens": start["usage"]["input_tokens"],
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 2 + 2,  # "Hello!" = 6 bytes; "f" + '{"a":1}' = 8 bytes
    }


def test_stream_error_event_follows_the_first_n_events_and_ends_the_stream(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        Reply.with_text("abc", stream_error=StreamError(after_events=2, message="try later"))
    )
    response = http.post("/v1/messages", headers=HEADERS, json={**BODY, "stream": True})
    events = parse_sse(response.text)
    assert [name for name, _ in events] == ["message_start", "content_block_start", "error"]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "try later"},
        "request_id": response.headers["request-id"],
    }


def test_message_response_has_request_id_json_content_type_and_the_full_usage(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    response = http.post("/v1/messages", headers=HEADERS, json=BODY)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["request-id"].startswith("req_")
    message = response.json()
    assert list(message) == [
        "id",
        "type",
        "role",
        "model",
        "content",
        "stop_reason",
        "stop_sequence",
        "stop_details",
        "usage",
    ]
    assert message["usage"]["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 0,
    }
    assert message["usage"]["service_tier"] == "standard"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 10, "messages": BODY["messages"]}, "model"),
        ({**BODY, "model": 7}, "model"),
        ({"model": MODEL, "max_tokens": 10}, "messages"),
        ({**BODY, "messages": []}, "messages"),
        ({**BODY, "messages": "hi"}, "messages"),
        ({**BODY, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({**BODY, "messages": [{"role": "user"}]}, "messages.0.content"),
        ({"model": MODEL, "messages": BODY["messages"]}, "max_tokens"),
        ({**BODY, "max_tokens": "10"}, "max_tokens"),
        ({**BODY, "max_tokens": 0}, "max_tokens"),
        ({**BODY, "stream": "yes"}, "stream"),
        ({**BODY, "stop_sequences": [1]}, "stop_sequences.0"),
    ],
)
def test_invalid_body_is_a_400_naming_the_field(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl, body: dict[str, Any], field: str
) -> None:
    response = http.post("/v1/messages", headers=HEADERS, json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(f"{field}: ")
    assert error["request_id"] == response.headers["request-id"]


def test_body_that_is_not_json_is_a_400_naming_the_body(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    response = http.post("/v1/messages", headers=HEADERS, content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("body: not valid JSON")


def test_invalid_requests_do_not_consume_the_script(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("kept"))
    assert http.post("/v1/messages", headers=HEADERS, json={**BODY, "max_tokens": 0}).is_error
    assert http.post("/v1/messages", headers=HEADERS, json={**BODY, "model": "x"}).is_error
    response = http.post("/v1/messages", headers=HEADERS, json=BODY)
    assert response.json()["content"] == [{"type": "text", "text": "kept"}]


def test_missing_api_key_is_a_401_and_a_bearer_token_is_accepted(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    missing = http.post("/v1/messages", headers={"anthropic-version": "2023-06-01"}, json=BODY)
    assert missing.status_code == 401
    assert missing.json()["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }
    bearer = http.post(
        "/v1/messages",
        headers={"authorization": "Bearer sk-test", "anthropic-version": "2023-06-01"},
        json=BODY,
    )
    assert bearer.status_code == 200


def test_missing_anthropic_version_is_a_400(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    response = http.post("/v1/messages", headers={"x-api-key": "k"}, json=BODY)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "anthropic-version: header is required"


def test_unknown_path_is_a_404_and_wrong_method_a_405(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    assert http.get("/v1/nothing", headers=HEADERS).json()["error"]["type"] == "not_found_error"
    assert http.get("/v1/messages", headers=HEADERS).status_code == 405


def test_count_tokens_returns_only_input_tokens_and_needs_no_max_tokens(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 8}]}
    response = http.post("/v1/messages/count_tokens", headers=HEADERS, json=body)
    assert response.status_code == 200
    assert response.json() == {"input_tokens": 2 + 1 + 3}  # 8 bytes + "user", 1 message
    assert fake_anthropic.requests()[0].streamed is None


def test_models_list_has_anthropics_list_shape_and_cursor_paging(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    first = http.get("/v1/models", headers=HEADERS, params={"limit": 2}).json()
    assert set(first) == {"data", "has_more", "first_id", "last_id"}
    assert first["has_more"] is True
    assert {"type", "id", "display_name", "created_at"} <= set(first["data"][0])
    second = http.get(
        "/v1/models", headers=HEADERS, params={"limit": 2, "after_id": first["last_id"]}
    ).json()
    assert second["first_id"] not in {first["first_id"], first["last_id"]}
    bad = http.get("/v1/models", headers=HEADERS, params={"limit": 0})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"].startswith("limit:")


def test_every_request_is_recorded_with_headers_body_and_streamed_flag(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    http.post("/v1/messages", headers={**HEADERS, "X-Trace": "abc"}, json=BODY)
    http.post("/v1/messages", headers=HEADERS, json={**BODY, "stream": True})
    http.get("/v1/models", headers=HEADERS, params={"limit": 1})
    http.post("/v1/messages", headers={"anthropic-version": "2023-06-01"}, json=BODY)
    plain, streamed, models, unauthorised = fake_anthropic.wait_for_requests(4)
    assert [r.index for r in (plain, streamed, models, unauthorised)] == [0, 1, 2, 3]
    assert (plain.method, plain.path, plain.body) == ("POST", "/v1/messages", BODY)
    assert plain.headers["x-trace"] == "abc"
    assert plain.headers["x-api-key"] == "test-key"
    assert (plain.streamed, plain.disconnected, plain.status) == (False, False, 200)
    assert (streamed.streamed, streamed.disconnected) == (True, False)
    assert (models.method, models.query, models.body, models.streamed) == (
        "GET",
        "limit=1",
        None,
        None,
    )
    assert unauthorised.status == 401
    assert plain.received_at <= streamed.received_at <= models.received_at
    assert fake_anthropic.requests(since=2) == [models, unauthorised]


def test_client_disconnect_mid_stream_is_recorded(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("x" * 400, chunk_chars=4, event_delay_ms=20))
    with http.stream("POST", "/v1/messages", headers=HEADERS, json={**BODY, "stream": True}) as r:
        first = next(r.iter_bytes())
        assert first.startswith(b"event: message_start")
    (record,) = fake_anthropic.wait_for_requests(1)
    assert record.streamed is True
    assert record.disconnected is True
    assert record.status == 200
