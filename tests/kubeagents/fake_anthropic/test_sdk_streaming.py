"""Streaming with the official SDK: `messages.stream(...)` helpers and `create(stream=True)`."""

from __future__ import annotations

import itertools
import math
import time

import anthropic
from anthropic.types import TextBlock, ToolUseBlock

from kubeagents.fake_anthropic import FakeAnthropicControl, Reply

MODEL = "claude-sonnet-4-6"
USER: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Stream to me"}]


def test_stream_text_arrives_in_several_chunks_and_the_final_message_has_cumulative_usage(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    text = "The quick brown fox jumps over the lazy dog, twice over."
    fake_anthropic.enqueue(
        Reply.with_text(
            text,
            chunk_chars=10,
            input_tokens=100,
            cache_creation_input_tokens=20,
            cache_read_input_tokens=30,
        )
    )
    with client.messages.stream(model=MODEL, max_tokens=200, messages=USER) as stream:
        chunks = list(stream.text_stream)
        final = stream.get_final_message()
    assert chunks == [text[i : i + 10] for i in range(0, len(text), 10)]
    assert isinstance(final.content[0], TextBlock)
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == math.ceil(len(text) / 4)
    assert final.usage.input_tokens == 100
    assert final.usage.cache_creation_input_tokens == 20
    assert final.usage.cache_read_input_tokens == 30
    assert final.model == MODEL


def test_stream_tool_use_accumulates_the_input_json_into_the_final_message(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    tool_input = {"path": "/etc/hosts", "lines": [1, 2, 3], "follow": True}
    fake_anthropic.enqueue(
        Reply.with_tool_use("read_file", tool_input, text="Reading it.", chunk_chars=5)
    )
    partials: list[str] = []
    with client.messages.stream(model=MODEL, max_tokens=200, messages=USER) as stream:
        for event in stream:
            if event.type == "input_json":
                partials.append(event.partial_json)
        final = stream.get_final_message()
    assert partials[0] == ""
    assert len(partials) > 3
    text, tool = final.content
    assert isinstance(text, TextBlock)
    assert text.text == "Reading it."
    assert isinstance(tool, ToolUseBlock)
    assert (tool.name, tool.input) == ("read_file", tool_input)
    assert tool.id.startswith("toolu_")
    assert final.stop_reason == "tool_use"


def test_create_stream_true_yields_events_in_anthropics_exact_order(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(
        Reply.with_tool_use("lookup", {"q": "abc"}, text="Hi there", chunk_chars=4)
    )
    events = list(client.messages.create(model=MODEL, max_tokens=100, messages=USER, stream=True))
    # The SDK drops the ping; the wire test checks it.
    assert [
        (e.type, getattr(e, "index", None), getattr(getattr(e, "delta", None), "type", None))
        for e in events
    ] == [
        ("message_start", None, None),
        ("content_block_start", 0, None),
        ("content_block_delta", 0, "text_delta"),
        ("content_block_delta", 0, "text_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, None),
        ("content_block_delta", 1, "input_json_delta"),  # "" first, like the real API
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_stop", 1, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    start, tool_start, delta = events[0], events[5], events[-2]
    assert start.type == "message_start"
    assert start.message.content == []
    assert start.message.stop_reason is None
    assert start.message.usage.output_tokens == 1
    assert tool_start.type == "content_block_start"
    assert isinstance(tool_start.content_block, ToolUseBlock)
    assert tool_start.content_block.input == {}
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "tool_use"
    assert delta.usage.output_tokens == math.ceil(len("Hi there") / 4) + math.ceil(
        len('lookup{"q":"abc"}') / 4
    )
    assert delta.usage.input_tokens == start.message.usage.input_tokens


def test_stream_stops_at_max_tokens_with_truncated_text(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("0123456789" * 10))
    with client.messages.stream(model=MODEL, max_tokens=3, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 3
    assert isinstance(final.content[0], TextBlock)
    assert final.content[0].text == "012345678901"


def test_stream_events_arrive_over_time_with_an_event_delay(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("abcdefghij", chunk_chars=2, event_delay_ms=40))
    arrivals: list[float] = []
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        for _chunk in stream.text_stream:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    # Four 40 ms pauses separate the five text deltas on the wire.
    assert arrivals[-1] - arrivals[0] >= 0.12
    assert all(later > earlier for earlier, later in itertools.pairwise(arrivals))


def test_scripted_latency_delays_the_first_byte(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("late", latency_ms=300), Reply.with_text("prompt"))
    began = time.monotonic()
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        next(iter(stream))
        late = time.monotonic() - began
    began = time.monotonic()
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        next(iter(stream))
        prompt = time.monotonic() - began
    assert late >= 0.3
    assert prompt < late
