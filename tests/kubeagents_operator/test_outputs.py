"""A step's JSON output: found fenced or not, validated against outputSchema."""

from __future__ import annotations

import pytest

from kubeagents_operator.errors import OutputInvalid
from kubeagents_operator.outputs import extract_json, validated

SCHEMA = {
    "type": "object",
    "required": ["sections"],
    "properties": {"sections": {"type": "array", "items": {"type": "string"}}},
}


@pytest.mark.parametrize(
    "text",
    [
        'Here:\n```json\n{"sections": ["a"]}\n```\nDone.',
        '```\n{"sections": ["a"]}\n```',
        '{"sections": ["a"]}',
        'The outline is {"sections": ["a"]} as asked.',
    ],
    ids=["fenced-json", "fenced", "bare", "embedded"],
)
def test_json_is_found_fenced_or_not(text: str) -> None:
    assert extract_json(text) == {"sections": ["a"]}
    assert validated(text, SCHEMA).data == {"sections": ["a"]}


def test_no_json_and_invalid_json_are_named() -> None:
    with pytest.raises(OutputInvalid, match="holds no JSON"):
        validated("no structure here", SCHEMA)
    with pytest.raises(OutputInvalid, match=r"at sections/1: 7 is not of type 'string'"):
        validated('{"sections": ["a", 7]}', SCHEMA)
    with pytest.raises(OutputInvalid, match=r"at \(root\): 'sections' is a required property"):
        validated("{}", SCHEMA)


def test_without_a_schema_the_text_is_the_output() -> None:
    assert validated("plain text", None).data is None
