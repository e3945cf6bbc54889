"""The runtime's MCP tools: a stdio server started by the runtime itself, and a server that is
down removing only its own tools."""

from __future__ import annotations

import re
from pathlib import Path

from harness.mcp_servers import McpServerProcess, start_mcp_server, stdio_command
from harness.processes import free_port, wait_for
from harness.runtime import StartRuntime, model_calls
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply


def test_a_stdio_mcp_server_runs_the_tools_of_a_task(
    start_runtimes: StartRuntime, fake_anthropic: FakeAnthropicControl, tmp_path: Path
) -> None:
    log = tmp_path / "stdio-calls.log"
    fake_anthropic.enqueue(
        Reply.with_tool_use("record", {"note": "over stdio"}),
        Reply.with_text("noted"),
    )
    runtime = start_runtimes(
        mcp_servers=[
            {
                "name": "local",
                "transport": "stdio",
                "command": stdio_command(),
                "env": {"MCP_TOOL_LOG": str(log)},
            }
        ]
    )
    result = runtime.wait_final(runtime.submit("Take a note."))
    assert result["status"] == "succeeded", result
    assert result["tool_calls"] == 1
    assert log.read_text().splitlines() == ["over stdio"]
    second = model_calls(fake_anthropic)[1].body
    assert second["messages"][-1]["content"][0]["content"] == "recorded"


def test_a_server_that_is_down_removes_only_its_tools_and_is_reported(
    start_runtimes: StartRuntime,
    fake_anthropic: FakeAnthropicControl,
    mcp_server: McpServerProcess,
) -> None:
    fake_anthropic.enqueue(Reply.with_text("answered with what was there"))
    runtime = start_runtimes(
        mcp_servers=[
            {"name": "tools", "transport": "http", "url": mcp_server.url},
            {"name": "search", "transport": "http", "url": f"http://127.0.0.1:{free_port()}/mcp"},
        ]
    )
    status, body = runtime.request("GET", "/readyz")
    assert status == 200
    assert body["mcp_servers"]["tools"] == {"up": True, "reason": ""}
    assert body["mcp_servers"]["search"] == {"up": False, "reason": "unreachable"}

    result = runtime.wait_final(runtime.submit("Use what you have."))
    assert result["status"] == "succeeded"
    offered = {tool["name"] for tool in model_calls(fake_anthropic)[0].body["tools"]}
    assert offered == {"add", "echo", "lookup", "slow", "record"}  # all from `tools`

    metrics = runtime.request_text("/metrics")
    assert re.search(r'kubeagents_runtime_mcp_server_up\{server="search"\} 0\.0', metrics)
    assert re.search(r'kubeagents_runtime_mcp_server_up\{server="tools"\} 1\.0', metrics)


def test_a_server_that_comes_back_offers_its_tools_again(
    tmp_path: Path, start_runtimes: StartRuntime
) -> None:
    port = free_port()
    runtime = start_runtimes(
        mcp_servers=[{"name": "late", "transport": "http", "url": f"http://127.0.0.1:{port}/mcp"}]
    )
    assert runtime.request("GET", "/readyz")[1]["mcp_servers"]["late"]["up"] is False
    server = start_mcp_server(tmp_path / "late", port=port)
    try:
        wait_for(
            lambda: runtime.request("GET", "/readyz")[1]["mcp_servers"]["late"]["up"],
            timeout=40,
            what="the runtime to reconnect to the MCP server",
        )
    finally:
        server.stop()
