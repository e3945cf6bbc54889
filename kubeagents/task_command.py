"""`kubeagents task submit|get|watch`: put a task on an agent's queue and follow it.

The queue is the contract of `kubeagents.tasks` (keys, statuses, result fields). Every command
prints JSON lines on stdout and one-line messages on stderr, and exits with:

- 0: done (`get`; `submit` without `--wait`), or the task succeeded (`submit --wait`, `watch`);
- 1: the task failed or is dead, no task has that id (`get`, `watch`), or Redis is unreachable
  or answered with an error;
- 2: invalid configuration or invalid task (bad input or id; nothing is written to Redis);
- 3: `--wait`/`--timeout` passed before the task reached a final status;
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict
from redis.exceptions import ConnectionError, RedisError

from kubeagents.agent import AgentSettings, RedisUrl, agent_key
from kubeagents.commands import Command
from kubeagents.errors import InvalidTask
from kubeagents.process import run
from kubeagents.redis_settings import RedisSettings
from kubeagents.tasks import (
    FINAL_STATUSES,
    Status,
    TaskQueue,
    parse_input,
    validate_task_id,
)

WATCH_POLL_SECONDS = 0.2
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class TaskSettings(RedisSettings, AgentSettings):
    """What every `kubeagents task` command needs: the agent, and the Redis holding its queue."""

    model_config = SettingsConfigDict(env_prefix="KUBEAGENTS_TASK_", extra="forbid")

    redis_url: RedisUrl = Field(
        default="redis://127.0.0.1:6379/0",
        description="The Redis holding the agent's task queue (the one its pods use).",
    )


class TaskSubmitSettings(TaskSettings):
    """`kubeagents task submit`."""

    input: str | None = Field(
        default=None,
        description='The task input as JSON: {"prompt": "...", "metadata": {...}}; "-" reads '
        "it from stdin (inputs over 128 KiB cannot be arguments). Give input or prompt, not both.",
    )
    prompt: str | None = Field(
        default=None,
        description='The prompt alone: the input {"prompt": PROMPT} (give input or prompt, '
        "not both).",
    )
    id: str | None = Field(
        default=None,
        description="The task's id (1-64 characters of [A-Za-z0-9._:-]); a random one when "
        "unset. An id already known queues nothing.",
    )
    traceparent: str = Field(
        default="",
        description="W3C trace context of the submitter; the task's spans join that trace.",
    )
    wait: float = Field(
        default=0,
        ge=0,
        description="Then wait up to this many seconds for a final status and print the result "
        "(0: do not wait). Exit 0 succeeded, 1 failed or dead, 3 not finished in time.",
    )

    @model_validator(mode="after")
    def _exactly_one_input(self) -> TaskSubmitSettings:
        if self.input is not None and self.prompt is not None:
            raise ValueError("give either --input or --prompt, not both")
        if self.input is None and self.prompt is None:
            raise ValueError("give the task's --input JSON or its --prompt TEXT")
        return self

    def raw_input(self) -> str | bytes:
        """The input as JSON text (`--prompt` as `{"prompt": …}`, measured like `--input`)."""
        if self.input == "-":
            return sys.stdin.buffer.read()
        if self.input is not None:
            return self.input
        return json.dumps({"prompt": self.prompt}, ensure_ascii=False)


class TaskGetSettings(TaskSettings):
    """`kubeagents task get ID`."""

    id: str = Field(description="The task's id.", json_schema_extra={"positional": True})


class TaskWatchSettings(TaskSettings):
    """`kubeagents task watch ID`."""

    id: str = Field(description="The task's id.", json_schema_extra={"positional": True})
    timeout: float = Field(
        default=0,
        ge=0,
        description="Give up (exit 3) after this many seconds without a final status "
        "(0: watch until it is final).",
    )


# --- entry points (`kubeagents.cli` calls them with the settings) ----------------------------


def submit(settings: TaskSubmitSettings) -> int:
    """Queue the task, print `{"id", "created", "status"}`; with `--wait`, its result too."""
    command = "task submit"
    raw = settings.raw_input()
    try:
        parse_input(raw)  # checked before connecting: an invalid task never reaches Redis
        if settings.id is not None:
            validate_task_id(settings.id)
    except InvalidTask as error:
        return _complain(command, f"invalid task: {error}", EXIT_INVALID)

    async def body(queue: TaskQueue) -> int:
        submitted = await queue.submit(raw, task_id=settings.id, traceparent=settings.traceparent)
        _emit({"id": submitted.task_id, "created": submitted.created, "status": submitted.status})
        if not settings.wait:
            return EXIT_OK
        try:
            result = await queue.wait(submitted.task_id, seconds=settings.wait)
        except TimeoutError:
            return _complain(
                command,
                f"task {submitted.task_id} not finished after {settings.wait:g}s",
                EXIT_TIMEOUT,
            )
        _emit(result)
        return _final_exit(result)

    return _run(command, settings, body)


def get(settings: TaskGetSettings) -> int:
    """Print the task's state and result as one JSON line."""
    command = "task get"
    if (invalid := _invalid_id(command, settings.id)) is not None:
        return invalid

    async def body(queue: TaskQueue) -> int:
        result = await queue.result(settings.id)
        if result is None:
            return _unknown(command, settings)
        _emit(result)
        return EXIT_OK

    return _run(command, settings, body)


def watch(settings: TaskWatchSettings) -> int:
    """Print the task's state each time its status or attempts change, until it is final."""
    command = "task watch"
    if (invalid := _invalid_id(command, settings.id)) is not None:
        return invalid

    async def body(queue: TaskQueue) -> int:
        deadline = time.monotonic() + settings.timeout if settings.timeout else None
        shown: tuple[Any, Any] | None = None
        while True:
            result = await queue.result(settings.id)
            if result is None:
                return _unknown(command, settings)
            state = (result.get("status"), result.get("attempts"))
            if state != shown:
                _emit(result)
                shown = state
            if result.get("status") in FINAL_STATUSES:
                return _final_exit(result)
            pause = WATCH_POLL_SECONDS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return _complain(
                        command,
                        f"task {settings.id} not finished after {settings.timeout:g}s",
                        EXIT_TIMEOUT,
                    )
                pause = min(pause, left)
            await asyncio.sleep(pause)

    return _run(command, settings, body)


# --- helpers ---------------------------------------------------------------------------------


def _run(command: str, settings: TaskSettings, body: Callable[[TaskQueue], Awaitable[int]]) -> int:
    """Run `body` with the agent's queue on one Redis link; Redis trouble is one line, exit 1."""

    async def main() -> int:
        link = settings.redis_link(slot_key=agent_key(settings.namespace, settings.agent, "tasks"))
        try:
            return await body(TaskQueue(link, namespace=settings.namespace, agent=settings.agent))
        except ConnectionError as error:
            return _complain(command, str(error), EXIT_FAILED)
        except RedisError as error:
            return _complain(command, f"Redis answered with an error: {error}", EXIT_FAILED)
        finally:
            await link.aclose()

    try:
        return run(main(), default_log_level=logging.WARNING)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _invalid_id(command: str, task_id: str) -> int | None:
    try:
        validate_task_id(task_id)
    except InvalidTask as error:
        return _complain(command, f"invalid task: {error}", EXIT_INVALID)
    return None


def _unknown(command: str, settings: TaskGetSettings | TaskWatchSettings) -> int:
    where = f"agent {settings.agent} in namespace {settings.namespace}"
    return _complain(command, f"no task {settings.id} for {where}", EXIT_FAILED)


def _final_exit(result: Mapping[str, Any]) -> int:
    return EXIT_OK if result.get("status") == Status.SUCCEEDED else EXIT_FAILED


def _emit(document: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def _complain(command: str, message: str, status: int) -> int:
    sys.stderr.write(f"kubeagents {command}: {message}\n")
    sys.stderr.flush()
    return status


# --- the subcommands, registered in the `kubeagents.commands` entry point group -------------

SUBMIT = Command(
    name="task submit",
    summary="Put a task on an agent's queue in Redis and print its id; with --wait, wait "
    "for its result too.",
    settings=TaskSubmitSettings,
    entry_point="kubeagents.task_command:submit",
)
GET = Command(
    name="task get",
    summary="Print a task's status and result.",
    settings=TaskGetSettings,
    entry_point="kubeagents.task_command:get",
)
WATCH = Command(
    name="task watch",
    summary="Print a task's status each time it changes, until it is final.",
    settings=TaskWatchSettings,
    entry_point="kubeagents.task_command:watch",
)
