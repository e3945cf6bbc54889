"""The task queue of an agent in Redis: the contract between whoever submits tasks (the
`kubeagents task` CLI, the runtime's task API, later the operator) and the runtime that runs them.

Keys (all with the agent's hash tag, so one Lua script can touch them all; `agent_key`):

- `…:tasks`: stream, consumer group `runtime`, consumer = pod name: one message per attempt of
  a task (the `MessageField`s);
- `…:tasks:delayed`: zset, score = due time (unix ms): attempts waiting for their backoff or a
  budget's `retry-after`, moved to the stream when due;
- `…:tasks:dead`: stream: tasks whose last attempt failed (the message's fields plus `error`,
  `failed_at`);
- `…:task:<id>`: hash: the task's state and result (the `ResultField`s);
- `…:task:<id>:checkpoint`: string (JSON): the conversation so far, so a reclaimed task resumes
  without repeating tool calls;
- `…:tasks:done`: stream: one entry per task of a team run that reached a final status (fields
  `id`, `run`, `step`, `status`, `finished_at`), appended by the same script that writes the
  final result, so whoever drives the run (the operator) learns of it without polling;
- `…:cancelled:<run>`: string, set by whoever cancels run `<run>`: the runtime checks it before
  every model turn of the run's tasks, and fails them (`run cancelled`) instead.

A task id is at most 64 characters of `[A-Za-z0-9._:-]`; the submitter may choose it (a retried
submission with the same id is not queued twice) or leave it to `submit`, which picks a random
one. The input is a JSON object with a non-empty string `prompt` (the user message) and an
optional object `metadata`, at most `MAX_INPUT_BYTES` as JSON.

Statuses: `queued` → `running` → `succeeded` | `failed` (permanent error) | `dead` (attempts
exhausted); `retrying` between attempts. The three final ones are written once (a Lua
compare-and-set): a task with a final result is never run again.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubeagents.agent import agent_key
from kubeagents.errors import InvalidTask
from kubeagents.redis_link import RedisLink

GROUP = "runtime"
MAX_INPUT_BYTES = 256 * 1024
MAX_RUN_BUDGET_CHARS = 512
STREAM_MAX_LEN = 100_000  # approximate trimming (MAXLEN ~) on every XADD
RESULT_TTL_SECONDS = 7 * 86400
TASK_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class MessageField(StrEnum):
    """The fields of a task message in the agent's stream."""

    ID = "id"
    INPUT = "input"  # the task input as JSON
    ATTEMPT = "attempt"  # 1 for the first attempt
    TRACEPARENT = "traceparent"  # W3C trace context of the submitter ("" when none)
    RUN = "run"  # the AgentRun this task belongs to ("" when none)
    STEP = "step"  # the step of that run ("" when none)
    RUN_BUDGET = "run_budget"  # the run's `kubeagents-run-budget` header value ("" when none)
    SUBMITTED_AT = "submitted_at"  # unix ms


class ResultField(StrEnum):
    """The fields of `…:task:<id>`."""

    STATUS = "status"
    OUTPUT = "output"  # the final text
    OUTPUT_JSON = "output_json"  # the same, when it parses as JSON ("" otherwise)
    STOP_REASON = "stop_reason"  # end_turn, max_turns, token_ceiling, max_tokens, ...
    USAGE = "usage"  # JSON: input_tokens, output_tokens, cache_creation/read_input_tokens
    TURNS = "turns"
    TOOL_CALLS = "tool_calls"
    ATTEMPTS = "attempts"
    ERROR = "error"  # the last error ("" when none)
    WORKER = "worker"  # the pod that ran the last attempt
    SUBMITTED_AT = "submitted_at"  # unix ms
    STARTED_AT = "started_at"
    FINISHED_AT = "finished_at"
    TRACE_ID = "trace_id"
    RECLAIMS = "reclaims"  # how often a pod took the task over from a pod that stopped
    RUN = "run"  # the AgentRun of the task ("" when none), written at submit
    STEP = "step"  # its step ("" when none)


class DoneField(StrEnum):
    """The fields of an entry of `…:tasks:done`."""

    ID = "id"
    RUN = "run"
    STEP = "step"
    STATUS = "status"  # succeeded, failed or dead
    FINISHED_AT = "finished_at"  # unix ms


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.DEAD})


@dataclass(frozen=True)
class QueueKeys:
    """The keys of one agent's queue."""

    stream: str
    delayed: str
    dead: str
    done: str
    prefix: str
    agent_prefix: str

    @classmethod
    def of(cls, namespace: str, agent: str) -> QueueKeys:
        return cls(
            stream=agent_key(namespace, agent, "tasks"),
            delayed=agent_key(namespace, agent, "tasks:delayed"),
            dead=agent_key(namespace, agent, "tasks:dead"),
            done=agent_key(namespace, agent, "tasks:done"),
            prefix=agent_key(namespace, agent, "task:"),
            agent_prefix=agent_key(namespace, agent, ""),
        )

    def cancelled(self, run: str) -> str:
        """The mark that cancels the tasks of run `run` on this agent."""
        return f"{self.agent_prefix}cancelled:{run}"

    def result(self, task_id: str) -> str:
        return f"{self.prefix}{task_id}"

    def checkpoint(self, task_id: str) -> str:
        return f"{self.prefix}{task_id}:checkpoint"


def new_task_id() -> str:
    return "task_" + secrets.token_hex(12)


def validate_task_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not TASK_ID.fullmatch(task_id):
        raise InvalidTask(f"task id must be 1-64 characters of [A-Za-z0-9._:-], not {task_id!r}")
    return task_id


def encode_input(document: Mapping[str, Any]) -> str:
    """The input as stored in the stream: compact JSON, UTF-8 as is, no NaN or Infinity."""
    try:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidTask(f"input is not JSON-serialisable ({error})") from None


def _no_constants(name: str) -> Any:
    raise InvalidTask(f"input is not standard JSON ({name} is not allowed)")


def parse_input(raw: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The task input as a dict, or `InvalidTask` naming what is wrong. The size limit applies to
    the stored form (`encode_input`)."""
    if isinstance(raw, Mapping):
        document: Any = dict(raw)
    else:
        size = len(raw.encode() if isinstance(raw, str) else raw)
        if size > MAX_INPUT_BYTES:
            raise InvalidTask(f"input is {size:,} bytes; the limit is {MAX_INPUT_BYTES:,}")
        try:
            document = json.loads(raw, parse_constant=_no_constants)
        except ValueError as error:
            if isinstance(error, InvalidTask):
                raise
            raise InvalidTask(f"input is not JSON ({error})") from None
    if not isinstance(document, dict):
        raise InvalidTask("input must be a JSON object with a string 'prompt'")
    size = len(encode_input(document).encode())
    if size > MAX_INPUT_BYTES:
        raise InvalidTask(f"input is {size:,} bytes; the limit is {MAX_INPUT_BYTES:,}")
    prompt = document.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidTask("input.prompt: a non-empty string is required")
    unknown = set(document) - {"prompt", "metadata"}
    if unknown:
        raise InvalidTask(f"input: unknown fields {sorted(unknown)} (allowed: prompt, metadata)")
    if "metadata" in document and not isinstance(document["metadata"], dict):
        raise InvalidTask("input.metadata: must be a JSON object")
    return document


# Queue the first attempt unless the id is known: the result hash and the message at once.
_SUBMIT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, redis.call('HGET', KEYS[2], 'status') or ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], 'status', 'queued', 'attempts', 0, 'submitted_at', now,
  'run', ARGV[6], 'step', ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
  'id', ARGV[3], 'input', ARGV[4], 'attempt', 1, 'traceparent', ARGV[5],
  'run', ARGV[6], 'step', ARGV[7], 'run_budget', ARGV[8], 'submitted_at', now)
return {1, 'queued'}
"""


@dataclass(frozen=True)
class Submitted:
    task_id: str
    created: bool  # False: a task with this id existed already (nothing queued)
    status: str


class TaskQueue:
    """Submitting and reading the tasks of one agent (what the CLI and the task API use)."""

    def __init__(self, link: RedisLink, *, namespace: str, agent: str) -> None:
        self.link = link
        self.keys = QueueKeys.of(namespace, agent)
        self._submit = link.register_script(_SUBMIT)

    async def submit(
        self,
        raw_input: str | bytes | Mapping[str, Any],
        *,
        task_id: str | None = None,
        traceparent: str = "",
        run: str = "",
        step: str = "",
        run_budget: str = "",
    ) -> Submitted:
        """Validate and queue a task (nothing is written when the input is invalid).
        `run_budget` is the run's `kubeagents-run-budget` header value, which the runtime
        sends with every model call of the task."""
        document = parse_input(raw_input)
        task_id = validate_task_id(task_id) if task_id is not None else new_task_id()
        if len(run_budget) > MAX_RUN_BUDGET_CHARS or not run_budget.isprintable():
            raise InvalidTask(f"run_budget: at most {MAX_RUN_BUDGET_CHARS} printable characters")
        if run_budget and not run:
            raise InvalidTask("run_budget: only a task of a run (run set) has a run budget")
        created, status = await self._submit(
            keys=[self.keys.stream, self.keys.result(task_id)],
            args=[
                RESULT_TTL_SECONDS,
                STREAM_MAX_LEN,
                task_id,
                encode_input(document),
                traceparent,
                run,
                step,
                run_budget,
            ],
        )
        return Submitted(task_id, bool(created), as_text(status))

    async def result(self, task_id: str) -> dict[str, Any] | None:
        """The task's state and result (`ResultField`s, decoded), or None when unknown."""
        validate_task_id(task_id)
        flat = await self.link.execute("HGETALL", self.keys.result(task_id))
        if not flat:
            return None
        return decode_result(task_id, as_fields(flat))

    async def wait(self, task_id: str, *, seconds: float, poll: float = 0.2) -> dict[str, Any]:
        """Poll until the task has a final status or `seconds` passed; its result."""
        deadline = time.monotonic() + seconds
        while True:
            result = await self.result(task_id)
            if result is not None and result.get("status") in FINAL_STATUSES:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} not finished after {seconds:g}s: {result}")
            await asyncio.sleep(poll)


def as_text(value: Any) -> str:
    """A Redis reply value (bytes, or a number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def as_fields(flat: Sequence[Any]) -> dict[str, str]:
    """A flat `[name, value, name, value, …]` reply (HGETALL, a stream entry) as a dict."""
    return {as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat), 2)}


def decode_result(task_id: str, raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A result hash as JSON-friendly values: numbers as ints, usage and output_json parsed."""
    fields = {as_text(key): as_text(value) for key, value in raw.items()}
    result: dict[str, Any] = {"id": task_id, **fields}
    numbers = ("turns", "tool_calls", "attempts", "reclaims", "submitted_at", "started_at")
    for name in (*numbers, "finished_at"):
        if fields.get(name):
            result[name] = int(fields[name])
    for name in ("usage", "output_json"):
        if fields.get(name):
            result[name] = json.loads(fields[name])
        elif name in result:
            result[name] = None
    return result
