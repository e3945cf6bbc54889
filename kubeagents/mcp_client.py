"""A client for the MCP servers an agent is configured with: list their tools, call them.

This is the one place the project talks MCP. The agent runtime's tool-use loop uses
`open_session` and `McpSession.call_tool`, and `list_tools` lists a server's tools, all with the
`mcp` SDK (2.x). The probe sidecar's health check is `check_tools`, which counts the tools without
the SDK: importing `mcp` loads its client, its server and every protocol revision's types (some
30 MB of RSS, which would take the probe past its 80 MB promise), so over streamable HTTP
`check_tools` speaks the few messages it needs itself (initialize, notifications/initialized,
tools/list, and DELETE of the session) with aiohttp, which the probe already loads. A stdio
check still goes through `list_tools`, and so loads the SDK.

Configuration (one `McpServer` per server; camelCase keys are accepted, as in Helm values)::

    name: search                    # [a-z0-9-]{1,63}
    transport: http                 # "http" (streamable HTTP) or "stdio"
    url: https://search.example/mcp # http only
    headers: {X-Team: research}     # http only: fixed request headers
    headerFiles:                    # http only: header -> file whose stripped content is the
      Authorization: /var/run/secrets/search/authorization   # value, read at every connect
    command: [search-mcp, --stdio]  # stdio only: argv of the server process
    env: {SEARCH_INDEX: docs}       # stdio only: added to a minimal environment (PATH, HOME, ...)
    tools: [search, fetch]          # optional allow-list; omitted or null = every tool
    timeoutSeconds: 10              # bounds connecting (+ listing tools) and each request

Error contract:

- A server that cannot be used raises `McpUnavailable` (from `list_tools`, `open_session`,
  `call_tool` and `check_tools` alike), never a raw httpx/aiohttp/anyio exception or exception
  group. Its `reason` is short and machine-readable: `unreachable` (connection refused, DNS
  failure, stdio command cannot start), `timeout`, `http_<status>` (the server answered an MCP
  request with that HTTP status, e.g. `http_401`), `disconnected` (the connection or the stdio
  process ended mid-session), `protocol_error` (an MCP error response or an answer that is not
  MCP), `header_file` (a header file is missing, unreadable or empty). `str(error)` is a
  one-line human message.
- A tool that reports an error itself is not an exception: `call_tool` returns a `ToolResult`
  with `is_error=True`, whose text the model can read.
- Calling a tool outside the allow-list raises `ValueError` before anything is sent.
- In `async with open_session(...)`, a failure of the connection while the block runs (the
  server dies between calls) raises `McpUnavailable` out of the `async with` statement; an
  exception raised by the block itself comes out unchanged (not wrapped in a group).

Importing this module does not import the `mcp` SDK (about a second and 30 MB), nor aiohttp;
the first SDK connection does, and the first `check_tools` imports aiohttp.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubeagents import __version__

if TYPE_CHECKING:
    import aiohttp
    import httpx2
    from mcp.client.client import Client
    from mcp_types import CallToolResult
    from yarl import URL

__all__ = [
    "McpServer",
    "McpSession",
    "McpUnavailable",
    "ToolInfo",
    "ToolResult",
    "check_tools",
    "list_tools",
    "open_session",
]

# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_MAX_TOOL_PAGES = 100  # a paginating server that never ends cannot hang a connect


class McpUnavailable(Exception):
    """The MCP server `server_name` could not be used; `reason` says why, machine-readably."""

    def __init__(self, server_name: str, reason: str, detail: str = "") -> None:
        super().__init__(server_name, reason, detail)
        self.server_name = server_name
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        suffix = f": {self.detail}" if self.detail else ""
        return f"MCP server {self.server_name!r} unavailable ({self.reason}){suffix}"


class McpServer(BaseModel):
    """One configured MCP server (see the module docstring for the shape)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel
    )

    name: str = Field(pattern=r"^[a-z0-9-]{1,63}$")
    transport: Literal["http", "stdio"]
    url: str | None = None
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    header_files: dict[str, Path] = Field(default_factory=dict)
    tools: list[str] | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {url!r}")
        return url

    @field_validator("command")
    @classmethod
    def _argv(cls, command: list[str] | None) -> list[str] | None:
        if command is not None and (not command or not command[0]):
            raise ValueError("must name the program to run, e.g. [my-mcp-server, --stdio]")
        return command

    @field_validator("headers", "header_files")
    @classmethod
    def _header_names(cls, headers: dict[str, Any]) -> dict[str, Any]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if isinstance(value, str) and ("\n" in value or "\r" in value):
                raise ValueError(f"the value of header {name!r} contains a line break")
        return headers

    @model_validator(mode="after")
    def _fits_transport(self) -> McpServer:
        if self.url is not None and self.command is not None:
            raise ValueError(
                "url and command are both set: use url (transport http) or command (stdio)"
            )
        if self.transport == "http":
            if self.url is None:
                raise ValueError("url is required when transport is 'http'")
            if self.command is not None or self.env:
                raise ValueError("command and env apply only to transport 'stdio'")
            both = {h.lower() for h in self.headers} & {h.lower() for h in self.header_files}
            if both:
                raise ValueError(f"headers and headerFiles both set {sorted(both)}")
        else:
            if self.command is None:
                raise ValueError("command is required when transport is 'stdio'")
            if self.url is not None:
                raise ValueError("url applies only to transport 'http'")
            if self.headers or self.header_files:
                raise ValueError("headers and headerFiles apply only to transport 'http'")
        return self

    def allows_tool(self, name: str) -> bool:
        """Whether the allow-list (`tools`) lets `name` through; no allow-list allows all."""
        return self.tools is None or name in self.tools


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
        import anyio

        if self._closed:
            raise RuntimeError(f"the session with MCP server {self.server.name!r} is closed")
        if not self.server.allows_tool(name):
            raise ValueError(
                f"tool {name!r} is not in the allow-list of MCP server {self.server.name!r} "
                f"(allowed: {', '.join(self.server.tools or []) or 'none'})"
            )
        limit = self.server.timeout_seconds if timeout is None else timeout
        if not limit > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._status.last_error = None
        try:
            with anyio.fail_after(limit):
                result = await self._client.call_tool(
                    name, dict(arguments or {}), read_timeout_seconds=limit
                )
        except TimeoutError as error:
            raise McpUnavailable(
                self.server.name, "timeout", f"tool {name!r} did not answer within {limit:g}s"
            ) from error
        except Exception as error:  # every SDK failure becomes McpUnavailable
            raise _unavailable(self.server, error, self._status) from error
        return _tool_result(result)


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


async def check_tools(server: McpServer) -> int:
    """How many tools `server` offers that its allow-list lets through: a light health check.

    Over HTTP this speaks streamable HTTP itself, with aiohttp, and never imports the `mcp` SDK
    (nor `mcp_types` or `httpx2`): POST `initialize` (offering protocol version 2025-06-18),
    POST `notifications/initialized`, POST `tools/list` for every page (at most 100), then
    DELETE the session if the server opened one (best effort). Answers may come as JSON or as
    an event stream. Header files are read at every check. Proxies come from the environment
    (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY), as for the SDK.

    Over stdio this is `len(await list_tools(server))`, which does load the SDK.

    The whole check is bounded by `server.timeout_seconds`. Raises `McpUnavailable`, with the
    reasons `list_tools` uses. Needs an asyncio event loop (uvloop included).
    """
    if server.transport == "stdio":
        return len(await list_tools(server))
    return await _HttpCheck(server, _resolve_headers(server)).run()


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


# --- check_tools over HTTP, without the SDK ----------------------------------------------------

# Offered in `initialize`: a widely deployed revision that every handshake-era server
# (SDK 1.10+ and 2.x, and other implementations) accepts.
_CHECK_PROTOCOL_VERSION = "2025-06-18"
# The revisions a server may answer with: those reachable by the initialize handshake (the SDK's
# HANDSHAKE_PROTOCOL_VERSIONS), which all share the few messages the check sends.
_HANDSHAKE_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
_MAX_SSE_EVENT_BYTES = 1024 * 1024  # the SDK's own limit on one event
_MAX_JSON_ANSWER_BYTES = 4 * 1024 * 1024  # keeps a runaway answer from bloating the probe
_MAX_REDIRECTS = 20  # as httpx2, under the SDK
_CHECK_HEADERS = ("accept", "content-type", "mcp-session-id", "mcp-protocol-version")
_SSE_LINE = re.compile(rb"\r\n|\r|\n")


class _HttpCheck:
    """One `check_tools` run over streamable HTTP."""

    def __init__(self, server: McpServer, headers: dict[str, str]) -> None:
        assert server.url is not None  # validated
        self.server = server
        self.url = server.url
        # The protocol's own headers win over configured ones, as in the SDK.
        self.headers = {k: v for k, v in headers.items() if k.lower() not in _CHECK_HEADERS}
        self.session_id: str | None = None
        self.version: str | None = None
        self.last_id = 0

    async def run(self) -> int:
        import asyncio

        import aiohttp

        deadline = asyncio.get_running_loop().time() + self.server.timeout_seconds
        try:
            # No aiohttp timeouts: the deadline bounds everything. No trust_env either: it
            # would add ~/.netrc credentials (clashing with an Authorization header); proxies
            # are looked up by `_send` instead.
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout()) as http:
                try:
                    async with asyncio.timeout_at(deadline):
                        count = await self._exchange(http)
                except Exception:
                    await self._end_session(http, deadline)
                    raise
                await self._end_session(http, deadline)
                return count
        except McpUnavailable:
            raise
        except TimeoutError as error:
            raise McpUnavailable(
                self.server.name,
                "timeout",
                f"no tool list within {self.server.timeout_seconds:g}s",
            ) from error
        except Exception as error:  # every aiohttp failure becomes McpUnavailable
            raise _check_failure(self.server, error) from error

    async def _exchange(self, http: aiohttp.ClientSession) -> int:
        info = {"name": "kubeagents-check", "version": __version__}
        initialized = await self._request(
            http,
            "initialize",
            {"protocolVersion": _CHECK_PROTOCOL_VERSION, "capabilities": {}, "clientInfo": info},
        )
        version = initialized.get("protocolVersion")
        if version not in _HANDSHAKE_VERSIONS:
            raise self._protocol_error(f"the server chose protocol version {version!r}")
        self.version = str(version)
        await self._notify(http, "notifications/initialized")
        count = 0
        cursor: str | None = None
        for _ in range(_MAX_TOOL_PAGES):
            page = await self._request(
                http, "tools/list", None if cursor is None else {"cursor": cursor}
            )
            tools = page.get("tools")
            if not isinstance(tools, list) or not all(_is_tool(tool) for tool in tools):
                raise self._protocol_error("the tools/list answer is not a list of tools")
            count += sum(1 for tool in tools if self.server.allows_tool(tool["name"]))
            cursor = page.get("nextCursor")
            if cursor is None:
                break
            if not isinstance(cursor, str):
                raise self._protocol_error(
                    "the tools/list answer has a nextCursor that is no string"
                )
        return count

    async def _request(
        self, http: aiohttp.ClientSession, method: str, params: dict[str, Any] | None
    ) -> dict[str, Any]:
        self.last_id += 1
        request_id = self.last_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        async with self._send(http, "POST", json.dumps(message).encode()) as response:
            self._check_status(response, method)
            if response.status == 202:
                raise self._protocol_error(f"the server accepted {method} (202) without answering")
            if method == "initialize":
                self.session_id = response.headers.get("mcp-session-id") or None
            kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
            if kind == "application/json":
                answer = await self._json_answer(response, method)
            elif kind == "text/event-stream":
                answer = await self._sse_answer(response, request_id, method)
            else:
                raise self._protocol_error(
                    f"the answer to {method} is {kind or 'untyped'}, not JSON or an event stream"
                )
        return self._result(answer, request_id, method)

    async def _notify(self, http: aiohttp.ClientSession, method: str) -> None:
        message = {"jsonrpc": "2.0", "method": method}
        async with self._send(http, "POST", json.dumps(message).encode()) as response:
            self._check_status(response, method)

    async def _end_session(self, http: aiohttp.ClientSession, deadline: float) -> None:
        """DELETE the session, if any, within what is left of the deadline; errors are ignored."""
        import asyncio

        if self.session_id is None or asyncio.get_running_loop().time() >= deadline:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout_at(deadline), self._send(http, "DELETE", None):
                pass

    @contextlib.asynccontextmanager
    async def _send(
        self, http: aiohttp.ClientSession, method: str, body: bytes | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; follow a 307/308 redirect that stays within the origin, as the SDK
        does (a trailing-slash normalisation, say); any other redirect is the answer."""
        from yarl import URL

        headers = {
            **self.headers,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        if self.version is not None:
            headers["Mcp-Protocol-Version"] = self.version
        url = URL(self.url)
        for redirects in range(_MAX_REDIRECTS + 1):
            proxy, proxy_auth = _env_proxy(url)
            response = await http.request(
                method,
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
            )
            target = _redirect_within_origin(url, response)
            if target is None or redirects == _MAX_REDIRECTS:
                break
            response.release()
            url = target
        try:
            yield response
        finally:
            response.release()

    def _check_status(self, response: aiohttp.ClientResponse, method: str) -> None:
        if not 200 <= response.status < 300:
            raise McpUnavailable(
                self.server.name,
                f"http_{response.status}",
                f"HTTP {response.status} {response.reason or ''} answering {method}".strip(),
            )

    async def _json_answer(self, response: aiohttp.ClientResponse, method: str) -> Any:
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > _MAX_JSON_ANSWER_BYTES:
                raise self._protocol_error(
                    f"the answer to {method} is larger than {_MAX_JSON_ANSWER_BYTES} bytes"
                )
        try:
            return json.loads(body)
        except ValueError as error:
            raise self._protocol_error(f"the answer to {method} is not JSON: {error}") from error

    async def _sse_answer(
        self, response: aiohttp.ClientResponse, request_id: int, method: str
    ) -> dict[str, Any]:
        """The event carrying the answer to `request_id`; other messages (notifications,
        requests from the server, priming events without data) are skipped."""
        events = _SseDecoder(_MAX_SSE_EVENT_BYTES)
        async for chunk in response.content.iter_any():
            try:
                messages = [json.loads(data) for data in events.feed(chunk) if data.strip()]
            except ValueError as error:
                raise self._protocol_error(f"bad event answering {method}: {error}") from error
            for message in messages:
                if (
                    isinstance(message, dict)
                    and "method" not in message
                    and message.get("id") == request_id
                ):
                    return message
        raise McpUnavailable(
            self.server.name,
            "disconnected",
            f"the event stream ended before the answer to {method}",
        )

    def _result(self, answer: Any, request_id: int, method: str) -> dict[str, Any]:
        if not isinstance(answer, dict) or answer.get("jsonrpc") != "2.0":
            raise self._protocol_error(f"the answer to {method} is not a JSON-RPC 2.0 message")
        error = answer.get("error")
        if isinstance(error, dict) and answer.get("id") in (request_id, None):
            raise self._protocol_error(
                f"MCP error {error.get('code')}: {error.get('message')} (answering {method})"
            )
        result = answer.get("result")
        if answer.get("id") != request_id or not isinstance(result, dict):
            raise self._protocol_error(f"the answer to {method} is not its JSON-RPC result")
        return result

    def _protocol_error(self, detail: str) -> McpUnavailable:
        return McpUnavailable(self.server.name, "protocol_error", detail)


class _SseDecoder:
    """Server-sent events (WHATWG HTML, "parsing an event stream"): feed bytes, get the data of
    each complete `message` event. An event (or a line) above `limit` bytes is a ValueError."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending = b""
        self._after_cr = False
        self._data: list[bytes] = []
        self._size = 0
        self._event = b""

    def feed(self, chunk: bytes) -> list[str]:
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        if not chunk:
            return []
        buffer = self._pending + chunk
        *lines, self._pending = _SSE_LINE.split(buffer)
        self._after_cr = buffer.endswith(b"\r")
        if len(self._pending) > self.limit:
            raise ValueError(f"a line longer than {self.limit} bytes")
        return [data for line in lines if (data := self._line(line)) is not None]

    def _line(self, line: bytes) -> str | None:
        if not line:  # a blank line ends the event
            data, event = self._data, self._event
            self._data, self._size, self._event = [], 0, b""
            if data and event in (b"", b"message"):
                return b"\n".join(data).decode("utf-8")
            return None
        if line.startswith(b":"):  # a comment (keep-alive)
            return None
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            self._size += len(value) + 1
            if self._size > self.limit:
                raise ValueError(f"an event larger than {self.limit} bytes")
            self._data.append(value)
        elif name == b"event":
            self._event = value
        return None


def _is_tool(tool: Any) -> bool:
    return (
        isinstance(tool, dict)
        and isinstance(tool.get("name"), str)
        and isinstance(tool.get("inputSchema"), dict)
    )


def _env_proxy(url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for `url` (HTTPS_PROXY/HTTP_PROXY, else ALL_PROXY; none
    for a NO_PROXY host), as httpx2 under the SDK picks it. Only http:// proxies (aiohttp's)."""
    import urllib.request

    import aiohttp
    from yarl import URL

    proxies = urllib.request.getproxies()
    value = proxies.get(url.scheme) or proxies.get("all")
    if not value or (url.host and urllib.request.proxy_bypass(url.host)):
        return None, None
    proxy = URL(value if "://" in value else f"http://{value}")
    if proxy.scheme != "http":
        return None, None
    return proxy.with_user(None), aiohttp.BasicAuth.from_url(proxy)


def _redirect_within_origin(sent: URL, response: aiohttp.ClientResponse) -> URL | None:
    """Where a 307/308 `response` redirects, if that stays within the origin of `sent` (or is
    its https upgrade on the default ports) and brings no credentials of its own; else None."""
    from yarl import URL

    location = response.headers.get("location")
    if response.status not in (307, 308) or not location:
        return None
    try:
        target = sent.join(URL(location))
    except ValueError:
        return None
    if target.raw_user is not None and (target.raw_user, target.raw_password) != (
        sent.raw_user,
        sent.raw_password,
    ):
        return None
    if (target.scheme, target.host, target.port) == (sent.scheme, sent.host, sent.port):
        return target
    upgrade = (
        target.host == sent.host
        and (sent.scheme, target.scheme) == ("http", "https")
        and sent.is_default_port()
        and target.is_default_port()
    )
    return target if upgrade else None


def _check_failure(server: McpServer, error: Exception) -> McpUnavailable:
    """Classify an exception raised by aiohttp during `check_tools`."""
    import aiohttp

    name = server.name
    if isinstance(error, aiohttp.ClientConnectorError | aiohttp.ClientHttpProxyError):
        return McpUnavailable(name, "unreachable", f"cannot connect to {server.url}: {error}")
    if isinstance(error, aiohttp.ClientResponseError):  # aiohttp could not parse the answer
        return McpUnavailable(name, "protocol_error", f"not an HTTP answer: {error.message}")
    if isinstance(error, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return McpUnavailable(name, "disconnected", f"{type(error).__name__}: {error}")
    if isinstance(error, ConnectionError):
        return McpUnavailable(name, "disconnected", f"{type(error).__name__}: {error}")
    if isinstance(error, OSError | aiohttp.InvalidURL):
        return McpUnavailable(name, "unreachable", f"{type(error).__name__}: {error}")
    return McpUnavailable(name, "protocol_error", f"{type(error).__name__}: {error}")
