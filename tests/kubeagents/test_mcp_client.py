"""kubeagents.mcp_client against a real MCP tool server, over streamable HTTP and over stdio."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from aiohttp import web
from pydantic import ValidationError

from harness.mcp_servers import TOOL_NAMES, McpServerProcess, start_mcp_server, stdio_command
from harness.processes import HarnessError, free_port, wait_for
from kubeagents.mcp_client import (
    McpServer,
    McpUnavailable,
    ToolInfo,
    ToolResult,
    check_tools,
    list_tools,
    open_session,
)

T = TypeVar("T")
TOKEN = "t0ken-for-tests"


def run(scenario: Callable[[], Awaitable[T]], *, loop: str = "asyncio") -> T:
    async def main() -> T:
        return await scenario()

    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def started(start: Callable[[], T]) -> T:
    try:
        return start()
    except HarnessError as error:
        pytest.fail(f"the test MCP server did not start: {error}", pytrace=False)


@pytest.fixture(scope="module")
def tool_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp-log") / "tool.log"


@pytest.fixture(scope="module")
def http_server(
    tmp_path_factory: pytest.TempPathFactory, tool_log: Path
) -> Iterator[McpServerProcess]:
    workdir = tmp_path_factory.mktemp("mcp-http")
    server = started(lambda: start_mcp_server(workdir, extra_env={"MCP_TOOL_LOG": str(tool_log)}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServerProcess]:
    workdir = tmp_path_factory.mktemp("mcp-guarded")
    server = started(
        lambda: start_mcp_server(
            workdir, name="guarded", require_header=f"X-Kubeagents-Token={TOKEN}"
        )
    )
    yield server
    server.stop()


def http_config(server: McpServerProcess, **fields: Any) -> McpServer:
    return McpServer(name="tools", transport="http", url=server.url, **fields)


def stdio_config(*, env: dict[str, str] | None = None, **fields: Any) -> McpServer:
    return McpServer(
        name="tools-stdio", transport="stdio", command=stdio_command(), env=env or {}, **fields
    )


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """An MCP URL whose port accepts connections (the kernel does) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"


@contextlib.asynccontextmanager
async def http_endpoint(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An aiohttp server on a free loopback port, in the running loop, answering /mcp."""
    app = web.Application()
    app.router.add_route("*", "/mcp", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/mcp"
    finally:
        await runner.cleanup()


# --- listing ---------------------------------------------------------------------------------


def test_list_tools_over_http_returns_every_tool_with_its_schema(
    http_server: McpServerProcess,
) -> None:
    tools = run(lambda: list_tools(http_config(http_server)))

    assert [tool.name for tool in tools] == list(TOOL_NAMES)
    by_name = {tool.name: tool for tool in tools}
    assert isinstance(by_name["add"], ToolInfo)
    assert by_name["add"].description == "Add two integers."
    assert by_name["add"].input_schema["type"] == "object"
    assert by_name["add"].input_schema["properties"]["a"]["type"] == "integer"
    assert sorted(by_name["add"].input_schema["required"]) == ["a", "b"]
    assert by_name["slow"].input_schema["properties"]["seconds"]["type"] == "number"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_list_tools_over_stdio_returns_every_tool(loop: str) -> None:
    tools = run(lambda: list_tools(stdio_config()), loop=loop)

    assert [tool.name for tool in tools] == list(TOOL_NAMES)
    assert tools[1].input_schema["properties"]["text"]["type"] == "string"


def test_the_allow_list_filters_tools_and_refuses_other_calls_before_sending(
    http_server: McpServerProcess, tool_log: Path
) -> None:
    config = http_config(http_server, tools=["echo", "add", "not-offered"])

    async def scenario() -> list[str]:
        async with open_session(config) as session:
            with pytest.raises(ValueError, match="'record' is not in the allow-list"):
                await session.call_tool("record", {"note": "must not run"})
            return [tool.name for tool in session.tools]

    assert run(lambda: list_tools(config)) == [
        ToolInfo(t.name, t.description, t.input_schema)
        for t in run(lambda: list_tools(http_config(http_server)))
        if t.name in ("add", "echo")
    ]
    assert run(scenario) == ["add", "echo"]
    assert "must not run" not in log_lines(tool_log)


# --- calls -----------------------------------------------------------------------------------


def test_call_tool_returns_text_and_structured_content(
    http_server: McpServerProcess, tool_log: Path
) -> None:
    note = f"note-{uuid.uuid4()}"

    async def scenario() -> list[ToolResult]:
        async with open_session(http_config(http_server)) as session:
            return [
                await session.call_tool("add", {"a": 2, "b": 40}),
                await session.call_tool("echo", {"text": "hello, tools"}),
                await session.call_tool("lookup", {"key": "beta"}),
                await session.call_tool("record", {"note": note}),
            ]

    added, echoed, looked_up, recorded = run(scenario)
    assert added == ToolResult(text="42", is_error=False, structured={"result": 42})
    assert echoed == ToolResult(
        text="hello, tools", is_error=False, structured={"result": "hello, tools"}
    )
    assert looked_up.text == "second"
    assert recorded.text == "recorded"
    assert log_lines(tool_log).count(note) == 1  # the tool really ran, once


def test_call_tool_over_stdio_passes_env_to_the_server(tmp_path: Path) -> None:
    log = tmp_path / "stdio-tool.log"

    async def scenario() -> list[ToolResult]:
        async with open_session(stdio_config(env={"MCP_TOOL_LOG": str(log)})) as session:
            return [
                await session.call_tool("add", {"a": -1, "b": 1}),
                await session.call_tool("echo", {"text": "über stdio"}),
                await session.call_tool("record", {"note": "one"}),
                await session.call_tool("record", {"note": "two"}),
            ]

    added, echoed, *_ = run(scenario)
    assert added.text == "0"
    assert echoed.text == "über stdio"
    assert log_lines(log) == ["one", "two"]


def test_a_tool_error_is_a_result_not_an_exception(http_server: McpServerProcess) -> None:
    async def scenario() -> tuple[ToolResult, ToolResult]:
        async with open_session(http_config(http_server)) as session:
            failed = await session.call_tool("lookup", {"key": "no-such-key"})
            return failed, await session.call_tool("lookup", {"key": "alpha"})

    failed, after = run(scenario)
    assert failed.is_error is True
    assert "unknown key 'no-such-key'" in failed.text
    assert failed.structured is None
    assert after == ToolResult(text="first", is_error=False, structured={"result": "first"})


@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_a_slow_tool_times_out_and_the_session_stays_usable(
    transport: str, http_server: McpServerProcess
) -> None:
    config = http_config(http_server) if transport == "http" else stdio_config()

    async def scenario() -> tuple[McpUnavailable, float, ToolResult, float]:
        async with open_session(config) as session:
            begun = time.monotonic()
            with pytest.raises(McpUnavailable) as timed_out:
                await session.call_tool("slow", {"seconds": 30}, timeout=0.3)
            waited = time.monotonic() - begun
            after = await session.call_tool("echo", {"text": "still here"})
            closing = time.monotonic()
        return timed_out.value, waited, after, time.monotonic() - closing

    error, waited, after, closed_in = run(scenario)
    assert error.reason == "timeout"
    assert error.server_name == config.name
    assert "'slow' did not answer within 0.3s" in str(error)
    assert 0.3 <= waited < 1.0
    assert after.text == "still here"
    assert closed_in < 1.5  # the abandoned call does not hold up the disconnect


# --- unavailable servers ---------------------------------------------------------------------


def test_nobody_listening_is_unreachable_at_once() -> None:
    config = McpServer(
        name="down", transport="http", url=f"http://127.0.0.1:{free_port()}/mcp", timeout_seconds=5
    )
    begun = time.monotonic()
    with pytest.raises(McpUnavailable) as error:
        run(lambda: list_tools(config))

    assert error.value.reason == "unreachable"
    assert error.value.server_name == "down"
    assert time.monotonic() - begun < 2.5  # refused, not waited out (first use imports the SDK)
    assert isinstance(error.value.__cause__, Exception)
    assert not isinstance(error.value.__cause__, BaseExceptionGroup)


def test_a_server_that_never_answers_times_out_within_timeout_seconds() -> None:
    with silent_endpoint() as url:
        config = McpServer(name="silent", transport="http", url=url, timeout_seconds=0.5)

        async def with_session() -> None:
            async with open_session(config):
                pytest.fail("the session must not open")

        for attempt in (lambda: list_tools(config), with_session):
            begun = time.monotonic()
            with pytest.raises(McpUnavailable) as error:
                run(attempt)
            assert error.value.reason == "timeout"
            assert 0.5 <= time.monotonic() - begun < 1.5


def test_a_stdio_command_that_cannot_start_is_unreachable(tmp_path: Path) -> None:
    missing = McpServer(name="gone", transport="stdio", command=[str(tmp_path / "no-such-server")])
    with pytest.raises(McpUnavailable) as error:
        run(lambda: list_tools(missing))
    assert error.value.reason == "unreachable"
    assert "no-such-server" in str(error.value)

    exits = McpServer(name="quits", transport="stdio", command=[sys.executable, "-c", "pass"])
    with pytest.raises(McpUnavailable) as error:
        run(lambda: list_tools(exits))
    assert error.value.reason == "disconnected"


def test_a_server_that_dies_mid_session_raises_mcp_unavailable_from_the_block(
    tmp_path: Path,
) -> None:
    server = started(lambda: start_mcp_server(tmp_path, name="mortal"))

    async def scenario() -> None:
        async with open_session(http_config(server)) as session:
            assert (await session.call_tool("echo", {"text": "alive"})).text == "alive"
            server.process.kill()
            await session.call_tool("echo", {"text": "anyone?"})

    try:
        with pytest.raises(McpUnavailable) as error:
            run(scenario)
    finally:
        server.stop()
    assert error.value.reason in ("unreachable", "disconnected")


def test_an_exception_in_the_session_block_comes_out_unchanged(
    http_server: McpServerProcess,
) -> None:
    class Mine(Exception):
        pass

    async def scenario() -> None:
        async with open_session(http_config(http_server)):
            try:
                raise KeyError("inner")
            except KeyError as inner:
                raise Mine("from the block") from inner

    with pytest.raises(Mine, match="from the block") as error:
        run(scenario)
    assert isinstance(error.value.__cause__, KeyError)


def test_a_stdio_server_process_is_gone_after_the_session() -> None:
    marker = f"KUBEAGENTS_TEST_MARKER={uuid.uuid4()}"
    key, _, value = marker.partition("=")

    def marked_pids() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    async def scenario() -> list[int]:
        async with open_session(stdio_config(env={key: value})) as session:
            await session.call_tool("echo", {"text": "x"})
            return marked_pids()

    assert len(run(scenario)) == 1
    wait_for(lambda: not marked_pids(), timeout=2, what="the stdio server process to be gone")


# --- headers ---------------------------------------------------------------------------------


def test_header_files_are_read_at_connect_time(
    guarded_server: McpServerProcess, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    config = http_config(guarded_server, header_files={"X-Kubeagents-Token": token_file})

    token_file.write_text(TOKEN + "\n")  # like a mounted Secret: the newline is stripped
    assert len(run(lambda: list_tools(config))) == len(TOOL_NAMES)

    token_file.write_text("not-the-token\n")  # the Secret rotated to a wrong value
    with pytest.raises(McpUnavailable) as error:
        run(lambda: list_tools(config))
    assert error.value.reason == "http_401"
    assert "not-the-token" not in str(error.value)


def test_a_fixed_header_works_and_a_missing_one_is_refused(
    guarded_server: McpServerProcess,
) -> None:
    fixed = http_config(guarded_server, headers={"x-kubeagents-token": TOKEN})
    assert len(run(lambda: list_tools(fixed))) == len(TOOL_NAMES)

    with pytest.raises(McpUnavailable) as error:
        run(lambda: list_tools(http_config(guarded_server)))
    assert error.value.reason == "http_401"


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_a_missing_or_empty_header_file_is_reported(
    guarded_server: McpServerProcess, tmp_path: Path, content: str | None
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    config = http_config(guarded_server, header_files={"X-Kubeagents-Token": token_file})

    with pytest.raises(McpUnavailable) as error:
        run(lambda: list_tools(config))
    assert error.value.reason == "header_file"
    assert str(token_file) in str(error.value)


# --- check_tools: the light health check, without the SDK ------------------------------------


class ScriptedMcp:
    """A hand-written streamable HTTP MCP endpoint that records the requests it receives.

    Tools come in `pages` (nextCursor "1", "2", ...). Answers are JSON, or with `sse=True` event
    streams that carry noise before the answer (a comment, a priming event, a notification, a
    server request reusing the client's id), then the answer over many data lines, split across
    writes (even between the CR and LF that end a line). `fail` answers that
    method with a JSON-RPC error; `truncate` ends that method's event stream before the answer.
    """

    def __init__(
        self,
        *,
        pages: list[list[str]],
        session_id: str | None = "session-42",
        version: str = "2025-06-18",
        sse: bool = False,
        fail: str | None = None,
        truncate: str | None = None,
    ) -> None:
        self.pages = pages
        self.session_id = session_id
        self.version = version
        self.sse = sse or truncate is not None
        self.fail = fail
        self.truncate = truncate
        self.requests: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        message = await request.json() if request.method == "POST" else {}
        self.requests.append(
            {
                "http": request.method,
                "rpc": message.get("method"),
                "params": message.get("params"),
                "session": request.headers.get("mcp-session-id"),
                "version": request.headers.get("mcp-protocol-version"),
            }
        )
        if request.method == "DELETE":
            return web.Response()
        if "id" not in message:
            return web.Response(status=202)
        answer = self.answer(message["method"], message["id"], message.get("params") or {})
        headers = {"mcp-session-id": self.session_id} if self.session_id else {}
        if not self.sse:
            return web.json_response(answer, headers=headers)
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        noise = [
            {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}},
            {"jsonrpc": "2.0", "id": message["id"], "method": "ping"},
        ]
        await response.write(b": keep-alive\r\n\r\nid: e-1\r\ndata:\r\n\r\n")
        for note in noise:
            await response.write(f"event: message\r\ndata: {json.dumps(note)}\r\n\r".encode())
            await response.write(b"\n")
        if message["method"] != self.truncate:
            # One data line per line of indented JSON, each CRLF split across two writes.
            lines = json.dumps(answer, indent=1).encode().splitlines()
            await response.write(b"event: message\r\n")
            for line in lines:
                await response.write(b"data: " + line[:5])
                await response.write(line[5:] + b"\r")
                await response.write(b"\n")
            await response.write(b"\r\n")
        await response.write_eof()
        return response

    def answer(self, method: str, request_id: int, params: dict[str, Any]) -> dict[str, Any]:
        if method == self.fail:
            error = {"code": -32603, "message": "the index is offline"}
            return {"jsonrpc": "2.0", "id": request_id, "error": error}
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": self.version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "scripted", "version": "1"},
            }
        else:
            page = int(params.get("cursor", 0))
            tools = [{"name": name, "inputSchema": {"type": "object"}} for name in self.pages[page]]
            result = {"tools": tools}
            if page + 1 < len(self.pages):
                result["nextCursor"] = str(page + 1)
        return {"jsonrpc": "2.0", "id": request_id, "result": result}


def check_scripted(scripted: ScriptedMcp, **fields: Any) -> int:
    async def scenario() -> int:
        async with http_endpoint(scripted.handle) as url:
            return await check_tools(
                McpServer(name="scripted", transport="http", url=url, **fields)
            )

    return run(scenario)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_check_tools_over_http_counts_the_allowed_tools(
    http_server: McpServerProcess, loop: str
) -> None:
    assert run(lambda: check_tools(http_config(http_server)), loop=loop) == len(TOOL_NAMES)
    allowed = http_config(http_server, tools=["echo", "add", "not-offered"])
    assert run(lambda: check_tools(allowed), loop=loop) == 2


def test_check_tools_follows_a_redirect_within_the_origin(http_server: McpServerProcess) -> None:
    # The SDK server redirects /mcp/ to /mcp (307); the SDK client follows that, so must the check.
    slash = McpServer(name="tools", transport="http", url=http_server.url + "/")
    assert run(lambda: check_tools(slash)) == len(TOOL_NAMES)


def test_check_tools_over_stdio_lists_the_tools_with_the_sdk() -> None:
    assert run(lambda: check_tools(stdio_config(tools=["lookup", "slow"]))) == 2


def test_check_tools_speaks_the_protocol_with_session_and_pagination() -> None:
    scripted = ScriptedMcp(pages=[["add", "echo"], ["lookup"], ["slow", "record"]])

    assert check_scripted(scripted) == 5
    rpc = [(r["http"], r["rpc"], r["session"], r["version"]) for r in scripted.requests]
    assert rpc == [
        ("POST", "initialize", None, None),
        ("POST", "notifications/initialized", "session-42", "2025-06-18"),
        ("POST", "tools/list", "session-42", "2025-06-18"),
        ("POST", "tools/list", "session-42", "2025-06-18"),
        ("POST", "tools/list", "session-42", "2025-06-18"),
        ("DELETE", None, "session-42", "2025-06-18"),
    ]
    assert scripted.requests[0]["params"]["protocolVersion"] == "2025-06-18"
    assert [r["params"] for r in scripted.requests[2:5]] == [None, {"cursor": "1"}, {"cursor": "2"}]

    assert check_scripted(scripted, tools=["echo", "record", "not-offered"]) == 2


def test_check_tools_reads_event_streams_and_works_without_a_session() -> None:
    scripted = ScriptedMcp(pages=[["add", "echo"], ["lookup"]], sse=True, session_id=None)

    assert check_scripted(scripted) == 3
    assert [r["http"] for r in scripted.requests] == ["POST"] * 4  # no session: no DELETE
    assert all(r["session"] is None for r in scripted.requests)


@pytest.mark.parametrize(
    ("script", "reason", "detail"),
    [
        ({"fail": "tools/list"}, "protocol_error", "MCP error -32603: the index is offline"),
        ({"sse": True, "fail": "tools/list"}, "protocol_error", "the index is offline"),
        ({"version": "2030-01-01"}, "protocol_error", "protocol version '2030-01-01'"),
        ({"truncate": "tools/list"}, "disconnected", "ended before the answer to tools/list"),
    ],
)
def test_check_tools_failures_after_initialize_still_end_the_session(
    script: dict[str, Any], reason: str, detail: str
) -> None:
    scripted = ScriptedMcp(pages=[["add"]], **script)

    with pytest.raises(McpUnavailable) as error:
        check_scripted(scripted)
    assert error.value.reason == reason
    assert detail in str(error.value)
    assert scripted.requests[-1]["http"] == "DELETE"
    assert scripted.requests[-1]["session"] == "session-42"


def test_check_tools_on_a_port_nobody_listens_on_is_unreachable() -> None:
    config = McpServer(
        name="down", transport="http", url=f"http://127.0.0.1:{free_port()}/mcp", timeout_seconds=5
    )
    begun = time.monotonic()
    with pytest.raises(McpUnavailable) as error:
        run(lambda: check_tools(config))

    assert error.value.reason == "unreachable"
    assert error.value.server_name == "down"
    assert time.monotonic() - begun < 1.0  # refused, not waited out


def test_check_tools_on_a_server_that_never_answers_times_out() -> None:
    with silent_endpoint() as url:
        config = McpServer(name="silent", transport="http", url=url, timeout_seconds=0.5)
        begun = time.monotonic()
        with pytest.raises(McpUnavailable) as error:
            run(lambda: check_tools(config))
        waited = time.monotonic() - begun

    assert error.value.reason == "timeout"
    assert "no tool list within 0.5s" in str(error.value)
    assert 0.5 <= waited < 1.2


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/json", '{"hello": 1}'), ("text/html", "<html><body>hello</body></html>")],
)
def test_check_tools_on_an_http_endpoint_that_is_not_mcp_is_a_protocol_error(
    content_type: str, body: str
) -> None:
    async def not_mcp(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type=content_type)

    async def scenario() -> int:
        async with http_endpoint(not_mcp) as url:
            return await check_tools(McpServer(name="web", transport="http", url=url))

    with pytest.raises(McpUnavailable) as error:
        run(scenario)
    assert error.value.reason == "protocol_error"


def test_check_tools_on_a_port_that_does_not_speak_http_is_a_protocol_error() -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        await reader.read(65536)
        writer.close()

    async def scenario() -> int:
        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            config = McpServer(name="ssh", transport="http", url=f"http://127.0.0.1:{port}/mcp")
            return await check_tools(config)

    with pytest.raises(McpUnavailable) as error:
        run(scenario)
    assert error.value.reason == "protocol_error"
    assert "not an HTTP answer" in str(error.value)


def test_check_tools_sends_header_files_and_fixed_headers(
    guarded_server: McpServerProcess, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    config = http_config(guarded_server, header_files={"X-Kubeagents-Token": token_file})

    token_file.write_text(TOKEN + "\n")
    assert run(lambda: check_tools(config)) == len(TOOL_NAMES)

    token_file.write_text("not-the-token\n")  # read again at every check
    with pytest.raises(McpUnavailable) as error:
        run(lambda: check_tools(config))
    assert error.value.reason == "http_401"
    assert "not-the-token" not in str(error.value)

    token_file.unlink()
    with pytest.raises(McpUnavailable) as error:
        run(lambda: check_tools(config))
    assert error.value.reason == "header_file"
    assert str(token_file) in str(error.value)

    with pytest.raises(McpUnavailable) as error:
        run(lambda: check_tools(http_config(guarded_server)))
    assert error.value.reason == "http_401"

    fixed = http_config(guarded_server, headers={"x-kubeagents-token": TOKEN})
    assert run(lambda: check_tools(fixed)) == len(TOOL_NAMES)


def test_check_tools_uses_the_proxy_named_by_the_environment(
    http_server: McpServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nobody listens
    with pytest.raises(McpUnavailable) as error:
        run(lambda: check_tools(http_config(http_server)))
    assert error.value.reason == "unreachable"

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert run(lambda: check_tools(http_config(http_server))) == len(TOOL_NAMES)


def test_check_tools_never_imports_the_sdk(http_server: McpServerProcess) -> None:
    code = """
import asyncio, json, resource, sys
from kubeagents.mcp_client import McpServer, check_tools

server = McpServer(name="tools", transport="http", url=sys.argv[1])
count = asyncio.run(check_tools(server))
print(json.dumps({
    "count": count,
    "mcp": "mcp" in sys.modules,
    "httpx2": "httpx2" in sys.modules,
    "mcp_types": "mcp_types" in sys.modules,
    "sdk_modules": sorted({m.split(".")[0] for m in sys.modules} & {"mcp", "mcp_types", "httpx2"}),
    "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code, http_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["count"] == len(TOOL_NAMES)
    assert report["mcp"] is False
    assert report["httpx2"] is False
    assert report["mcp_types"] is False
    assert report["sdk_modules"] == []


# --- configuration ---------------------------------------------------------------------------


def test_config_accepts_camel_case_and_snake_case_keys() -> None:
    camel = McpServer.model_validate(
        {
            "name": "search",
            "transport": "http",
            "url": "https://search.example/mcp",
            "headerFiles": {"Authorization": "/var/run/secrets/search/authorization"},
            "timeoutSeconds": 2.5,
            "tools": ["search"],
        }
    )
    snake = McpServer.model_validate(
        {
            "name": "search",
            "transport": "http",
            "url": "https://search.example/mcp",
            "header_files": {"Authorization": "/var/run/secrets/search/authorization"},
            "timeout_seconds": 2.5,
            "tools": ["search"],
        }
    )
    assert camel == snake
    assert camel.header_files == {"Authorization": Path("/var/run/secrets/search/authorization")}
    assert camel.timeout_seconds == 2.5
    assert McpServer(name="a", transport="stdio", command=["srv"]).timeout_seconds == 10
    with pytest.raises(ValidationError):
        camel.timeout_seconds = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"transport": "http"}, "url is required when transport is 'http'"),
        ({"transport": "stdio"}, "command is required when transport is 'stdio'"),
        ({"transport": "http", "url": "ftp://files.example/mcp"}, r"url\n.*http:// or https://"),
        ({"transport": "http", "url": "search.example"}, r"url\n.*http:// or https://"),
        (
            {"transport": "http", "url": "http://a.example/mcp", "command": ["srv"]},
            "url and command are both set",
        ),
        ({"transport": "stdio", "command": []}, r"command\n.*must name the program"),
        (
            {"transport": "stdio", "command": ["srv"], "headers": {"A": "b"}},
            "headers and headerFiles apply only to transport 'http'",
        ),
        (
            {"transport": "http", "url": "http://a.example/mcp", "env": {"A": "b"}},
            "command and env apply only to transport 'stdio'",
        ),
        (
            {"transport": "http", "url": "http://a.example/mcp", "headers": {"bad name": "x"}},
            r"headers\n.*'bad name' is not a valid HTTP header name",
        ),
        (
            {"transport": "http", "url": "http://a.example/mcp", "timeoutSeconds": 0},
            r"timeoutSeconds\n.*greater than 0",
        ),
        ({"transport": "sse", "url": "http://a.example/mcp"}, r"transport\n.*'http' or 'stdio'"),
        (
            {"transport": "http", "url": "http://a.example/mcp", "headerfiles": {}},
            r"headerfiles\n.*Extra inputs are not permitted",
        ),
        ({"name": "Search_1", "transport": "stdio", "command": ["s"]}, r"name\n.*pattern"),
    ],
)
def test_config_errors_name_the_field(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        McpServer.model_validate({"name": "search", **fields})


def test_importing_the_module_does_not_import_the_sdk() -> None:
    code = (
        "import sys, kubeagents.mcp_client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'mcp_types', 'httpx2'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_session_cannot_be_used_after_the_block(http_server: McpServerProcess) -> None:
    async def scenario() -> None:
        async with open_session(http_config(http_server)) as session:
            pass
        with pytest.raises(RuntimeError, match="is closed"):
            await session.call_tool("echo", {"text": "late"})

    run(scenario)
