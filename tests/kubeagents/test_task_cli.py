"""`kubeagents task submit|get|watch`: the real command against a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.crc import key_slot

from harness.processes import HarnessError, free_port, wait_for
from harness.redis_servers import RedisClusterNodes
from kubeagents.agent import agent_key
from kubeagents.tasks import MAX_INPUT_BYTES, QueueKeys

pytestmark = pytest.mark.integration  # each test runs `kubeagents task` as a process

KUBEAGENTS = Path(sys.executable).parent / "kubeagents"
AGENT, NAMESPACE = "writer", "team-a"
KEYS = QueueKeys.of(NAMESPACE, AGENT)
Message = tuple[bytes, dict[bytes, bytes]]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("KUBEAGENTS_TASK_")}


def argv(redis_url: str, *args: str) -> list[str]:
    subcommand, *rest = args
    agent = ["--agent", AGENT, "--namespace", NAMESPACE, "--redis-url", redis_url]
    return [str(KUBEAGENTS), "task", subcommand, *agent, *rest]


def task(redis_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv(redis_url, *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


class Running:
    """A `kubeagents task` process whose stdout lines are collected as they come."""

    def __init__(self, command: list[str]) -> None:
        self.popen = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(json.loads(line))

    def wait_for_lines(self, count: int) -> list[dict[str, Any]]:
        def enough() -> bool:
            if len(self.lines) < count and self.popen.poll() is not None:
                self._reader.join(timeout=5)
                if len(self.lines) < count:  # it will print no more: fail at once
                    raise HarnessError(f"exited with {self.popen.returncode}: {self.lines}")
            return len(self.lines) >= count

        wait_for(enough, timeout=20, what=f"{count} lines from {self.popen.args!r}")
        return self.lines

    def finish(self) -> tuple[int, str]:
        returncode = self.popen.wait(timeout=20)
        self._reader.join(timeout=5)
        assert self.popen.stderr is not None
        return returncode, self.popen.stderr.read()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for process in started:
        process.stop()


def start(started: list[Running], command: list[str]) -> Running:
    process = Running(command)
    started.append(process)
    return process


# --- submit ----------------------------------------------------------------------------------


def test_submit_a_prompt_prints_the_new_task_and_queues_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    result = task(redis_url, "submit", "--prompt", "Summarise the incident", "--id", "t-1")
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [{"id": "t-1", "created": True, "status": "queued"}]
    messages = cast(list[Message], redis_client.xrange(KEYS.stream))
    assert len(messages) == 1
    fields = messages[0][1]
    assert fields[b"id"] == b"t-1"
    assert json.loads(fields[b"input"]) == {"prompt": "Summarise the incident"}
    assert redis_client.hget(KEYS.result("t-1"), "status") == b"queued"

    again = task(redis_url, "submit", "--prompt", "Summarise the incident", "--id", "t-1")
    assert again.returncode == 0, again.stderr
    assert lines(again.stdout) == [{"id": "t-1", "created": False, "status": "queued"}]
    assert redis_client.xlen(KEYS.stream) == 1


def test_submit_json_input_without_id_gets_a_random_id(
    redis_url: str, redis_client: redis.Redis
) -> None:
    document = {"prompt": "Grüße", "metadata": {"ticket": 7}}
    result = task(redis_url, "submit", "--input", json.dumps(document, ensure_ascii=False))
    assert result.returncode == 0, result.stderr
    (printed,) = lines(result.stdout)
    assert printed["created"] is True
    assert printed["id"].startswith("task_")
    (message,) = cast(list[Message], redis_client.xrange(KEYS.stream))
    assert json.loads(message[1][b"input"]) == document


def test_submit_reads_input_from_stdin(redis_url: str, redis_client: redis.Redis) -> None:
    document = {"prompt": "p" * (200 * 1024)}  # longer than one argument may be
    result = task(redis_url, "submit", "--input", "-", "--id", "big", stdin=json.dumps(document))
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [{"id": "big", "created": True, "status": "queued"}]
    (message,) = cast(list[Message], redis_client.xrange(KEYS.stream))
    assert json.loads(message[1][b"input"]) == document


@pytest.mark.parametrize(
    ("args", "stdin", "problem"),
    [
        (["--input", "{not json"], "", "input is not JSON"),
        (["--input", '["x"]'], "", "must be a JSON object"),
        (["--input", '{"metadata": {}}'], "", "input.prompt: a non-empty string is required"),
        (["--prompt", ""], "", "input.prompt: a non-empty string is required"),
        (["--input", '{"prompt": "x", "tools": []}'], "", "unknown fields ['tools']"),
        (["--input", '{"prompt": "x", "metadata": 1}'], "", "input.metadata: must be a JSON"),
        (["--input", "-"], json.dumps({"prompt": "x" * MAX_INPUT_BYTES}), "the limit is 262,144"),
        (["--prompt", "x", "--id", "no spaces"], "", "task id must be 1-64 characters"),
    ],
)
def test_an_invalid_task_exits_2_naming_the_problem_and_writes_nothing(
    redis_url: str, redis_client: redis.Redis, args: list[str], stdin: str, problem: str
) -> None:
    result = task(redis_url, "submit", *args, stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("kubeagents task submit: invalid task: ")
    assert problem in result.stderr
    assert redis_client.dbsize() == 0


def test_input_and_prompt_together_are_invalid_configuration(
    redis_url: str, redis_client: redis.Redis
) -> None:
    result = task(redis_url, "submit", "--prompt", "x", "--input", '{"prompt": "x"}')
    assert result.returncode == 2
    assert "kubeagents task submit: invalid configuration:" in result.stderr
    assert "--input" in result.stderr
    assert "--prompt" in result.stderr
    assert redis_client.dbsize() == 0

    neither = task(redis_url, "submit")
    assert neither.returncode == 2
    assert "--input" in neither.stderr
    assert "--prompt" in neither.stderr


def test_unreachable_redis_exits_1_with_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = task(url, "submit", "--prompt", "x")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("kubeagents task submit: cannot connect to Redis 127.0.0.1:")
    assert len(result.stderr.splitlines()) == 1


def test_submit_wait_exits_1_when_the_task_fails(
    redis_url: str, redis_client: redis.Redis, running: list[Running]
) -> None:
    process = start(
        running, argv(redis_url, "submit", "--prompt", "x", "--id", "doomed", "--wait", "30")
    )
    assert process.wait_for_lines(1) == [{"id": "doomed", "created": True, "status": "queued"}]
    redis_client.hset(
        KEYS.result("doomed"), mapping={"status": "failed", "attempts": 1, "error": "boom"}
    )
    returncode, stderr = process.finish()
    assert returncode == 1, stderr
    final = process.lines[1]
    assert (final["id"], final["status"], final["error"], final["attempts"]) == (
        "doomed",
        "failed",
        "boom",
        1,
    )


def test_submit_wait_exits_3_when_the_task_does_not_finish(redis_url: str) -> None:
    result = task(redis_url, "submit", "--prompt", "x", "--id", "slow", "--wait", "0.3")
    assert result.returncode == 3
    assert lines(result.stdout) == [{"id": "slow", "created": True, "status": "queued"}]
    assert "kubeagents task submit: task slow not finished after 0.3s" in result.stderr


def test_submit_wait_of_a_known_succeeded_task_exits_0(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.result("done"), mapping={"status": "succeeded", "output": "hi"})
    result = task(redis_url, "submit", "--prompt", "x", "--id", "done", "--wait", "5")
    assert result.returncode == 0, result.stderr
    submitted, final = lines(result.stdout)
    assert submitted == {"id": "done", "created": False, "status": "succeeded"}
    assert (final["status"], final["output"]) == ("succeeded", "hi")
    assert redis_client.exists(KEYS.stream) == 0


# --- get -------------------------------------------------------------------------------------


def test_get_of_an_unknown_id_exits_1(redis_url: str) -> None:
    result = task(redis_url, "get", "nobody")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"kubeagents task get: no task nobody for agent {AGENT}")


def test_get_prints_the_result(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.hset(
        KEYS.result("done"),
        mapping={
            "status": "succeeded",
            "output": '{"n": 1}',
            "output_json": '{"n": 1}',
            "usage": '{"input_tokens": 3, "output_tokens": 4}',
            "turns": 2,
            "attempts": 1,
        },
    )
    result = task(redis_url, "get", "done")
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [
        {
            "id": "done",
            "status": "succeeded",
            "output": '{"n": 1}',
            "output_json": {"n": 1},
            "usage": {"input_tokens": 3, "output_tokens": 4},
            "turns": 2,
            "attempts": 1,
        }
    ]


def test_get_of_an_invalid_id_exits_2(redis_url: str) -> None:
    result = task(redis_url, "get", "no/slashes")
    assert result.returncode == 2
    assert "kubeagents task get: invalid task: task id must be" in result.stderr


# --- watch -----------------------------------------------------------------------------------


def test_watch_prints_each_change_until_final(
    redis_url: str, redis_client: redis.Redis, running: list[Running]
) -> None:
    assert task(redis_url, "submit", "--prompt", "x", "--id", "w").returncode == 0
    key = KEYS.result("w")
    process = start(running, argv(redis_url, "watch", "w"))
    assert process.wait_for_lines(1)[0]["status"] == "queued"

    redis_client.hset(key, mapping={"status": "running", "attempts": 1})
    assert process.wait_for_lines(2)[1]["status"] == "running"
    redis_client.hset(key, mapping={"status": "retrying", "error": "overloaded"})
    process.wait_for_lines(3)
    redis_client.hset(key, mapping={"status": "running", "attempts": 2})
    process.wait_for_lines(4)
    redis_client.hset(key, "worker", "writer-1")  # neither status nor attempts: no line
    redis_client.hset(key, mapping={"status": "succeeded", "output": "done"})

    returncode, stderr = process.finish()
    assert returncode == 0, stderr
    shown = [(line["status"], line["attempts"]) for line in process.lines]
    assert shown == [
        ("queued", 0),
        ("running", 1),
        ("retrying", 1),
        ("running", 2),
        ("succeeded", 2),
    ]
    assert process.lines[-1]["output"] == "done"


def test_watch_of_a_final_task_prints_it_once(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.hset(KEYS.result("gone"), mapping={"status": "dead", "attempts": 3})
    result = task(redis_url, "watch", "gone")
    assert result.returncode == 1
    assert lines(result.stdout) == [{"id": "gone", "status": "dead", "attempts": 3}]


def test_watch_of_an_unknown_id_exits_1(redis_url: str) -> None:
    result = task(redis_url, "watch", "nobody")
    assert result.returncode == 1
    assert result.stderr.startswith(f"kubeagents task watch: no task nobody for agent {AGENT}")


def test_watch_timeout_exits_3(redis_url: str) -> None:
    assert task(redis_url, "submit", "--prompt", "x", "--id", "w").returncode == 0
    result = task(redis_url, "watch", "w", "--timeout", "0.3")
    assert result.returncode == 3
    assert [line["status"] for line in lines(result.stdout)] == ["queued"]
    assert "kubeagents task watch: task w not finished after 0.3s" in result.stderr


# --- Redis Cluster ---------------------------------------------------------------------------


def test_submit_and_get_on_a_cluster_reach_the_node_of_the_agents_slot(
    redis_cluster: RedisClusterNodes,
) -> None:
    # An agent whose slot the seed node (the first, slots 0-5460) does not serve.
    agent = next(
        name
        for name in (f"agent-{i}" for i in range(100))
        if key_slot(agent_key(NAMESPACE, name, "tasks").encode()) > 5460
    )
    common = ["--agent", agent, "--namespace", NAMESPACE, "--redis-cluster", "true"]
    common += ["--redis-url", redis_cluster.url]
    submitted = subprocess.run(
        [str(KUBEAGENTS), "task", "submit", *common, "--prompt", "x", "--id", "c-1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )
    assert submitted.returncode == 0, submitted.stderr
    keys = QueueKeys.of(NAMESPACE, agent)
    with redis_cluster.cluster_client() as client:
        assert client.xlen(keys.stream) == 1
        assert client.hget(keys.result("c-1"), "status") == b"queued"
    got = subprocess.run(
        [str(KUBEAGENTS), "task", "get", *common, "c-1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert lines(got.stdout)[0]["status"] == "queued"
