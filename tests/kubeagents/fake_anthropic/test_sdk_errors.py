"""Scripted and validation errors reach the official SDK as its typed exceptions."""

from __future__ import annotations

import anthropic
import pytest
from anthropic._exceptions import OverloadedError

from kubeagents.fake_anthropic import ErrorReply, FakeAnthropicControl, Reply, StreamError

MODEL = "claude-sonnet-4-6"
USER: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, OverloadedError, "overloaded_error"),
    ],
)
def test_scripted_http_error_raises_the_sdks_class_with_type_and_message_in_the_body(
    client: anthropic.Anthropic,
    fake_anthropic: FakeAnthropicControl,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    fake_anthropic.enqueue(ErrorReply(status=status, message=f"scripted {status}"))
    with pytest.raises(error_class) as raised:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    error = raised.value
    assert error.status_code == status
    assert error.body == {
        "type": "error",
        "error": {"type": error_type, "message": f"scripted {status}"},
        "request_id": error.request_id,
    }
    assert error.request_id is not None
    assert error.request_id.startswith("req_")


def test_scripted_error_type_and_headers_are_sent_as_given(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        ErrorReply(
            status=529,
            error_type="overloaded_error",
            retry_after=7,
            headers={"x-should-retry": "false"},
        )
    )
    with pytest.raises(OverloadedError) as raised:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert raised.value.api_message == "Overloaded"


def test_unknown_model_raises_not_found_naming_the_model(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(model="gpt-4o", max_tokens=10, messages=USER)
    assert raised.value.type == "not_found_error"
    assert raised.value.api_message == "model: gpt-4o"


def test_invalid_max_tokens_raises_bad_request_naming_the_field(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model=MODEL, max_tokens=0, messages=USER)
    assert raised.value.type == "invalid_request_error"
    assert raised.value.api_message is not None
    assert raised.value.api_message.startswith("max_tokens:")


def test_mid_stream_error_event_raises_an_api_status_error_after_the_first_events(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        Reply.with_text(
            "partial answer that never ends",
            chunk_chars=4,
            stream_error=StreamError(after_events=5, error_type="overloaded_error"),
        )
    )
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream,
    ):
        received.extend(stream.text_stream)
    # message_start, content_block_start, ping, two text deltas, then the error.
    assert received == ["part", "ial "]
    assert raised.value.status_code == 200
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": raised.value.request_id,
    }


def test_stream_error_scripted_for_a_non_streaming_request_is_an_http_error(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply(stream_error=StreamError(error_type="overloaded_error")))
    with pytest.raises(OverloadedError):
        client.messages.create(model=MODEL, max_tokens=100, messages=USER)


def test_sdk_honours_retry_after_then_succeeds(fake_anthropic: FakeAnthropicControl) -> None:
    fake_anthropic.enqueue(
        ErrorReply(status=429, message="slow down", retry_after=1), Reply.with_text("finally")
    )
    with anthropic.Anthropic(
        api_key="test-key", base_url=fake_anthropic.base_url, max_retries=1
    ) as sdk:
        message = sdk.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert isinstance(message.content[0], anthropic.types.TextBlock)
    assert message.content[0].text == "finally"
    first, second = fake_anthropic.requests()
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 0.95
    assert second.headers["x-stainless-retry-count"] == "1"
