"""`kubeagents runtime` as a real process, configured through its environment like in the pod."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.processes import ManagedProcess, settings_env, wait_for
from kubeagents.fake_anthropic import FakeAnthropicControl, RecordedRequest

KUBEAGENTS = Path(sys.executable).parent / "kubeagents"
AGENT_MODEL = "claude-sonnet-5-5"


@dataclass
class RuntimeProcess:
    """A running runtime and its endpoints (task API, health, metrics)."""

    process: ManagedProcess
    url: str

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One HTTP request; its status and JSON body (error statuses included)."""
        sent = {"content-type": "application/json"} if body is not None else {}
        sent.update(headers or {})
        request = urllib.request.Request(  # noqa: S310 - loopback
            self.url + path, data=body, method=method, headers=sent
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def submit(self, prompt: str, **extra: Any) -> str:
        status, body = self.request(
            "POST", "/v1/tasks", json.dumps({"input": {"prompt": prompt}, **extra}).encode()
        )
        assert status in (200, 202), body
        task_id: str = body["id"]
        return task_id

    def task(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/tasks/{task_id}")[1]

    def wait_final(self, task_id: str, *, timeout: float = 30) -> dict[str, Any]:
        """Poll the task API until the task is succeeded, failed or dead; its result."""

        def final() -> dict[str, Any] | None:
            result = self.task(task_id)
            return result if result.get("status") in ("succeeded", "failed", "dead") else None

        return wait_for(final, timeout=timeout, what=f"task {task_id} to finish")

    def request_text(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:  # noqa: S310
            text: str = response.read().decode()
            return text

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()


def model_calls(fake: FakeAnthropicControl) -> list[RecordedRequest]:
    """The `POST /v1/messages` requests the fake received, in order."""
    return [request for request in fake.requests() if request.path == "/v1/messages"]


StartRuntime = Callable[..., RuntimeProcess]  # start(name="runtime", **settings)


def start_runtime(
    workdir: Path,
    *,
    proxy_url: str,
    redis_url: str,
    settings: Mapping[str, Any],
    name: str = "runtime",
    extra_env: Mapping[str, str] | None = None,
) -> RuntimeProcess:
    """Start a runtime with `settings` (field -> value; lists/maps become JSON) on a free port."""
    workdir.mkdir(parents=True, exist_ok=True)
    prompt = workdir / "system-prompt.txt"
    prompt.write_text("You are a careful research agent.\n")
    values: dict[str, Any] = {
        "agent": "research",
        "namespace": "tests",
        "pod_name": name,
        "model": AGENT_MODEL,
        "system_prompt_file": str(prompt),
        "proxy_url": proxy_url,
        "redis_url": redis_url,
        "host": "127.0.0.1",
        "port": 0,
        **settings,
    }
    env = settings_env("KUBEAGENTS_RUNTIME_", values)
    env.update(extra_env or {})
    process = ManagedProcess(name, [str(KUBEAGENTS), "runtime"], workdir / f"{name}.log", env=env)
    match = process.wait_for_log(r"listening on (http://\S+)", timeout=30)
    return RuntimeProcess(process, match.group(1))
