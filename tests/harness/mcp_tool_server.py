"""A real MCP tool server for tests, built on the mcp SDK's `MCPServer`.

    python tests/harness/mcp_tool_server.py http [--port N] [--require-header NAME=VALUE]
        [--no-handshake]
    python tests/harness/mcp_tool_server.py stdio

`http` serves streamable HTTP at http://127.0.0.1:PORT/mcp (`--port 0`, the default, takes a free
port) and prints `kubeagents test mcp server listening on http://127.0.0.1:PORT/mcp` once it
accepts connections. With `--require-header`, an HTTP request without that header value is
refused with 401 before it reaches the MCP app. With `--no-handshake`, an `initialize` request
is refused (400, a JSON-RPC error), so the server speaks only the handshake-free revisions
(2026-07-28), which a client that knows only the initialize handshake cannot use. `stdio` speaks
MCP over stdin/stdout.

The tools are deterministic, for tests of MCP clients and of an agent's tool-use loop:
`add`, `echo`, `lookup` (a tool error for an unknown key), `slow` (sleeps, for timeouts) and
`record` (appends its note to the file named by `MCP_TOOL_LOG`, so a test can count real runs).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LISTENING = "kubeagents test mcp server listening on {url}"
LOOKUP_TABLE = {"alpha": "first", "beta": "second", "gamma": "third"}


def build_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer(
        "kubeagents-test-tools", version="1.0.0", log_level="WARNING"
    )

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        return text

    @server.tool(description="Look up a fixed value by key (alpha, beta, gamma).")
    def lookup(key: str) -> str:
        if key not in LOOKUP_TABLE:
            raise ToolError(f"unknown key {key!r}")
        return LOOKUP_TABLE[key]

    @server.tool(description="Sleep for the given number of seconds, then return 'done'.")
    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "done"

    @server.tool(description="Append the note to the tool log (MCP_TOOL_LOG) and say 'recorded'.")
    def record(note: str) -> str:
        log = os.environ.get("MCP_TOOL_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as file:
                file.write(note + "\n")
        return "recorded"

    return server


class RequireHeader:
    """ASGI middleware: refuse HTTP requests whose header `name` is not exactly `value` (401)."""

    def __init__(self, app: ASGIApp, name: str, value: str) -> None:
        self.app = app
        self.name = name.lower().encode("latin-1")
        self.value = value.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            values = [v for k, v in scope["headers"] if k == self.name]
            if values != [self.value]:
                response = PlainTextResponse("missing or wrong required header\n", status_code=401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RefuseHandshake:
    """ASGI middleware: refuse a POSTed JSON-RPC `initialize` (400, JSON-RPC error), as a server
    would that speaks only the handshake-free protocol revisions."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if isinstance(request, dict) and request.get("method") == "initialize":
            error = {"code": -32602, "message": "Unsupported protocol version: use server/discover"}
            answer = {"jsonrpc": "2.0", "id": request.get("id"), "error": error}
            response = PlainTextResponse(
                json.dumps(answer), status_code=400, media_type="application/json"
            )
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class _AnnouncingServer(uvicorn.Server):
    """uvicorn, printing the project's "listening on" line once the socket accepts."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(LISTENING.format(url=self.url), flush=True)


def serve_http(
    server: MCPServer[Any], port: int, require_header: str | None, *, no_handshake: bool = False
) -> None:
    app: ASGIApp = server.streamable_http_app(host="127.0.0.1")
    if no_handshake:
        app = RefuseHandshake(app)
    if require_header is not None:
        name, _, value = require_header.partition("=")
        app = RequireHeader(app, name, value)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    _AnnouncingServer(config, url).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("transport", choices=["http", "stdio"])
    parser.add_argument("--port", type=int, default=0, help="HTTP port on 127.0.0.1 (0: any)")
    parser.add_argument(
        "--require-header",
        metavar="NAME=VALUE",
        help="refuse HTTP requests without this header value (401)",
    )
    parser.add_argument(
        "--no-handshake",
        action="store_true",
        help="refuse initialize: speak only the handshake-free revisions (HTTP)",
    )
    args = parser.parse_args(argv)
    if args.require_header is not None and "=" not in args.require_header:
        parser.error("--require-header takes NAME=VALUE")
    server = build_server()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        serve_http(server, args.port, args.require_header, no_handshake=args.no_handshake)
    return 0


if __name__ == "__main__":
    sys.exit(main())
