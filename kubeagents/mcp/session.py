"""Sessions with MCP servers, with the `mcp` SDK (2.x): list their tools, call them.

The agent runtime keeps one session per server (`open_session`, `McpSession.call_tool`,
`McpSession.refresh_tools` to see that the server still answers); `list_tools` lists a server's
tools once. The probe does not talk MCP: it reads the runtime's view of its servers (the
runtime's `GET /status`).

Error contract:

- A server that cannot be used raises `McpUnavailable` (from `list_tools`, `open_session`,
  `call_tool` and `refresh_tools` alike), never a raw httpx/anyio exception or exception group;
  its reasons are listed in `kubeagents.mcp.errors`.
- A tool that reports an error itself is not an exception: `call_tool` returns a `ToolResult`
  with `is_error=True`, whose text the model can read.
- Calling a tool outside the allow-list raises `ValueError` before anything is sent.
- In `async with open_session(...)`, a failure of the connection while the block runs (the
  server dies between calls) raises `McpUnavailable` out of the `async with` statement; an
  exception raised by the block itself comes out unchanged (not wrapped in a group).

Importing this module does not import the `mcp` SDK (about a second and 30 MB); the first
connection does. The SDK negotiates the protocol revision (any revision it supports, including
the handshake-free ones), so this module names none.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from kubeagents.mcp.config import McpServer
from kubeagents.mcp.errors import McpUnavailable

if TYPE_CHECKING:
    import httpx2
    from mcp.client.client import Client
    from mcp_types import CallToolResult

__all__ = ["McpSession", "ToolInfo", "ToolResult", "list_tools", "open_session"]

T = TypeVar("T")
_MAX_TOOL_PAGES = 100  # a paginating server that never ends cannot hang a connect


@dataclass(frozen=True)
class ToolInfo:
    """A tool the server offers (and the allow-list lets through)."""

    name: str
    description: str
    input_schema: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class ToolResult:
    """What a tool call returned.

    `text` is the text of the result's text blocks, joined by newlines (other block types, such
    as images, are left out); `is_error` is the tool's own error flag; `structured` is the
    result's structured content (any JSON value), or None.
    """

    text: str
    is_error: bool
    structured: Any = field(default=None, hash=False)


class McpSession:
    """A live connection to one MCP server, from `open_session`."""

    def __init__(
        self, server: McpServer, client: Client, tools: list[ToolInfo], status: _HttpStatus
    ) -> None:
        self.server = server
        self.tools = tools  # fetched once, when the session opened; filtered by the allow-list
        self._client = client
        self._status = status
        self._closed = False

    @property
    def protocol_version(self) -> str:
        """The protocol revision the SDK negotiated with the server."""
        return str(self._client.protocol_version)

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - also the SDK's own request timeout
    ) -> ToolResult:
        """Call tool `name`; `timeout` (default: the server's `timeout_seconds`) bounds the call.

        Raises ValueError for a tool outside the allow-list (or a bad timeout) and
        `McpUnavailable` when the call cannot complete. A tool's own error is a result with
        `is_error=True`.
        """
        self._check_open()
        if not self.server.allows_tool(name):
            raise ValueError(
                f"tool {name!r} is not in the allow-list of MCP server {self.server.name!r} "
                f"(allowed: {', '.join(self.server.tools or []) or 'none'})"
            )
        limit = self.server.timeout_seconds if timeout is None else timeout
        if not limit > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        result = await self._bounded(
            self._client.call_tool(name, dict(arguments or {}), read_timeout_seconds=limit),
            limit,
            f"tool {name!r} did not answer within {limit:g}s",
        )
        return _tool_result(result)

    async def refresh_tools(self) -> list[ToolInfo]:
        """List the server's tools again (bounded by `timeout_seconds`) and keep the new list
        in `tools`: shows that the session still works (`ping` is gone from the newest
        protocol revision). Raises `McpUnavailable` when it does not."""
        self._check_open()
        limit = self.server.timeout_seconds
        self.tools = await self._bounded(
            _list_allowed_tools(self._client, self.server),
            limit,
            f"no tool list within {limit:g}s",
        )
        return self.tools

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the session with MCP server {self.server.name!r} is closed")

    async def _bounded(self, request: Awaitable[T], limit: float, late: str) -> T:
        """Await one request to the server within `limit` seconds; any failure becomes
        `McpUnavailable` (`timeout` with the message `late` when it takes too long)."""
        import anyio

        self._status.last_error = None
        try:
            with anyio.fail_after(limit):
                return await request
        except TimeoutError as error:
            raise McpUnavailable(self.server.name, "timeout", late) from error
        except Exception as error:  # every SDK failure becomes McpUnavailable
            raise _unavailable(self.server, error, self._status) from error


@asynccontextmanager
async def open_session(server: McpServer) -> AsyncIterator[McpSession]:
    """Connect to `server`, list its tools, and yield the session; disconnect on exit.

    Connecting and listing are bounded by `server.timeout_seconds`, and so is the HTTP
    session's termination request on exit. A stdio server process is stopped on exit (stdin
    closed, then SIGTERM/SIGKILL to its process group after about 2 s each, by the SDK).
    """
    import anyio
    import anyio.lowlevel

    headers = _resolve_headers(server) if server.transport == "http" else {}
    status = _HttpStatus(server.timeout_seconds)
    body_error: BaseException | None = None
    failure: BaseException | None = None
    connect = anyio.CancelScope(deadline=anyio.current_time() + server.timeout_seconds)
    try:
        with connect:
            async with AsyncExitStack() as stack:
                client = await _connect(stack, server, headers, status)
                tools = await _list_allowed_tools(client, server)
                connect.deadline = math.inf
                await anyio.lowlevel.checkpoint()  # a deadline that fired just now lands here
                session = McpSession(server, client, tools, status)
                try:
                    yield session
                except BaseException as error:
                    body_error = error
                    raise
                finally:
                    session._closed = True
    except BaseException as error:
        failure = _failure(server, error, body_error, status, timed_out=connect.cancel_called)
        if failure is error:
            raise
    if failure is not None:
        # Raised outside the `except` block, so the caller's own exception keeps its
        # cause and context; an McpUnavailable made here is chained to the transport error.
        raise failure
    if connect.cancelled_caught:
        raise McpUnavailable(
            server.name, "timeout", f"no answer within {server.timeout_seconds:g}s while connecting"
        )


async def list_tools(server: McpServer) -> list[ToolInfo]:
    """The tools `server` offers that its allow-list lets through.

    The whole operation (connect, list, disconnect) is bounded by `server.timeout_seconds`.
    Raises `McpUnavailable`.
    """
    import anyio

    tools: list[ToolInfo] | None = None
    with anyio.move_on_after(server.timeout_seconds):
        async with open_session(server) as session:
            tools = session.tools
    if tools is None:
        raise McpUnavailable(
            server.name, "timeout", f"no tool list within {server.timeout_seconds:g}s"
        )
    return tools


# --- internals -------------------------------------------------------------------------------


class _HttpStatus:
    """Remembers the last HTTP error status of an MCP POST: the SDK turns a 4xx/5xx without a
    JSON-RPC body into a generic MCP error, which would hide e.g. a 401 from a wrong token."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last_error: int | None = None

    async def on_request(self, request: httpx2.Request) -> None:
        # The session's DELETE on close gets a read timeout; MCP POSTs and the event stream keep
        # none, because a tool call may run longer than any fixed read timeout (calls are
        # bounded by call_tool's own timeout instead).
        if request.method == "DELETE":
            request.extensions["timeout"] = {
                "connect": self.timeout,
                "read": self.timeout,
                "write": self.timeout,
                "pool": self.timeout,
            }

    async def on_response(self, response: httpx2.Response) -> None:
        if response.status_code >= 400 and response.request.method == "POST":
            self.last_error = response.status_code


def _resolve_headers(server: McpServer) -> dict[str, str]:
    headers = dict(server.headers)
    for name, path in server.header_files.items():
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            detail = getattr(error, "strerror", None) or str(error)
            raise McpUnavailable(
                server.name, "header_file", f"cannot read {path} for header {name}: {detail}"
            ) from error
        if not value:
            raise McpUnavailable(server.name, "header_file", f"{path} (header {name}) is empty")
        if "\n" in value or "\r" in value:
            raise McpUnavailable(
                server.name, "header_file", f"{path} (header {name}) holds more than one line"
            )
        headers[name] = value
    return headers


async def _connect(
    stack: AsyncExitStack, server: McpServer, headers: dict[str, str], status: _HttpStatus
) -> Client:
    from mcp.client.client import Client

    if server.transport == "http":
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        assert server.url is not None  # validated
        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                headers=headers,
                timeout=httpx2.Timeout(server.timeout_seconds, read=None),
                event_hooks={"request": [status.on_request], "response": [status.on_response]},
            )
        )
        client = Client(
            streamable_http_client(server.url, http_client=http),
            read_timeout_seconds=server.timeout_seconds,
            cache=None,
        )
    else:
        from mcp.client.stdio import StdioServerParameters

        assert server.command is not None  # validated
        program, *args = server.command
        parameters = StdioServerParameters(command=program, args=args, env=dict(server.env))
        client = Client(parameters, read_timeout_seconds=server.timeout_seconds, cache=None)
    return await stack.enter_async_context(client)


async def _list_allowed_tools(client: Client, server: McpServer) -> list[ToolInfo]:
    tools: list[ToolInfo] = []
    cursor: str | None = None
    for _ in range(_MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(
            ToolInfo(tool.name, tool.description or "", dict(tool.input_schema))
            for tool in page.tools
            if server.allows_tool(tool.name)
        )
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _tool_result(result: CallToolResult) -> ToolResult:
    texts = [block.text for block in result.content if block.type == "text"]
    return ToolResult(
        text="\n".join(texts), is_error=bool(result.is_error), structured=result.structured_content
    )


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _failure(
    server: McpServer,
    error: BaseException,
    body_error: BaseException | None,
    status: _HttpStatus,
    *,
    timed_out: bool,
) -> BaseException:
    """What `open_session` raises for `error`: `error` itself for cancellation and other
    BaseExceptions, the block's own exception unwrapped from task-group exception groups, or an
    McpUnavailable for a failure of the connection."""
    leaves = _leaves(error)
    if not all(isinstance(leaf, Exception) for leaf in leaves):
        return error
    for leaf in leaves:
        if leaf is body_error or isinstance(leaf, McpUnavailable):
            return leaf
    if timed_out:
        unavailable = McpUnavailable(
            server.name, "timeout", f"no answer within {server.timeout_seconds:g}s while connecting"
        )
    else:
        unavailable = _unavailable(server, leaves[0], status)
    unavailable.__cause__ = leaves[0]
    return unavailable


def _unavailable(server: McpServer, error: BaseException, status: _HttpStatus) -> McpUnavailable:
    """Classify one exception raised by the SDK or its transports."""
    import anyio
    import httpx2
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT
    from pydantic import ValidationError

    name = server.name
    if isinstance(error, McpUnavailable):
        return error
    if isinstance(error, MCPError):
        if error.code == REQUEST_TIMEOUT:
            return McpUnavailable(name, "timeout", error.message)
        if status.last_error is not None:
            return McpUnavailable(
                name,
                f"http_{status.last_error}",
                f"HTTP {status.last_error} answering an MCP request ({error.message})",
            )
        if error.code == CONNECTION_CLOSED:
            return McpUnavailable(name, "disconnected", error.message)
        return McpUnavailable(name, "protocol_error", f"MCP error {error.code}: {error.message}")
    if isinstance(error, TimeoutError | httpx2.TimeoutException):
        return McpUnavailable(name, "timeout", str(error) or type(error).__name__)
    if isinstance(error, httpx2.ConnectError):
        return McpUnavailable(name, "unreachable", f"cannot connect to {server.url}: {error}")
    if isinstance(error, httpx2.HTTPStatusError):
        code = error.response.status_code
        return McpUnavailable(name, f"http_{code}", str(error))
    closed = anyio.EndOfStream | anyio.BrokenResourceError | anyio.ClosedResourceError
    if isinstance(error, httpx2.TransportError | closed):
        return McpUnavailable(name, "disconnected", f"{type(error).__name__}: {error}")
    if isinstance(error, OSError) and server.transport == "stdio":
        return McpUnavailable(name, "unreachable", f"cannot start {server.command}: {error}")
    if isinstance(error, OSError):
        return McpUnavailable(name, "unreachable", f"{type(error).__name__}: {error}")
    if isinstance(error, ValidationError):
        return McpUnavailable(name, "protocol_error", f"invalid MCP message: {error}")
    return McpUnavailable(name, "protocol_error", f"{type(error).__name__}: {error}")
