"""The `/_fake/*` control API: programming, inspecting, resetting, and refusing bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from kubeagents.fake_anthropic import (
    Drop,
    ErrorReply,
    FakeAnthropicControl,
    FakeAnthropicControlError,
    Reply,
)

HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "?"}],
}


def test_health_answers_ok(fake_anthropic: FakeAnthropicControl) -> None:
    assert fake_anthropic.health() is True


def test_script_lists_queued_entries_with_remaining_uses_and_the_default(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    assert fake_anthropic.enqueue(Reply.with_text("a", times=2), ErrorReply(status=500)) == 2
    http.post("/v1/messages", headers=HEADERS, json=BODY)
    script = fake_anthropic.script()
    assert [(item["entry"]["kind"], item["remaining"]) for item in script["queued"]] == [
        ("reply", 1),
        ("error", 1),
    ]
    assert script["queued"][0]["entry"]["content"] == [{"type": "text", "text": "a"}]
    assert script["default"]["kind"] == "reply"


def test_enqueue_accepts_plain_json_entries(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue({"kind": "reply", "content": [{"type": "text", "text": "raw"}]})
    response = http.post("/v1/messages", headers=HEADERS, json=BODY)
    assert response.json()["content"] == [{"type": "text", "text": "raw"}]


def test_reset_forgets_script_records_and_default(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("queued"))
    fake_anthropic.set_default(ErrorReply(status=500))
    http.post("/v1/models", headers=HEADERS)
    fake_anthropic.reset()
    assert fake_anthropic.requests() == []
    script = fake_anthropic.script()
    assert script["queued"] == []
    assert script["default"]["kind"] == "reply"
    assert http.post("/v1/messages", headers=HEADERS, json=BODY).status_code == 200
    assert fake_anthropic.requests()[0].index == 0


def test_script_lists_drops_and_billed_errors_with_all_their_fields(
    fake_anthropic: FakeAnthropicControl,
) -> None:
    fake_anthropic.enqueue(
        Drop(after="headers", billed_output_tokens=3, times=2),
        ErrorReply(status=503, billed=True, billed_output_tokens=9),
    )
    drop, error = (item["entry"] for item in fake_anthropic.script()["queued"])
    assert drop == {
        "kind": "drop",
        "after": "headers",
        "billed": True,
        "billed_output_tokens": 3,
        "latency_ms": None,
        "times": 2,
    }
    assert (error["kind"], error["billed"], error["billed_output_tokens"]) == ("error", True, 9)


def test_bill_answers_the_sums_with_every_field(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("a", input_tokens=10, output_tokens=2))
    http.post("/v1/messages", headers=HEADERS, json=BODY)
    assert http.get("/_fake/bill").json() == {
        "requests": 1,
        "input_tokens": 10,
        "output_tokens": 2,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "web_search_requests": 0,
        "web_fetch_requests": 0,
        "total_tokens": 12,
    }


def test_clear_requests_keeps_the_script(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("still here"))
    http.get("/v1/models", headers=HEADERS)
    fake_anthropic.clear_requests()
    assert fake_anthropic.requests() == []
    assert len(fake_anthropic.script()["queued"]) == 1


@pytest.mark.parametrize(
    ("entries", "field"),
    [
        ([{"kind": "error", "status": 200}], "replies.0.error.status"),
        ([{"kind": "reply", "content": [{"type": "image"}]}], "replies.0.reply.content.0"),
        (
            [{"kind": "reply", "content": [{"type": "tool_use"}]}],
            "replies.0.reply.content.0.tool_use.name",
        ),
        (
            [{"kind": "reply"}, {"kind": "reply", "stop_reason": "bored"}],
            "replies.1.reply.stop_reason",
        ),
        ([{"kind": "reply", "output_tokens": -1}], "replies.0.reply.output_tokens"),
        ([{"kind": "reply", "times": 0}], "replies.0.reply.times"),
        ([{"kind": "reply", "latency": 5}], "replies.0.reply.latency"),
        ([{"kind": "drop", "after": "body"}], "replies.0.drop.after"),
        ([{"kind": "drop", "billed_output_tokens": -1}], "replies.0.drop.billed_output_tokens"),
        ([{"kind": "drop", "status": 500}], "replies.0.drop.status"),
        ([{"kind": "error", "status": 500, "billed": "maybe"}], "replies.0.error.billed"),
        (
            [{"kind": "reply", "server_tool_use": {"web_search_requests": -1}}],
            "replies.0.reply.server_tool_use.web_search_requests",
        ),
        (
            [{"kind": "reply", "server_tool_use": {"searches": 1}}],
            "replies.0.reply.server_tool_use.searches",
        ),
        (
            [{"kind": "reply", "server_tool_input_tokens": -5}],
            "replies.0.reply.server_tool_input_tokens",
        ),
        ([{"kind": "reply", "omit_usage": "perhaps"}], "replies.0.reply.omit_usage"),
        ([{"kind": "surprise"}], "replies.0"),
        ([], "replies"),
    ],
)
def test_bad_script_input_is_a_400_naming_the_field_and_changes_nothing(
    fake_anthropic: FakeAnthropicControl, entries: list[dict[str, Any]], field: str
) -> None:
    fake_anthropic.enqueue(Reply.with_text("before"))
    before = (fake_anthropic.script(), fake_anthropic.bill())
    with pytest.raises(FakeAnthropicControlError) as raised:
        fake_anthropic.enqueue(*entries)
    assert raised.value.status == 400
    assert raised.value.message.startswith(f"{field}: ")
    assert (fake_anthropic.script(), fake_anthropic.bill()) == before


def test_bad_default_is_a_400_naming_the_field_and_keeps_the_old_default(
    fake_anthropic: FakeAnthropicControl,
) -> None:
    fake_anthropic.set_default(Reply.with_text("good default"))
    before = fake_anthropic.script()
    with pytest.raises(FakeAnthropicControlError) as raised:
        fake_anthropic.set_default({"kind": "error", "status": 404, "retry_after": "soon"})
    assert raised.value.status == 400
    assert raised.value.message.startswith("reply.error.retry_after: ")
    assert fake_anthropic.script() == before


@pytest.mark.parametrize(
    ("method", "path", "content", "field"),
    [
        ("POST", "/_fake/script", b"[not json", "body"),
        ("POST", "/_fake/script", b"[]", "body"),
        ("POST", "/_fake/script", b'{"replies": [], "extra": 1}', "replies"),
        ("PUT", "/_fake/default", b"", "body"),
        ("PUT", "/_fake/default", b'{"default": {}}', "reply"),
        ("GET", "/_fake/requests?since=-1", b"", "since"),
    ],
)
def test_malformed_control_requests_are_400s_naming_the_field(
    http: httpx.Client,
    fake_anthropic: FakeAnthropicControl,
    method: str,
    path: str,
    content: bytes,
    field: str,
) -> None:
    before = fake_anthropic.script()
    response = http.request(method, path, content=content)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(f"{field}: ")
    assert fake_anthropic.script() == before


def test_wait_for_requests_times_out_with_a_clear_message(
    fake_anthropic: FakeAnthropicControl,
) -> None:
    with pytest.raises(TimeoutError, match="recorded 0 requests"):
        fake_anthropic.wait_for_requests(1, timeout=0.1)
