"""The fake's deterministic token estimate (no tokenizer; cheap enough for the hot path).

Rule, for input: B = the UTF-8 bytes of every string value (not keys) found anywhere in the
request's `system`, `messages` and `tools` (numbers count the length of their decimal form;
booleans and null count nothing). Then

    input_tokens = ceil(B / 4) + 3 * len(messages)

For output: a text block costs ceil(bytes(text) / 4); a tool_use block costs
ceil((bytes(name) + bytes(compact JSON of input)) / 4); a reply costs the sum, at least 1
(the real API never reports 0 output tokens).

`POST /v1/messages/count_tokens` and `POST /v1/messages` use the same input rule, so a body
reports the same number on both. A scripted `input_tokens` applies to both too: count_tokens
peeks at the script's next entry (without consuming it) and reports its override.
"""

from __future__ import annotations

import json
from typing import Any

PER_MESSAGE_OVERHEAD = 3
BYTES_PER_TOKEN = 4


def ceil_tokens(byte_count: int) -> int:
    return -(-byte_count // BYTES_PER_TOKEN)


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _string_bytes(value: Any) -> int:
    if isinstance(value, str):
        return utf8_len(value)
    if isinstance(value, dict):
        return sum(_string_bytes(item) for item in value.values())
    if isinstance(value, list):
        return sum(_string_bytes(item) for item in value)
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int | float):
        return len(repr(value))
    return 0


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a validated messages (or count_tokens) request body."""
    messages = body.get("messages")
    message_count = len(messages) if isinstance(messages, list) else 0
    total = (
        _string_bytes(body.get("system"))
        + _string_bytes(messages)
        + _string_bytes(body.get("tools"))
    )
    return ceil_tokens(total) + PER_MESSAGE_OVERHEAD * message_count


def text_tokens(text: str) -> int:
    return ceil_tokens(utf8_len(text))


def tool_input_json(tool_input: dict[str, Any]) -> str:
    """The compact JSON the fake streams (and counts) for a tool input."""
    return json.dumps(tool_input, separators=(",", ":"), ensure_ascii=False)


def tool_use_tokens(name: str, input_json: str) -> int:
    return ceil_tokens(utf8_len(name) + utf8_len(input_json))


def truncate_text_to_tokens(text: str, tokens: int) -> str:
    """The longest prefix of `text` (cut on a character boundary) costing at most `tokens`."""
    budget = tokens * BYTES_PER_TOKEN
    if text.isascii():
        return text[:budget]
    return text.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
