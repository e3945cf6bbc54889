"""`Toolbox`: the tools of the agent's MCP servers, kept connected, and the calls to them.

Each server has a keeper task that opens a session (`kubeagents.mcp_client.open_session`), keeps
it while it works and reconnects with backoff when it breaks (the SDK's sessions must be closed
by the task that opened them, hence one task per server). A server that is down contributes no
tools — the model sees only what can run — and is reported in `status()` (the runtime's
`/readyz` body and the `kubeagents_runtime_mcp_server_up` metric).

Tool names are the servers' own; when two servers offer the same name, the later one's tool is
exposed as `<server>__<tool>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from kubeagents.backoff import Backoff
from kubeagents.mcp_client import McpServer, McpSession, McpUnavailable, ToolResult, open_session

log = logging.getLogger("kubeagents.runtime")
RECONNECT_BACKOFF = Backoff(base=0.5, cap=30.0)


@dataclass(frozen=True)
class ServerStatus:
    up: bool
    reason: str = ""  # McpUnavailable.reason while down
    detail: str = ""


class Toolbox:
    def __init__(self, servers: list[McpServer], *, tool_timeout_seconds: float) -> None:
        self.servers = servers
        self.tool_timeout_seconds = tool_timeout_seconds
        self._sessions: dict[str, McpSession] = {}
        self._status: dict[str, ServerStatus] = {
            server.name: ServerStatus(False, "connecting") for server in servers
        }
        self._keepers: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()
        self._changed = asyncio.Event()

    async def start(self, *, wait_seconds: float) -> None:
        """Start connecting every server; wait up to `wait_seconds` for all to be up or down."""
        self._keepers = [asyncio.create_task(self._keep(server)) for server in self.servers]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                while any(s.reason == "connecting" for s in self._status.values()):
                    self._changed.clear()
                    await self._changed.wait()

    async def close(self) -> None:
        self._closing.set()
        for keeper in self._keepers:
            keeper.cancel()
        for keeper in self._keepers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper

    def status(self) -> dict[str, ServerStatus]:
        return dict(self._status)

    def tools(self) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str]]]:
        """The tools for the model (Anthropic's `tools` shape) and exposed name ->
        (server, tool)."""
        definitions: list[dict[str, Any]] = []
        routes: dict[str, tuple[str, str]] = {}
        for server in self.servers:
            session = self._sessions.get(server.name)
            if session is None:
                continue
            for tool in session.tools:
                name = tool.name if tool.name not in routes else f"{server.name}__{tool.name}"
                routes[name] = (server.name, tool.name)
                definitions.append(
                    {
                        "name": name,
                        "description": tool.description,
                        "input_schema": tool.input_schema or {"type": "object"},
                    }
                )
        return definitions, routes

    async def call(self, server: str, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """Run one tool; a server that is down or fails answers with an error result."""
        session = self._sessions.get(server)
        if session is None:
            return ToolResult(text=f"tool server {server} is unavailable", is_error=True)
        try:
            return await session.call_tool(tool, arguments, timeout=self.tool_timeout_seconds)
        except McpUnavailable as error:
            return ToolResult(text=f"tool {tool} failed: {error}", is_error=True)
        except ValueError as error:
            return ToolResult(text=str(error), is_error=True)

    async def _keep(self, server: McpServer) -> None:
        attempt = 0
        while not self._closing.is_set():
            try:
                async with open_session(server) as session:
                    self._sessions[server.name] = session
                    self._set(server.name, ServerStatus(True))
                    attempt = 0
                    await self._closing.wait()
            except McpUnavailable as error:
                self._set(server.name, ServerStatus(False, error.reason, str(error)))
                log.warning("MCP server %s unavailable: %s", server.name, error)
            finally:
                self._sessions.pop(server.name, None)
            if self._closing.is_set():
                return
            await asyncio.sleep(RECONNECT_BACKOFF.delay(attempt))
            attempt += 1

    def _set(self, name: str, status: ServerStatus) -> None:
        self._status[name] = status
        self._changed.set()
