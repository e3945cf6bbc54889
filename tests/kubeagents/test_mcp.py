"""kubeagents.mcp (config, session, errors) against a real MCP tool server, over streamable HTTP
and over stdio."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from pydantic import ValidationError

from harness.mcp_servers import TOOL_NAMES, McpServerProcess, start_mcp_server, stdio_command
from harness.processes import HarnessError, free_port, wait_for
from kubeagents.mcp import (
    McpServer,
    McpUnavailable,
    ToolInfo,
    ToolResult,
    list_tools,
    open_session,
)

pytestmark = pytest.mark.integration  # each test starts MCP servers (stdio and HTTP processes)

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


# --- configuration ---------------------------------------------------------------------------


def test_config_accepts_camel_case_and_snake_case_keys() -> None:
    common: dict[str, object] = {"name": "search", "transport": "http", "tools": ["search"]}
    common["url"] = "https://search.example/mcp"
    headers = {"Authorization": "/var/run/secrets/search/authorization"}
    camel = McpServer.model_validate({**common, "headerFiles": headers, "timeoutSeconds": 2.5})
    snake = McpServer.model_validate({**common, "header_files": headers, "timeout_seconds": 2.5})
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


def test_importing_the_package_does_not_import_the_sdk() -> None:
    code = (
        "import sys, kubeagents.mcp; "
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


# --- protocol revisions and live sessions ------------------------------------------------------


def test_a_server_without_the_initialize_handshake_is_usable(tmp_path: Path) -> None:
    """A server that speaks only the handshake-free revision (it refuses `initialize`, which the
    probe's former hand-written client needed) works: the SDK negotiates the revision."""
    server = started(lambda: start_mcp_server(tmp_path, name="modern", no_handshake=True))

    async def scenario() -> tuple[str, list[str], str]:
        async with open_session(http_config(server)) as session:
            echoed = await session.call_tool("echo", {"text": "modern"})
            return session.protocol_version, [t.name for t in session.tools], echoed.text

    try:
        version, tools, echoed = run(scenario)
    finally:
        server.stop()
    assert version == "2026-07-28"
    assert sorted(tools) == sorted(TOOL_NAMES)
    assert echoed == "modern"


def test_refresh_tools_lists_again_and_fails_once_the_server_is_gone(tmp_path: Path) -> None:
    server = started(lambda: start_mcp_server(tmp_path, name="refreshed"))

    async def scenario() -> list[str]:
        async with open_session(http_config(server, timeout_seconds=3)) as session:
            names = [tool.name for tool in await session.refresh_tools()]
            server.process.kill()
            await session.refresh_tools()
            return names

    try:
        with pytest.raises(McpUnavailable) as error:
            run(scenario)
    finally:
        server.stop()
    assert error.value.server_name == "tools"
    assert error.value.reason in ("unreachable", "disconnected")
