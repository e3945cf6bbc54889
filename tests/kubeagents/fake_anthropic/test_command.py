"""`kubeagents fake-anthropic` as a process: listening line, settings, clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from harness.processes import ManagedProcess

pytestmark = pytest.mark.integration  # each test starts `kubeagents fake-anthropic` as a process

KUBEAGENTS = Path(sys.executable).parent / "kubeagents"
USER: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]
MODEL = "claude-sonnet-4-6"


def start(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[ManagedProcess, str]:
    process = ManagedProcess(
        "fake-anthropic (own settings)",
        [str(KUBEAGENTS), "fake-anthropic", "--port", "0", *args],
        tmp_path / "fake.log",
        env={**os.environ, **(env or {})},
    )
    match = process.wait_for_log(r"listening on (http://\S+)", timeout=30)
    return process, match.group(1)


def test_prints_one_listening_line_with_the_real_port_and_exits_0_on_sigterm(
    tmp_path: Path,
) -> None:
    process, base_url = start(tmp_path)
    try:
        assert re.fullmatch(
            r"kubeagents fake-anthropic listening on http://127\.0\.0\.1:\d+\n",
            process.log_text(),
        )
        assert not base_url.endswith(":0")
        assert httpx.get(f"{base_url}/_fake/health").json() == {"status": "ok"}
        os.kill(process.pid, signal.SIGTERM)
        assert process.popen.wait(timeout=10) == 0
    finally:
        process.stop()


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake started with an API key flag and settings from the environment; its base URL."""
    process, base_url = start(
        tmp_path_factory.mktemp("configured"),
        "--api-key",
        "sk-right",
        env={
            "KUBEAGENTS_FAKE_ANTHROPIC_DEFAULT_TEXT": "from the environment",
            "KUBEAGENTS_FAKE_ANTHROPIC_LATENCY_MS": "250",
        },
    )
    yield base_url
    process.stop()


def test_api_key_setting_rejects_other_keys_with_401(configured: str) -> None:
    with anthropic.Anthropic(api_key="sk-wrong", base_url=configured, max_retries=0) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            wrong.messages.create(model=MODEL, max_tokens=10, messages=USER)
        assert raised.value.body == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"},
            "request_id": raised.value.request_id,
        }
    with anthropic.Anthropic(api_key="sk-right", base_url=configured, max_retries=0) as right:
        assert right.messages.create(model=MODEL, max_tokens=10, messages=USER).id


def test_environment_sets_default_text_and_base_latency(configured: str) -> None:
    with anthropic.Anthropic(api_key="sk-right", base_url=configured, max_retries=0) as sdk:
        began = time.monotonic()
        message = sdk.messages.create(model=MODEL, max_tokens=10, messages=USER)
        elapsed = time.monotonic() - began
    assert isinstance(message.content[0], anthropic.types.TextBlock)
    assert message.content[0].text == "from the environment"
    assert elapsed >= 0.25


ANSWERS = [
    {"pattern": r"What is 2 \+ 3\?", "text": "5"},
    {"pattern": r"Research this topic: (?P<topic>.+)", "text": r"Findings on \g<topic>."},
    {"pattern": r"(?m)^You summarize", "text": "- summarised"},
    {"pattern": r"^Take your time", "text": "slowly", "latency_ms": 300},
]


@pytest.fixture(scope="module")
def answering(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake with canned answers from the environment; its base URL."""
    process, base_url = start(
        tmp_path_factory.mktemp("answering"),
        env={"KUBEAGENTS_FAKE_ANTHROPIC_ANSWERS": json.dumps(ANSWERS)},
    )
    yield base_url
    process.stop()


def _reply_text(base_url: str, **body: object) -> str:
    with anthropic.Anthropic(api_key="k", base_url=base_url, max_retries=0) as sdk:
        message = sdk.messages.create(model=MODEL, max_tokens=10, **body)  # type: ignore[call-overload]
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    return block.text


def test_canned_answers_match_the_last_user_message_and_expand_groups(answering: str) -> None:
    assert _reply_text(answering, messages=[{"role": "user", "content": "What is 2 + 3?"}]) == "5"
    asked = [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": [{"type": "text", "text": "Research this topic: tides"}]},
    ]
    assert _reply_text(answering, messages=asked) == "Findings on tides."


def test_canned_answers_match_the_system_prompt(answering: str) -> None:
    text = _reply_text(answering, system="You summarize text.", messages=USER)
    assert text == "- summarised"


def test_a_canned_answer_can_have_its_own_latency(answering: str) -> None:
    began = time.monotonic()
    assert _reply_text(answering, messages=[{"role": "user", "content": "Take your time"}]) == (
        "slowly"
    )
    assert time.monotonic() - began >= 0.3


def test_without_a_matching_answer_the_default_text_is_sent(answering: str) -> None:
    assert _reply_text(answering, messages=USER) == "Hello from the fake Anthropic API."


def test_a_script_entry_wins_over_canned_answers(answering: str) -> None:
    from kubeagents.fake_anthropic import FakeAnthropicControl, Reply

    with FakeAnthropicControl(answering) as control:
        control.enqueue(Reply.with_text("scripted"))
        asked = [{"role": "user", "content": "What is 2 + 3?"}]
        assert _reply_text(answering, messages=asked) == "scripted"
        assert _reply_text(answering, messages=asked) == "5"


def test_an_answer_that_is_not_a_regular_expression_stops_the_fake_with_its_name(
    tmp_path: Path,
) -> None:
    process = ManagedProcess(
        "fake-anthropic (bad answers)",
        [str(KUBEAGENTS), "fake-anthropic", "--port", "0"],
        tmp_path / "fake.log",
        env={
            **os.environ,
            "KUBEAGENTS_FAKE_ANTHROPIC_ANSWERS": json.dumps([{"pattern": "(", "text": "x"}]),
        },
    )
    try:
        assert process.popen.wait(timeout=30) != 0
        assert "not a regular expression" in process.log_text()
    finally:
        process.stop()
