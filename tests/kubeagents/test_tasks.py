"""The task queue contract (kubeagents.tasks) against a real redis-server and a real
valkey-server (every test runs on both)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest
import redis

from kubeagents.errors import InvalidTask
from kubeagents.redis_link import RedisLink
from kubeagents.tasks import (
    MAX_INPUT_BYTES,
    RESULT_TTL_SECONDS,
    MessageField,
    QueueKeys,
    Status,
    TaskQueue,
    decode_result,
    parse_input,
)

T = TypeVar("T")
Message = tuple[bytes, dict[bytes, bytes]]
NAMESPACE, AGENT = "team-a", "writer"
KEYS = QueueKeys.of(NAMESPACE, AGENT)


@pytest.fixture
def redis_url(redis_url_on_each_server: str) -> str:
    """Every test here runs on redis-server and on valkey-server (the chart's default)."""
    return redis_url_on_each_server


def with_queue(redis_url: str, scenario: Callable[[TaskQueue], Awaitable[T]]) -> T:
    async def main() -> T:
        link = RedisLink(redis_url)
        try:
            return await scenario(TaskQueue(link, namespace=NAMESPACE, agent=AGENT))
        finally:
            await link.aclose()

    return asyncio.run(main())


# --- parse_input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        '{"prompt": "Summarise the incident"}',
        b'{"prompt": "x", "metadata": {"ticket": 42}}',
        {"prompt": "x", "metadata": {}},
        json.dumps({"prompt": "y" * (MAX_INPUT_BYTES - 20)}),
    ],
)
def test_parse_input_accepts_a_prompt_and_optional_metadata(raw: Any) -> None:
    document = parse_input(raw)
    expected = json.loads(raw) if isinstance(raw, str | bytes) else raw
    assert document == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("{not json", "input is not JSON"),
        (b"\xff\xfe", "input is not JSON"),
        ('["prompt"]', "must be a JSON object"),
        ('"just text"', "must be a JSON object"),
        ('{"metadata": {}}', "input.prompt: a non-empty string is required"),
        ('{"prompt": 7}', "input.prompt: a non-empty string is required"),
        ('{"prompt": ""}', "input.prompt: a non-empty string is required"),
        ('{"prompt": "  \\n"}', "input.prompt: a non-empty string is required"),
        ('{"prompt": "x", "tools": []}', "unknown fields ['tools']"),
        ('{"prompt": "x", "metadata": "tag"}', "input.metadata: must be a JSON object"),
        (json.dumps({"prompt": "x" * MAX_INPUT_BYTES}), "the limit is 262,144"),
        ({"prompt": "x" * MAX_INPUT_BYTES}, "the limit is 262,144"),
        ('{"prompt": "x", "metadata": {"score": NaN}}', "NaN is not allowed"),
        ({"prompt": "x", "metadata": {"score": float("inf")}}, "not JSON-serialisable"),
        ({"prompt": "x", "metadata": {"when": object()}}, "not JSON-serialisable"),
        # measured as stored (UTF-8, compact): 100,000 three-byte characters are 300,000 bytes
        ({"prompt": "€" * 100_000}, "the limit is 262,144"),
    ],
)
def test_parse_input_names_the_problem(raw: Any, problem: str) -> None:
    with pytest.raises(InvalidTask) as raised:
        parse_input(raw)
    assert problem in str(raised.value)


# --- submit ----------------------------------------------------------------------------------


def test_submit_writes_the_result_hash_and_one_stream_message(
    redis_url: str, redis_client: redis.Redis
) -> None:
    raw = '{"prompt": "Summarise the incident", "metadata": {"ticket": 42}}'
    before_ms = int(time.time() * 1000)
    submitted = with_queue(
        redis_url,
        lambda queue: queue.submit(
            raw, task_id="t-1", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01", run="r"
        ),
    )
    assert (submitted.task_id, submitted.created, submitted.status) == ("t-1", True, "queued")

    state = redis_client.hgetall(KEYS.result("t-1"))
    assert state[b"status"] == b"queued"
    assert state[b"attempts"] == b"0"
    submitted_at = int(state[b"submitted_at"])
    assert before_ms - 1000 <= submitted_at <= int(time.time() * 1000) + 1000
    assert 0 < redis_client.ttl(KEYS.result("t-1")) <= RESULT_TTL_SECONDS

    messages = cast(list[Message], redis_client.xrange(KEYS.stream))
    assert len(messages) == 1
    fields = {key.decode(): value.decode() for key, value in messages[0][1].items()}
    assert set(fields) == {str(field) for field in MessageField}
    assert fields[MessageField.ID] == "t-1"
    assert json.loads(fields[MessageField.INPUT]) == json.loads(raw)
    assert fields[MessageField.ATTEMPT] == "1"
    assert fields[MessageField.TRACEPARENT].startswith("00-aaaa")
    assert fields[MessageField.RUN] == "r"
    assert fields[MessageField.STEP] == ""
    assert int(fields[MessageField.SUBMITTED_AT]) == submitted_at


def test_submit_picks_an_id_when_none_is_given(redis_url: str, redis_client: redis.Redis) -> None:
    submitted = with_queue(redis_url, lambda queue: queue.submit({"prompt": "x"}))
    assert submitted.created
    assert submitted.task_id.startswith("task_")
    assert redis_client.exists(KEYS.result(submitted.task_id))


def test_the_same_id_is_queued_once(redis_url: str, redis_client: redis.Redis) -> None:
    async def scenario(queue: TaskQueue) -> list[Any]:
        first = await queue.submit({"prompt": "x"}, task_id="once")
        second = await queue.submit({"prompt": "other"}, task_id="once")
        return [first, second]

    first, second = with_queue(redis_url, scenario)
    assert (first.created, second.created) == (True, False)
    assert second.status == "queued"
    assert redis_client.xlen(KEYS.stream) == 1


@pytest.mark.parametrize(
    ("raw", "task_id"),
    [
        ("not json", None),
        ('{"prompt": ""}', None),
        ('{"prompt": "x", "extra": 1}', None),
        ({"prompt": "x" * MAX_INPUT_BYTES}, None),
        ('{"prompt": "x"}', "has space"),
        ('{"prompt": "x"}', "x" * 65),
        ('{"prompt": "x"}', ""),
    ],
)
def test_an_invalid_task_writes_nothing(
    redis_url: str, redis_client: redis.Redis, raw: Any, task_id: str | None
) -> None:
    redis_client.set("unrelated", "1")
    with pytest.raises(InvalidTask):
        with_queue(redis_url, lambda queue: queue.submit(raw, task_id=task_id))
    assert redis_client.dbsize() == 1


# --- result, decode_result, wait -----------------------------------------------------------


def test_the_result_of_an_unknown_id_is_none(redis_url: str) -> None:
    assert with_queue(redis_url, lambda queue: queue.result("nobody")) is None


def test_decode_result_turns_numbers_and_json_into_values(
    redis_url: str, redis_client: redis.Redis
) -> None:
    usage = {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 0}
    redis_client.hset(
        KEYS.result("done"),
        mapping={
            "status": "succeeded",
            "output": '{"answer": 42}',
            "output_json": '{"answer": 42}',
            "stop_reason": "end_turn",
            "usage": json.dumps(usage),
            "turns": "3",
            "tool_calls": "2",
            "attempts": "1",
            "error": "",
            "worker": "writer-0",
            "submitted_at": "1700000000000",
            "started_at": "1700000000100",
            "finished_at": "1700000001000",
            "trace_id": "",
        },
    )
    result = with_queue(redis_url, lambda queue: queue.result("done"))
    assert result == {
        "id": "done",
        "status": "succeeded",
        "output": '{"answer": 42}',
        "output_json": {"answer": 42},
        "stop_reason": "end_turn",
        "usage": usage,
        "turns": 3,
        "tool_calls": 2,
        "attempts": 1,
        "error": "",
        "worker": "writer-0",
        "submitted_at": 1700000000000,
        "started_at": 1700000000100,
        "finished_at": 1700000001000,
        "trace_id": "",
    }


def test_decode_result_leaves_empty_json_fields_none_and_keeps_missing_ones_out() -> None:
    result = decode_result("t", {b"status": b"succeeded", b"output_json": b"", b"usage": b""})
    assert result == {"id": "t", "status": "succeeded", "output_json": None, "usage": None}
    assert decode_result("t", {"status": "queued"}) == {"id": "t", "status": "queued"}


def test_wait_returns_once_another_coroutine_makes_the_status_final(redis_url: str) -> None:
    async def scenario(queue: TaskQueue) -> tuple[dict[str, Any], float]:
        await queue.submit({"prompt": "x"}, task_id="w")

        async def finish() -> None:
            # Runs after the waiter's first poll was sent (one connection, commands in order):
            # that poll sees "queued", a later one the final status.
            await queue.link.execute("HSET", KEYS.result("w"), "status", "running")
            await queue.link.execute("HSET", KEYS.result("w"), "status", "failed", "error", "x")

        started = time.monotonic()
        result, _ = await asyncio.gather(queue.wait("w", seconds=10, poll=0.01), finish())
        return result, time.monotonic() - started

    result, elapsed = with_queue(redis_url, scenario)
    assert result["status"] == Status.FAILED
    assert result["error"] == "x"
    assert elapsed < 5


def test_wait_returns_at_once_when_already_final(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.hset(KEYS.result("old"), mapping={"status": "dead", "attempts": "3"})
    result = with_queue(redis_url, lambda queue: queue.wait("old", seconds=0))
    assert (result["status"], result["attempts"]) == ("dead", 3)


def test_wait_raises_timeout_when_the_task_does_not_finish(redis_url: str) -> None:
    async def scenario(queue: TaskQueue) -> None:
        await queue.submit({"prompt": "x"}, task_id="slow")
        await queue.wait("slow", seconds=0.1, poll=0.02)

    with pytest.raises(TimeoutError, match=r"task slow not finished after 0\.1s"):
        with_queue(redis_url, scenario)
