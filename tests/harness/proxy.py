"""`kubeagents proxy` as a real process, configured through its environment like in the pod."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic

from harness.processes import ManagedProcess, settings_env

KUBEAGENTS = Path(sys.executable).parent / "kubeagents"
TEST_API_KEY = "sk-ant-test-real-key"


@dataclass
class ProxyProcess:
    """A running proxy: its API URL and its admin (metrics, health, budget) URL."""

    process: ManagedProcess
    url: str
    admin_url: str

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()


StartProxy = Callable[..., ProxyProcess]  # start(name="proxy", **settings) -> ProxyProcess


def start_proxy(
    workdir: Path,
    *,
    upstream_url: str,
    settings: Mapping[str, Any],
    name: str = "proxy",
    extra_env: Mapping[str, str] | None = None,
) -> ProxyProcess:
    """Start a proxy with `settings` (field -> value; lists/maps become JSON) on free ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    key_file = workdir / "api-key"
    key_file.write_text(TEST_API_KEY + "\n")
    values: dict[str, Any] = {
        "agent": "research",
        "namespace": "tests",
        "port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "upstream_url": upstream_url,
        "api_key_file": str(key_file),
        "allowed_models": ["claude-sonnet-5-5", "claude-haiku-4-5"],
        **settings,
    }
    env = settings_env("KUBEAGENTS_PROXY_", values)
    env.update(extra_env or {})
    process = ManagedProcess(name, [str(KUBEAGENTS), "proxy"], workdir / f"{name}.log", env=env)
    match = process.wait_for_log(r"listening on (http://\S+) \(metrics on port (\d+)\)", timeout=30)
    return ProxyProcess(process, match.group(1), f"http://127.0.0.1:{match.group(2)}")


def sdk(proxy: ProxyProcess, **options: Any) -> anthropic.Anthropic:
    """The official SDK pointed at the proxy, with a client key the proxy must ignore."""
    options.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-client-key-ignored", **options)
