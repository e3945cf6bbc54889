"""How a validator reply is judged (kubeagents_probe.expectations), for every kind but the judge,
which needs a model call and is tested through the whole stack in test_probe.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubeagents_probe.expectations import Expectation, Judgement
from kubeagents_probe.proxy_client import Reply
from kubeagents_probe.settings import ExpectKind, ProbeSettings

SCHEMA = '{"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}'


def judge(kind: ExpectKind, value: str, reply: str) -> Judgement:
    settings = ProbeSettings(agent="a", model="m", shared=False, expect=kind, expect_value=value)

    async def no_model_call(**_: Any) -> Reply:
        raise AssertionError("only the judge kind calls a model")

    return asyncio.run(Expectation(settings, no_model_call).judge(reply))


@pytest.mark.parametrize(
    ("kind", "value", "reply", "passed"),
    [
        (ExpectKind.EXACT, "READY", "  READY\n", True),
        (ExpectKind.EXACT, "READY", "READY!", False),
        (ExpectKind.CONTAINS, "READY", "I am READY now", True),
        (ExpectKind.CONTAINS, "READY", "////", False),
        (ExpectKind.REGEX, r"^\d{2}$", "42", True),
        (ExpectKind.REGEX, r"^\d{2}$", "4242", False),
        (ExpectKind.JSON_SCHEMA, SCHEMA, '{"status": "ok"}', True),
        (ExpectKind.JSON_SCHEMA, SCHEMA, '{"status": "down"}', False),
        (ExpectKind.JSON_SCHEMA, SCHEMA, "status: ok", False),
    ],
)
def test_each_kind_passes_the_right_reply_and_fails_the_wrong_one(
    kind: ExpectKind, value: str, reply: str, passed: bool
) -> None:
    judgement = judge(kind, value, reply)
    assert judgement.passed is passed
    assert judgement.reason == ("" if passed else "unexpected_reply")


def test_a_schema_failure_says_where_and_why() -> None:
    judgement = judge(ExpectKind.JSON_SCHEMA, SCHEMA, '{"status": "down"}')
    assert judgement.detail.startswith("JSON schema violated at status:")
    assert "'ok' was expected" in judgement.detail
    assert "unparsable" in judge(ExpectKind.JSON_SCHEMA, SCHEMA, "////").detail
