"""The runtime's MCP tools: a stdio server started by the runtime itself, a server that is down
removing only its own tools, and each server's state on `GET /status`."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.mcp_servers import McpServerProcess, start_mcp_server, stdio_command
from harness.processes import free_port, wait_for
from harness.runtime import RuntimeProcess, StartRuntime, model_calls
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


def mcp_status(runtime: RuntimeProcess) -> dict[str, Any]:
    status, body = runtime.request("GET", "/status")
    assert status == 200, body
    servers: dict[str, Any] = body["mcp_servers"]
    return servers


def state_when(runtime: RuntimeProcess, name: str, *, up: bool) -> dict[str, Any] | None:
    """Server `name`'s /status entry once it is up (or down), else None."""
    state: dict[str, Any] = mcp_status(runtime)[name]
    return state if state["up"] is up else None


def test_status_shows_each_server_up_or_down_with_its_reason_and_tools(
    start_runtimes: StartRuntime, mcp_server: McpServerProcess
) -> None:
    runtime = start_runtimes(
        mcp_servers=[
            {"name": "tools", "transport": "http", "url": mcp_server.url, "tools": ["add", "echo"]},
            {"name": "search", "transport": "http", "url": f"http://127.0.0.1:{free_port()}/mcp"},
        ]
    )
    status, body = runtime.request("GET", "/status")
    assert status == 200
    assert (body["agent"], body["pod"]) == ("research", "runtime")
    up, down = body["mcp_servers"]["tools"], body["mcp_servers"]["search"]
    assert {k: up[k] for k in ("up", "reason", "detail", "tools", "last_failure")} == {
        "up": True, "reason": "", "detail": "", "tools": 2, "last_failure": None
    }  # fmt: skip
    assert up["protocol_version"] == "2026-07-28"
    assert (down["up"], down["reason"], down["tools"]) == (False, "unreachable", 0)
    assert "search" in down["detail"]
    assert down["last_failure"]["reason"] == "unreachable"
    for entry in (up, down, down["last_failure"]):
        time = entry.get("since") or entry["at"]
        assert time.endswith("Z")
        assert datetime.fromisoformat(time)


def test_status_reports_a_server_that_dies_down_then_up_again(
    tmp_path: Path, start_runtimes: StartRuntime
) -> None:
    port = free_port()
    server = start_mcp_server(tmp_path / "mortal", port=port)
    url = f"http://127.0.0.1:{port}/mcp"
    runtime = start_runtimes(
        mcp_servers=[{"name": "mortal", "transport": "http", "url": url, "timeoutSeconds": 2}],
        mcp_check_seconds=0.3,
    )
    first = mcp_status(runtime)["mortal"]
    assert first["up"] is True
    server.process.kill()
    server.stop()
    down = wait_for(
        lambda: state_when(runtime, "mortal", up=False),
        timeout=20,
        what="the runtime to see the MCP server down",
    )
    assert down["reason"] in ("unreachable", "disconnected")
    assert down["last_failure"]["reason"] == down["reason"]
    server = start_mcp_server(tmp_path / "back", port=port)
    try:
        back = wait_for(
            lambda: state_when(runtime, "mortal", up=True),
            timeout=40,
            what="the runtime to reconnect to the MCP server",
        )
    finally:
        server.stop()
    assert back["tools"] == 5
    assert back["last_failure"]["reason"] == down["reason"]  # kept while up again
    assert back["since"] > first["since"]
