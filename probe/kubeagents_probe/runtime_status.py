"""The probe's `mcp` check: the runtime's view of its MCP servers, read over loopback.

The probe does not talk MCP itself. The runtime keeps one session per MCP server and publishes
each server's state on `GET /status` (see `kubeagents_runtime.app`); this check reads that and
fails, naming every server that is down and why, when any is down. Failures (`CheckFailed`):

| reason | when |
|---|---|
| `mcp_server_down` | the runtime reports one or more servers down (detail: `name: reason (…)`) |
| `runtime_unreachable` | nothing answers at `runtime_status_url` (the runtime is not up) |
| `runtime_status_unavailable` | the runtime answers, but not 200 with the documented JSON |
| `timeout` | no answer within the probe's `timeout_seconds` |
"""

from __future__ import annotations

import json
from typing import Any

from kubeagents_probe.errors import CheckFailed
from kubeagents_probe.proxy_client import LoopbackClient


class RuntimeStatus(LoopbackClient):
    """One HTTP session to the runtime's status endpoint."""

    def __init__(self, url: str, *, timeout_seconds: float) -> None:
        super().__init__(timeout_seconds=timeout_seconds, unreachable="runtime_unreachable")
        self.url = url

    async def check_mcp(self) -> None:
        """Pass when the runtime reports every MCP server up; else raise `CheckFailed`."""
        servers = await self._servers()
        down = {name: state for name, state in servers.items() if not state.get("up")}
        if down:
            raise CheckFailed(
                "mcp_server_down",
                "; ".join(
                    f"{name}: {state.get('reason') or 'down'}"
                    + (f" ({state['detail']})" if state.get("detail") else "")
                    for name, state in sorted(down.items())
                ),
            )

    async def _servers(self) -> dict[str, dict[str, Any]]:
        status, payload = await self._request("GET", self.url, None, {})
        if status != 200:
            raise CheckFailed(
                "runtime_status_unavailable", f"{self.url} answered {status}: {payload[:200]!r}"
            )
        try:
            servers = json.loads(payload)["mcp_servers"]
        except (ValueError, KeyError, TypeError):
            servers = None
        if not isinstance(servers, dict) or not all(isinstance(s, dict) for s in servers.values()):
            raise CheckFailed(
                "runtime_status_unavailable", f"{self.url} did not answer with mcp_servers"
            )
        return servers
