"""Fixtures of the runtime tests: runtimes as real processes next to a real proxy, redis-server
and MCP tool server, in front of the fake upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.mcp_servers import McpServerProcess, start_mcp_server
from harness.processes import HarnessError
from harness.proxy import ProxyProcess, StartProxy
from harness.runtime import RuntimeProcess, StartRuntime, start_runtime


@pytest.fixture
def tool_log(tmp_path: Path) -> Path:
    """The file the MCP server's `record` tool appends to: one line per real execution."""
    return tmp_path / "tool-calls.log"


@pytest.fixture
def mcp_server(
    tmp_path_factory: pytest.TempPathFactory, tool_log: Path
) -> Iterator[McpServerProcess]:
    try:
        server = start_mcp_server(
            tmp_path_factory.mktemp("mcp"), extra_env={"MCP_TOOL_LOG": str(tool_log)}
        )
    except HarnessError as error:
        pytest.fail(f"the MCP server did not start: {error}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def proxy(start_proxies: StartProxy, redis_url: str) -> ProxyProcess:
    """The pod's proxy; it does not retry upstream errors itself, so the runtime sees them."""
    return start_proxies(
        redis_url=redis_url, budget_tokens_per_day=10_000_000, upstream_max_retries=0
    )


@pytest.fixture
def start_runtimes(
    tmp_path_factory: pytest.TempPathFactory,
    proxy: ProxyProcess,
    redis_url: str,
    mcp_server: McpServerProcess,
) -> Iterator[StartRuntime]:
    """Start runtimes (`start(name=..., **settings)`) with the MCP server `tools`; stopped after
    the test."""
    started: list[RuntimeProcess] = []

    def start(
        name: str = "runtime", extra_env: dict[str, str] | None = None, **settings: Any
    ) -> RuntimeProcess:
        values: dict[str, Any] = {
            "mcp_servers": [{"name": "tools", "transport": "http", "url": mcp_server.url}],
            "backoff_base_seconds": 0.1,
            "backoff_max_seconds": 0.5,
            **settings,
        }
        try:
            runtime = start_runtime(
                tmp_path_factory.mktemp(name),
                proxy_url=values.pop("proxy_url", proxy.url),
                redis_url=redis_url,
                settings=values,
                name=name,
                extra_env=extra_env,
            )
        except HarnessError as error:
            pytest.fail(f"the runtime did not start: {error}", pytrace=False)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.stop()
