"""`client.messages.create` / `count_tokens` / `models` of the official SDK against the fake."""

from __future__ import annotations

import math
import typing

import anthropic
from anthropic.types import Model, TextBlock, ToolUseBlock

from kubeagents.fake_anthropic import FakeAnthropicControl, Reply, catalog
from kubeagents.fake_anthropic import TextBlock as ScriptText
from kubeagents.fake_anthropic import ToolUseBlock as ScriptToolUse

MODEL = "claude-sonnet-4-6"
USER: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hello there"}]


def only_text(message: anthropic.types.Message) -> str:
    assert len(message.content) == 1
    block = message.content[0]
    assert isinstance(block, TextBlock)
    return block.text


def test_create_without_script_returns_the_default_text(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    message = client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert only_text(message) == "Hello from the fake Anthropic API."
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == math.ceil(len("Hello from the fake Anthropic API.") / 4)


def test_create_returns_the_programmed_text_with_the_echoed_model_and_message_ids(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("first"), Reply.with_text("second"))
    first = client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    second = client.messages.create(model="claude-opus-4-6", max_tokens=100, messages=USER)
    assert (only_text(first), only_text(second)) == ("first", "second")
    assert (first.model, second.model) == (MODEL, "claude-opus-4-6")
    assert first.id.startswith("msg_01")
    assert first.id != second.id
    assert first.type == "message"
    assert first.role == "assistant"
    assert first.stop_sequence is None


def test_create_returns_tool_use_blocks_and_stop_reason_tool_use(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        Reply(
            content=[
                ScriptText(text="Let me look."),
                ScriptToolUse(name="get_weather", input={"city": "Paris", "days": 2}),
                ScriptToolUse(name="get_time", input={}, id="toolu_fixed"),
            ]
        )
    )
    message = client.messages.create(model=MODEL, max_tokens=500, messages=USER)
    assert message.stop_reason == "tool_use"
    text, weather, clock = message.content
    assert isinstance(text, TextBlock)
    assert text.text == "Let me look."
    assert isinstance(weather, ToolUseBlock)
    assert weather.name == "get_weather"
    assert weather.input == {"city": "Paris", "days": 2}
    assert weather.id.startswith("toolu_01")
    assert isinstance(clock, ToolUseBlock)
    assert (clock.id, clock.name, clock.input) == ("toolu_fixed", "get_time", {})


def test_create_reports_scripted_usage_including_cache_fields(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        Reply.with_text(
            "cached",
            input_tokens=12,
            output_tokens=34,
            cache_creation_input_tokens=56,
            cache_read_input_tokens=78,
        )
    )
    usage = client.messages.create(model=MODEL, max_tokens=100, messages=USER).usage
    assert (usage.input_tokens, usage.output_tokens) == (12, 34)
    assert usage.cache_creation_input_tokens == 56
    assert usage.cache_read_input_tokens == 78
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 56
    assert usage.service_tier == "standard"


def test_create_estimates_input_tokens_from_the_body_when_not_scripted(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "x" * 40}]
    )
    # ceil((40 bytes of content + 4 bytes of "user") / 4) + 3 per message
    assert message.usage.input_tokens == 11 + 3
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0


def test_create_truncates_text_at_max_tokens_with_stop_reason_max_tokens(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    long_text = "abcdefgh" * 50  # 400 bytes = 100 tokens
    fake_anthropic.enqueue(Reply.with_text(long_text))
    message = client.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5
    assert only_text(message) == long_text[:20]


def test_create_caps_scripted_output_tokens_at_max_tokens(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("short", output_tokens=900))
    message = client.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert message.usage.output_tokens == 64
    assert message.stop_reason == "max_tokens"


def test_create_drops_a_tool_call_that_does_not_fit_in_max_tokens(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        Reply.with_tool_use("search", {"query": "q" * 200}, text="Searching now.")
    )
    message = client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert only_text(message) == "Searching now."
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 10


def test_create_stops_at_a_requested_stop_sequence(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("one two STOP three"))
    message = client.messages.create(
        model=MODEL, max_tokens=100, messages=USER, stop_sequences=["NEVER", "STOP"]
    )
    assert only_text(message) == "one two "
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "STOP"
    assert message.usage.output_tokens == 2


def test_script_is_fifo_honours_times_then_falls_back_to_the_default(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("twice", times=2), Reply.with_text("once"))
    texts = [
        only_text(client.messages.create(model=MODEL, max_tokens=100, messages=USER))
        for _ in range(4)
    ]
    assert texts == ["twice", "twice", "once", "Hello from the fake Anthropic API."]


def test_set_default_answers_every_request_once_the_script_is_empty(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.set_default(Reply.with_text("always"))
    fake_anthropic.enqueue(Reply.with_text("scripted"))
    texts = [
        only_text(client.messages.create(model=MODEL, max_tokens=100, messages=USER))
        for _ in range(3)
    ]
    assert texts == ["scripted", "always", "always"]
    fake_anthropic.reset()
    restored = client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert only_text(restored) == "Hello from the fake Anthropic API."


def test_count_tokens_equals_the_input_tokens_create_reports_for_the_same_body(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    system = "You are a terse assistant. Ünïcödé counts in bytes."
    messages: list[anthropic.types.MessageParam] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"c": 1}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"}],
        },
    ]
    tools: list[anthropic.types.ToolParam] = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"c": {"type": "integer"}}},
        }
    ]
    counted = client.messages.count_tokens(
        model=MODEL, system=system, messages=messages, tools=tools
    )
    created = client.messages.create(
        model=MODEL, max_tokens=100, system=system, messages=messages, tools=tools
    )
    assert counted.input_tokens == created.usage.input_tokens
    assert counted.input_tokens > 3 * len(messages)


def test_count_tokens_honours_a_scripted_input_tokens_without_consuming_the_script(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("counted", input_tokens=4242))
    counted = client.messages.count_tokens(model=MODEL, messages=USER)
    created = client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert counted.input_tokens == created.usage.input_tokens == 4242
    assert only_text(created) == "counted"


def test_models_list_and_retrieve_use_anthropics_shape_and_sdk_model_ids(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    page = client.models.list(limit=3)
    assert len(page.data) == 3
    assert page.has_more is True
    assert page.first_id == page.data[0].id
    assert page.last_id == page.data[-1].id
    everything = [model.id for model in client.models.list(limit=1000)]
    assert everything == [info["id"] for info in catalog.MODEL_INFOS]
    literal_ids = set(typing.get_args(typing.get_args(Model)[0]))
    assert set(everything) <= literal_ids
    retrieved = client.models.retrieve(everything[0])
    assert retrieved.id == everything[0]
    assert retrieved.type == "model"
    assert retrieved.display_name.startswith("Claude")
