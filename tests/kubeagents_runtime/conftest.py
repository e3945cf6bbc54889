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
def runtime_defaults(mcp_server: McpServerProcess) -> dict[str, Any]:
    """`start_runtimes` (tests/conftest.py) starts runtimes with the MCP server `tools` and short
    retry delays."""
    return {
        "mcp_servers": [{"name": "tools", "transport": "http", "url": mcp_server.url}],
        "backoff_base_seconds": 0.1,
        "backoff_max_seconds": 0.5,
    }
