"""The test MCP tool server (`harness/mcp_tool_server.py`) as a real process.

Over HTTP: `start_mcp_server(workdir)` runs it on a free loopback port and returns its `/mcp` URL.
Over stdio: the MCP client starts the server itself, from `stdio_command()`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.processes import HarnessError, ManagedProcess

TOOL_SERVER = Path(__file__).with_name("mcp_tool_server.py")
TOOL_NAMES = ("add", "echo", "lookup", "slow", "record")
START_TIMEOUT = 30.0


@dataclass
class McpServerProcess:
    """A running tool server: its streamable HTTP endpoint URL."""

    process: ManagedProcess
    url: str

    def stop(self) -> None:
        self.process.stop()


def stdio_command(*extra: str) -> list[str]:
    """The argv that runs the tool server over stdio (for an `McpServer.command`)."""
    return [sys.executable, str(TOOL_SERVER), "stdio", *extra]


def start_mcp_server(
    workdir: Path,
    *,
    name: str = "tools",
    require_header: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    port: int = 0,
    no_handshake: bool = False,
) -> McpServerProcess:
    """Start the tool server over HTTP on a free loopback port (or on `port`).

    `require_header` ("NAME=VALUE") makes it refuse requests without that header with 401;
    `extra_env` is added to its environment (e.g. `MCP_TOOL_LOG` to count `record` calls);
    `no_handshake` makes it refuse `initialize`: it then speaks only the handshake-free protocol
    revisions.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(TOOL_SERVER), "http", "--port", str(port)]
    if require_header is not None:
        if "=" not in require_header:
            raise HarnessError(f"require_header takes NAME=VALUE, got {require_header!r}")
        argv += ["--require-header", require_header]
    if no_handshake:
        argv.append("--no-handshake")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    process = ManagedProcess(f"mcp-server:{name}", argv, workdir / f"{name}.log", env=env)
    try:
        match = process.wait_for_log(
            r"kubeagents test mcp server listening on (http://\S+/mcp)$", timeout=START_TIMEOUT
        )
    except HarnessError:
        process.stop()
        raise
    return McpServerProcess(process, match.group(1))
