"""The deterministic token estimate: the documented rule, by hand-computed examples."""

from __future__ import annotations

from kubeagents.fake_anthropic.tokens import (
    estimate_input_tokens,
    text_tokens,
    tool_input_json,
    tool_use_tokens,
    truncate_text_to_tokens,
)


def test_input_tokens_count_string_values_in_system_messages_and_tools_plus_3_per_message() -> None:
    body = {
        "model": "claude-ignored-in-the-count",
        "max_tokens": 999,
        "system": "abcd",  # 4
        "messages": [
            {"role": "user", "content": "hello"},  # 4 + 5
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},  # 9 + 4 + 2
        ],
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],  # 1 + 6
    }
    # 4 + 9 + 15 + 7 = 35 bytes -> 9 tokens, plus 3 for each of the 2 messages
    assert estimate_input_tokens(body) == 9 + 6


def test_input_tokens_count_utf8_bytes_and_numbers_but_not_booleans() -> None:
    body = {"messages": [{"role": "user", "content": [{"n": 1234, "flag": True, "t": "é"}]}]}
    # "user" 4 + "1234" 4 + "é" 2 = 10 bytes -> 3 tokens, plus 3
    assert estimate_input_tokens(body) == 3 + 3


def test_output_tokens_of_text_and_tool_use() -> None:
    assert text_tokens("") == 0
    assert text_tokens("abcde") == 2
    assert tool_input_json({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    assert tool_use_tokens("fn", tool_input_json({"a": 1})) == 3  # 2 + 7 bytes


def test_truncation_keeps_whole_characters_within_the_token_budget() -> None:
    assert truncate_text_to_tokens("abcdefghij", 2) == "abcdefgh"
    # "é" is 2 bytes: 4 bytes fit "aéb" (1 + 2 + 1) but not the next "é"
    assert truncate_text_to_tokens("aébéc", 1) == "aéb"
    assert truncate_text_to_tokens("ééé", 1) == "éé"
