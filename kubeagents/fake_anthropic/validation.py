"""Request validation of the fake, worded like the real API: "<field path>: <problem>".

Only the fields the fake acts on are checked (the real API checks more, and rejects unknown
fields; the fake accepts unknown fields so that newer clients keep working against it).
"""

from __future__ import annotations

import re
from typing import Any

ROLES = ("user", "assistant", "system")  # the SDK's MessageParam has all three
# The real API knows its dated versions; the fake accepts any date, so newer SDKs keep working.
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_messages_body(body: Any, *, count_tokens: bool) -> str | None:
    """The first problem of a `/v1/messages` (or `/count_tokens`) body, or None when valid."""
    if not isinstance(body, dict):
        return "body: Input should be a valid dictionary (a JSON object)"
    if "model" not in body:
        return "model: Field required"
    if not isinstance(body["model"], str):
        return "model: Input should be a valid string"
    if "messages" not in body:
        return "messages: Field required"
    messages = body["messages"]
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for position, message in enumerate(messages):
        problem = _check_message(position, message)
        if problem is not None:
            return problem
    if not count_tokens:
        if "max_tokens" not in body:
            return "max_tokens: Field required"
        max_tokens = body["max_tokens"]
        if not _is_int(max_tokens):
            return "max_tokens: Input should be a valid integer"
        if max_tokens < 1:
            return "max_tokens: Input should be greater than or equal to 1"
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            return "stream: Input should be a valid boolean"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or a list of text blocks"
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return "tools: Input should be a valid list"
    for option in ("speed", "inference_geo"):
        value = body.get(option)
        if value is not None and not isinstance(value, str):
            return f"{option}: Input should be a valid string"
    stop_sequences = body.get("stop_sequences")
    if stop_sequences is not None:
        if not isinstance(stop_sequences, list):
            return "stop_sequences: Input should be a valid list"
        for position, sequence in enumerate(stop_sequences):
            if not isinstance(sequence, str):
                return f"stop_sequences.{position}: Input should be a valid string"
    return None


def _check_message(position: int, message: Any) -> str | None:
    if not isinstance(message, dict):
        return f"messages.{position}: Input should be a valid dictionary"
    if "role" not in message:
        return f"messages.{position}.role: Field required"
    if message["role"] not in ROLES:
        return f"messages.{position}.role: Input should be 'user', 'assistant' or 'system'"
    if "content" not in message:
        return f"messages.{position}.content: Field required"
    content = message["content"]
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"messages.{position}.content: Input should be a valid string or a list of blocks"
    for index, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"messages.{position}.content.{index}.type: Field required"
    return None


def check_version(version: str | None) -> str | None:
    """The problem with the `anthropic-version` header, or None."""
    if version is None:
        return "anthropic-version: header is required"
    if _VERSION.fullmatch(version) is None:
        return f"anthropic-version: {version!r} is not a valid version"
    return None
