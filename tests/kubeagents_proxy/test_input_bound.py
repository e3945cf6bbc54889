"""The input bound is never below what the model reads, and asks count_tokens when it cannot."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubeagents_proxy.input_bound import (
    COUNT_TOKENS_MARGIN,
    MESSAGE_OVERHEAD,
    OPAQUE_BLOCK_TYPES,
    REQUEST_OVERHEAD,
    TOOLS_OVERHEAD,
    byte_bound,
    counted_bound,
    needs_count_tokens,
)


def bound(body: dict[str, Any]) -> int:
    return byte_bound(json.dumps(body).encode(), body)


@pytest.mark.parametrize("text", ["hello", "", "é" * 100, "日本語のテキスト", "🙂" * 10])
def test_the_bound_is_at_least_the_texts_utf8_bytes_plus_the_overheads(text: str) -> None:
    body = {"messages": [{"role": "user", "content": text}], "system": text}
    raw = json.dumps(body, ensure_ascii=False).encode()
    assert byte_bound(raw, body) >= 2 * len(text.encode()) + MESSAGE_OVERHEAD + REQUEST_OVERHEAD


def test_each_message_and_the_tools_add_their_overheads() -> None:
    one = {"messages": [{"role": "user", "content": "x"}]}
    two = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    with_tools = {**one, "tools": [{"name": "t", "input_schema": {"type": "object"}}]}
    assert bound(two) - bound(one) >= MESSAGE_OVERHEAD
    assert bound(with_tools) - bound(one) >= TOOLS_OVERHEAD


def test_an_empty_body_is_bounded_by_the_request_overhead() -> None:
    assert byte_bound(b"{}", {}) == 2 + REQUEST_OVERHEAD


@pytest.mark.parametrize("kind", sorted(OPAQUE_BLOCK_TYPES))
def test_opaque_content_at_any_depth_needs_count_tokens(kind: str) -> None:
    nested = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": kind}]}
                ],
            }
        ]
    }
    assert needs_count_tokens(nested, json.dumps(nested).encode())
    in_system = {"messages": [], "system": [{"type": kind}]}
    assert needs_count_tokens(in_system, json.dumps(in_system).encode())


def test_a_type_name_inside_text_is_not_opaque_content() -> None:
    body = {"messages": [{"role": "user", "content": 'say "image" and "document"'}]}
    assert not needs_count_tokens(body, json.dumps(body).encode())


def test_plain_text_needs_no_count_tokens() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert not needs_count_tokens(body, json.dumps(body).encode())


@pytest.mark.parametrize("counted", [0, 1, 999, 200_000])
def test_the_counted_bound_adds_the_margin_and_the_overhead(counted: int) -> None:
    assert counted_bound(counted) >= counted * (1 + COUNT_TOKENS_MARGIN) + REQUEST_OVERHEAD
    assert counted_bound(counted) <= counted * (1 + COUNT_TOKENS_MARGIN) + REQUEST_OVERHEAD + 1


def test_a_type_name_written_with_json_escapes_is_still_opaque_content() -> None:
    """`"im\\u0061ge"` decodes to "image": the bytes scan alone would miss it."""
    raw = b'{"messages": [{"role": "user", "content": [{"type": "im\\u0061ge"}]}]}'
    body = json.loads(raw)
    assert body["messages"][0]["content"][0]["type"] == "image"
    assert needs_count_tokens(body, raw)
