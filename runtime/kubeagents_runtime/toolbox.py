"""`Toolbox`: the tools of the agent's MCP servers, kept connected, and the calls to them.

Each server has a keeper task that opens a session (`kubeagents.mcp.open_session`), keeps it
while it works — listing the tools again every `check_seconds`, which shows that the server
still answers — and reconnects with backoff when it breaks (the SDK's sessions must be closed by
the task that opened them, hence one task per server). A server that is down contributes no
tools — the model sees only what can run — and is reported in `status()` (the runtime's
`/status` and `/readyz` bodies, which the probe's `mcp` check reads, and the
`kubeagents_runtime_mcp_server_up` metric).

Tool names are the servers' own; when two servers offer the same name, the later one's tool is
exposed as `<server>__<tool>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kubeagents.backoff import Backoff
from kubeagents.mcp import McpServer, McpSession, McpUnavailable, ToolResult, open_session

log = logging.getLogger("kubeagents.runtime")
RECONNECT_BACKOFF = Backoff(base=0.5, cap=30.0)
CHECK_SECONDS = 10.0  # how often a connected server's tools are listed again


@dataclass(frozen=True)
class Failure:
    """The last time a server could not be used."""

    reason: str  # McpUnavailable.reason
    detail: str
    at: float  # time.time()


@dataclass(frozen=True)
class ServerStatus:
    up: bool
    reason: str = ""  # McpUnavailable.reason while down ("connecting" before the first try)
    detail: str = ""
    tools: int = 0  # tools the allow-list lets through, while up
    protocol_version: str = ""  # the revision the SDK negotiated, while up
    since: float = field(default_factory=time.time)  # when this state (up or down) began
    last_failure: Failure | None = None


class Toolbox:
    def __init__(
        self,
        servers: list[McpServer],
        *,
        tool_timeout_seconds: float,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.servers = servers
        self.tool_timeout_seconds = tool_timeout_seconds
        self.check_seconds = check_seconds
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
                    self._set(server.name, True, tools=len(session.tools))
                    attempt = 0
                    await self._watch(session)
            except McpUnavailable as error:
                self._set(server.name, False, error.reason, str(error))
                log.warning("MCP server %s unavailable: %s", server.name, error)
            finally:
                self._sessions.pop(server.name, None)
            if self._closing.is_set():
                return
            await asyncio.sleep(RECONNECT_BACKOFF.delay(attempt))
            attempt += 1

    async def _watch(self, session: McpSession) -> None:
        """Until closing, list the tools again every `check_seconds`; raises McpUnavailable
        when the server stops answering (the keeper then reconnects)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_seconds):
                    await self._closing.wait()
                    return
            tools = await session.refresh_tools()
            if len(tools) != self._status[session.server.name].tools:
                self._set(session.server.name, True, tools=len(tools))

    def _set(
        self, name: str, up: bool, reason: str = "", detail: str = "", *, tools: int = 0
    ) -> None:
        previous = self._status[name]
        failure = previous.last_failure
        if not up:
            failure = Failure(reason, detail, time.time())
        since = previous.since if previous.up == up else time.time()
        session = self._sessions.get(name) if up else None
        protocol = session.protocol_version if session is not None else ""
        self._status[name] = ServerStatus(up, reason, detail, tools, protocol, since, failure)
        self._changed.set()
