"""The whole product installed on a cluster with a real node, as a user would install it.

One namespace holds the platform chart (Valkey with AOF on a provisioned volume, the team-run
operator and its CRDs), the fake Anthropic API from examples/local/ (unless a real API key is
given), and the two example agents from examples/, layered with their local overrides. `make run`
and the real-pod tests both install it through here, with the real helm and kubectl.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.binaries import REPO, tool
from harness.processes import HarnessError, ManagedProcess

NAMESPACE = "kubeagents"
PLATFORM_RELEASE = "kubeagents"
API_KEY_SECRET = "anthropic-api-key"
FAKE_API_KEY = "sk-ant-local-fake-upstream"
REAL_API_URL = "https://api.anthropic.com"
EXAMPLES = REPO / "examples"
INSTALL_TIMEOUT = "5m"


@dataclass(frozen=True)
class ExampleAgent:
    release: str
    values: Path
    local_values: Path


AGENTS = (
    ExampleAgent(
        "research", EXAMPLES / "research-agent.yaml", EXAMPLES / "local" / "research-agent.yaml"
    ),
    ExampleAgent(
        "summarizer",
        EXAMPLES / "summarizer-agent.yaml",
        EXAMPLES / "local" / "summarizer-agent.yaml",
    ),
)


@dataclass(frozen=True)
class Product:
    """Runs helm and kubectl against one cluster and namespace."""

    kubeconfig: Path
    namespace: str = NAMESPACE

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 300, input_text: str | None = None
    ) -> str:
        return self._run(
            [str(tool("kubectl")), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace,
             *args],
            check=check, timeout=timeout, input_text=input_text,
        )  # fmt: skip

    def helm(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        return self._run(
            [str(tool("helm")), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args],
            check=check,
            timeout=timeout,
        )

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    @staticmethod
    def _run(argv: list[str], *, check: bool, timeout: float, input_text: str | None = None) -> str:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, input=input_text
        )
        if check and result.returncode != 0:
            shown = " ".join(argv[3:] if "--kubeconfig" in argv[:3] else argv)
            raise HarnessError(f"{shown} failed:\n{result.stderr.strip() or result.stdout}")
        return result.stdout

    @contextlib.contextmanager
    def port_forward(self, target: str, port: int, log_dir: Path) -> Iterator[str]:
        """`kubectl port-forward TARGET :PORT` (a free local port) for the block; its URL."""
        process = ManagedProcess(
            f"port-forward {target}",
            [str(tool("kubectl")), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace,
             "port-forward", target, f":{port}"],
            log_dir / f"port-forward-{target.replace('/', '-')}-{port}.log",
        )  # fmt: skip
        try:
            found = process.wait_for_log(r"Forwarding from 127\.0\.0\.1:(\d+)", timeout=60)
            yield f"http://127.0.0.1:{found.group(1)}"
        finally:
            process.stop()

    # --- installing ------------------------------------------------------------------------

    def install_platform(self) -> None:
        self.helm(
            "upgrade", "--install", PLATFORM_RELEASE, str(REPO / "charts" / "kubeagents"),
            "--create-namespace", "--wait", "--timeout", INSTALL_TIMEOUT,
        )  # fmt: skip

    def install_fake_upstream(self) -> None:
        self.kubectl("apply", "-f", str(EXAMPLES / "local" / "fake-anthropic.yaml"))
        self.kubectl("rollout", "status", "deployment/fake-anthropic", "--timeout=5m")

    def put_api_key(self, api_key: str) -> None:
        """The agents' API key Secret (created or replaced), from stdin so it is never in argv."""
        manifest = self.kubectl(
            "create", "secret", "generic", API_KEY_SECRET, "--from-file=api-key=/dev/stdin",
            "--dry-run=client", "-o", "json", input_text=api_key,
        )  # fmt: skip
        self.kubectl("apply", "-f", "-", input_text=manifest)

    def install_agent(self, agent: ExampleAgent, *extra: str, wait: bool = True) -> None:
        """`helm upgrade --install` of an example agent with its local overrides and `extra`."""
        self.helm(
            "upgrade", "--install", agent.release, str(REPO / "charts" / "agent"),
            "-f", str(agent.values), "-f", str(agent.local_values), *extra,
            *(["--wait", "--timeout", INSTALL_TIMEOUT] if wait else []),
        )  # fmt: skip


def install(
    product: Product,
    *,
    api_key: str | None = None,
    agent_args: tuple[str, ...] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> None:
    """Install everything; with `api_key` the agents call the real API instead of the fake.
    `agent_args` are more helm arguments for both agents."""
    stages: list[tuple[str, Callable[[], None]]] = [
        (
            "platform chart (Valkey on a provisioned volume, operator, CRDs)",
            product.install_platform,
        ),
    ]
    extra: list[str] = list(agent_args)
    if api_key is None:
        stages.append(("fake Anthropic API (examples/local/fake-anthropic.yaml)",
                       product.install_fake_upstream))  # fmt: skip
        stages.append(("API key Secret (the fake's)", lambda: product.put_api_key(FAKE_API_KEY)))
    else:
        stages.append(("API key Secret (ANTHROPIC_API_KEY)", lambda: product.put_api_key(api_key)))
        extra += ["--set", f"upstreamUrl={REAL_API_URL}"]
    for agent in AGENTS:
        stages.append(
            (f"agent {agent.release} (pods Ready once their semantic probe passed)",
             functools.partial(product.install_agent, agent, *extra)),
        )  # fmt: skip
    for what, stage in stages:
        started = time.monotonic()
        progress(f"installing {what}…")
        stage()
        progress(f"  done in {time.monotonic() - started:.0f}s")
