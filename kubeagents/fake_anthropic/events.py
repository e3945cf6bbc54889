"""Building replies: the Message JSON, the SSE event sequence and Anthropic's error body.

A `Reply` is compiled once into a `ReplyPlan` (content blocks with their token cost and their
pre-encoded stream events), so that answering a request only decides the outcome (stop
sequences, max_tokens truncation), fills in ids and token counts, and serialises.

The stream has Anthropic's order:

    message_start
    content_block_start(0), ping, content_block_delta(0)..., content_block_stop(0)
    content_block_start(1), content_block_delta(1)..., content_block_stop(1)   ...
    message_delta (stop_reason, cumulative usage)
    message_stop

(with no content block, the ping follows message_start).

Usage, like the real API: the Message's `usage` (and message_start's) has the input, output and
cache counts, `cache_creation`, `service_tier`, `inference_geo` (the request's, else
"not_available") and `speed` (the request's, else "standard"); message_delta's has the
cumulative input, cache and output counts. With `server_tool_use` scripted, the Message's usage
and message_delta's carry the totals, and message_start's reports 0 of each (nothing was used
yet). `server_tool_input_tokens` are input the upstream's tool loop added: they are in the
Message's input_tokens and message_delta's cumulative input_tokens, never in message_start's.
With `omit_usage`, the Message, message_start and message_delta carry no `usage` at all.
"""

from __future__ import annotations

import itertools
import json
import secrets
import string
from dataclasses import dataclass
from typing import Any, Literal

from kubeagents.fake_anthropic.script import Reply, ServerToolUse, TextBlock, ToolUseBlock
from kubeagents.fake_anthropic.tokens import (
    text_tokens,
    tool_input_json,
    tool_use_tokens,
    truncate_text_to_tokens,
)

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

_ALPHABET = string.ascii_letters + string.digits


class IdFactory:
    """Unique ids shaped like Anthropic's ("msg_01...", "toolu_01...", "req_011...").

    A random stem per process plus a counter: unique, and cheap on the hot path.
    """

    def __init__(self) -> None:
        self._stem = "".join(secrets.choice(_ALPHABET) for _ in range(10))
        self._counter = itertools.count(1)

    def message_id(self) -> str:
        return f"msg_01{self._stem}{next(self._counter):012d}"

    def tool_use_id(self) -> str:
        return f"toolu_01{self._stem}{next(self._counter):012d}"

    def request_id(self) -> str:
        return f"req_011{self._stem}{next(self._counter):012d}"


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {_encode(data)}\n\n".encode()


def error_json(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    return _encode(error_json(error_type, message, request_id)).encode()


def error_event(error_type: str, message: str, request_id: str) -> bytes:
    return sse_event("error", error_json(error_type, message, request_id))


def _chunks(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


@dataclass(frozen=True, slots=True)
class PlannedBlock:
    """A content block with its token cost and its pre-encoded stream events."""

    index: int
    kind: Literal["text", "tool_use"]
    text: str
    name: str
    tool_input: dict[str, Any] | None
    fixed_id: str | None
    tokens: int
    start_event: bytes | None  # None: a tool_use start needs the request's fresh tool id
    delta_events: tuple[bytes, ...]
    stop_event: bytes

    def content_json(self, tool_id: str | None) -> dict[str, Any]:
        if self.kind == "text":
            return {"type": "text", "text": self.text}
        return {
            "type": "tool_use",
            "id": tool_id,
            "name": self.name,
            "input": self.tool_input,
            "caller": {"type": "direct"},
        }

    def start(self, tool_id: str | None) -> bytes:
        if self.start_event is not None:
            return self.start_event
        return _tool_start_event(self.index, self.name, tool_id)


def _tool_start_event(index: int, name: str, tool_id: str | None) -> bytes:
    block: dict[str, Any] = {
        "type": "tool_use",
        "id": tool_id,
        "name": name,
        "input": {},
        "caller": {"type": "direct"},
    }
    return sse_event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def _stop_event(index: int) -> bytes:
    return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})


def plan_text(index: int, text: str, chunk_chars: int) -> PlannedBlock:
    start = sse_event(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "text", "text": ""},
        },
    )
    deltas = tuple(
        sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": chunk},
            },
        )
        for chunk in _chunks(text, chunk_chars)
    )
    return PlannedBlock(
        index=index,
        kind="text",
        text=text,
        name="",
        tool_input=None,
        fixed_id=None,
        tokens=text_tokens(text),
        start_event=start,
        delta_events=deltas,
        stop_event=_stop_event(index),
    )


def plan_tool_use(index: int, block: ToolUseBlock, chunk_chars: int) -> PlannedBlock:
    input_json = tool_input_json(block.input)
    # Like the real API: an empty partial_json first, then the JSON in pieces.
    deltas = tuple(
        sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            },
        )
        for piece in ["", *_chunks(input_json, chunk_chars)]
    )
    return PlannedBlock(
        index=index,
        kind="tool_use",
        text="",
        name=block.name,
        tool_input=dict(block.input),
        fixed_id=block.id,
        tokens=tool_use_tokens(block.name, input_json),
        start_event=None if block.id is None else _tool_start_event(index, block.name, block.id),
        delta_events=deltas,
        stop_event=_stop_event(index),
    )


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """A compiled `Reply`, with the server's defaults resolved."""

    reply: Reply
    blocks: tuple[PlannedBlock, ...]
    latency: float  # seconds before the first byte
    event_delay: float  # seconds before each stream event after the first
    server_tool_use: dict[str, int] | None  # the usage's totals; None: no server_tool_use key
    server_tool_use_at_start: dict[str, int] | None  # message_start's (0 of each)


def _server_tool_use_json(uses: ServerToolUse | None) -> dict[str, int] | None:
    if uses is None:
        return None
    return {
        "web_search_requests": uses.web_search_requests,
        "web_fetch_requests": uses.web_fetch_requests,
    }


def compile_reply(
    reply: Reply, *, default_text: str, latency_ms: float, event_delay_ms: float
) -> ReplyPlan:
    content: list[TextBlock | ToolUseBlock] = (
        [TextBlock(text=default_text)] if reply.content is None else list(reply.content)
    )
    blocks = tuple(
        plan_text(index, block.text, reply.chunk_chars)
        if isinstance(block, TextBlock)
        else plan_tool_use(index, block, reply.chunk_chars)
        for index, block in enumerate(content)
    )
    latency = reply.latency_ms if reply.latency_ms is not None else latency_ms
    delay = reply.event_delay_ms if reply.event_delay_ms is not None else event_delay_ms
    uses = reply.server_tool_use
    return ReplyPlan(
        reply=reply,
        blocks=blocks,
        latency=latency / 1000,
        event_delay=delay / 1000,
        server_tool_use=_server_tool_use_json(uses),
        server_tool_use_at_start=None if uses is None else _server_tool_use_json(ServerToolUse()),
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request gets: the blocks after stop sequences and max_tokens, and the counts."""

    plan: ReplyPlan
    blocks: tuple[PlannedBlock, ...]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int  # the estimate or override: what the body alone costs
    total_input_tokens: int  # plus the server tools' input: what is reported in the end
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    speed: str | None  # as requested
    inference_geo: str | None  # as requested


def _apply_stop_sequences(
    blocks: tuple[PlannedBlock, ...], stop_sequences: list[str], chunk_chars: int
) -> tuple[tuple[PlannedBlock, ...], str | None]:
    for block in blocks:
        if block.kind != "text":
            continue
        found: tuple[int, str] | None = None
        for sequence in stop_sequences:
            position = block.text.find(sequence) if sequence else -1
            if position >= 0 and (found is None or position < found[0]):
                found = (position, sequence)
        if found is not None:
            cut = plan_text(block.index, block.text[: found[0]], chunk_chars)
            return (*blocks[: block.index], cut), found[1]
    return blocks, None


def _truncate(
    blocks: tuple[PlannedBlock, ...], max_tokens: int, chunk_chars: int
) -> tuple[PlannedBlock, ...]:
    kept: list[PlannedBlock] = []
    remaining = max_tokens
    for block in blocks:
        if block.tokens <= remaining:
            kept.append(block)
            remaining -= block.tokens
            continue
        if block.kind == "text" and remaining > 0:
            kept.append(
                plan_text(block.index, truncate_text_to_tokens(block.text, remaining), chunk_chars)
            )
        break
    return tuple(kept)


def decide(
    plan: ReplyPlan,
    *,
    input_tokens: int,
    max_tokens: int,
    stop_sequences: list[str] | None,
    speed: str | None = None,
    inference_geo: str | None = None,
) -> Outcome:
    """Apply the request's stop sequences and max_tokens (and echo its options) to the plan."""
    reply = plan.reply
    blocks = plan.blocks
    stop_reason: str | None = None
    stop_sequence: str | None = None
    if stop_sequences:
        blocks, stop_sequence = _apply_stop_sequences(blocks, stop_sequences, reply.chunk_chars)
        if stop_sequence is not None:
            stop_reason = "stop_sequence"
    if reply.output_tokens is not None:
        output_tokens = reply.output_tokens
    else:
        output_tokens = max(1, sum(block.tokens for block in blocks))
    if output_tokens > max_tokens:
        blocks = _truncate(blocks, max_tokens, reply.chunk_chars)
        output_tokens = max_tokens
        stop_reason, stop_sequence = "max_tokens", None
    if stop_reason is None:
        if reply.stop_reason is not None:
            stop_reason = reply.stop_reason
        elif any(block.kind == "tool_use" for block in blocks):
            stop_reason = "tool_use"
        else:
            stop_reason = "end_turn"
        stop_sequence = reply.stop_sequence if stop_reason == "stop_sequence" else None
    return Outcome(
        plan=plan,
        blocks=blocks,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        input_tokens=input_tokens,
        total_input_tokens=input_tokens + reply.server_tool_input_tokens,
        output_tokens=output_tokens,
        cache_creation_input_tokens=reply.cache_creation_input_tokens,
        cache_read_input_tokens=reply.cache_read_input_tokens,
        speed=speed,
        inference_geo=inference_geo,
    )


def _usage(
    outcome: Outcome,
    *,
    input_tokens: int,
    output_tokens: int,
    server_tool_use: dict[str, int] | None,
) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": outcome.cache_creation_input_tokens,
        "cache_read_input_tokens": outcome.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": outcome.cache_creation_input_tokens,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
    }
    if server_tool_use is not None:
        usage["server_tool_use"] = server_tool_use
    usage["service_tier"] = "standard"
    usage["inference_geo"] = (
        "not_available" if outcome.inference_geo is None else outcome.inference_geo
    )
    usage["speed"] = "standard" if outcome.speed is None else outcome.speed
    return usage


def tool_ids(outcome: Outcome, ids: IdFactory) -> list[str | None]:
    """The tool_use id of each block (None for text): scripted, or fresh for this request."""
    return [
        None if block.kind == "text" else (block.fixed_id or ids.tool_use_id())
        for block in outcome.blocks
    ]


def message_body(
    outcome: Outcome, *, message_id: str, model: str, block_ids: list[str | None]
) -> bytes:
    """The JSON body of a non-streaming reply."""
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            block.content_json(block_id)
            for block, block_id in zip(outcome.blocks, block_ids, strict=True)
        ],
        "stop_reason": outcome.stop_reason,
        "stop_sequence": outcome.stop_sequence,
        "stop_details": None,
    }
    if not outcome.plan.reply.omit_usage:
        message["usage"] = _usage(
            outcome,
            input_tokens=outcome.total_input_tokens,
            output_tokens=outcome.output_tokens,
            server_tool_use=outcome.plan.server_tool_use,
        )
    return _encode(message).encode()


def stream_events(
    outcome: Outcome, *, message_id: str, model: str, block_ids: list[str | None]
) -> list[bytes]:
    """The SSE events of a streaming reply, in Anthropic's order, each ready to write."""
    plan = outcome.plan
    omit_usage = plan.reply.omit_usage
    message: dict[str, Any] = {
        "model": model,
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "container": None,
        "stop_reason": None,
        "stop_sequence": None,
        "stop_details": None,
    }
    if not omit_usage:
        message["usage"] = _usage(
            outcome,
            input_tokens=outcome.input_tokens,
            output_tokens=min(1, outcome.output_tokens),
            server_tool_use=plan.server_tool_use_at_start,
        )
    events = [sse_event("message_start", {"type": "message_start", "message": message})]
    if not outcome.blocks:
        events.append(PING)
    for position, (block, block_id) in enumerate(zip(outcome.blocks, block_ids, strict=True)):
        events.append(block.start(block_id))
        if position == 0:
            events.append(PING)
        events.extend(block.delta_events)
        events.append(block.stop_event)
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {
            "stop_reason": outcome.stop_reason,
            "stop_sequence": outcome.stop_sequence,
            "stop_details": None,
            "container": None,
        },
    }
    if not omit_usage:
        usage: dict[str, Any] = {
            "input_tokens": outcome.total_input_tokens,
            "cache_creation_input_tokens": outcome.cache_creation_input_tokens,
            "cache_read_input_tokens": outcome.cache_read_input_tokens,
            "output_tokens": outcome.output_tokens,
        }
        if plan.server_tool_use is not None:
            usage["server_tool_use"] = plan.server_tool_use
        delta["usage"] = usage
    events.append(sse_event("message_delta", delta))
    events.append(MESSAGE_STOP)
    return events
