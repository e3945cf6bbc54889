"""`McpUnavailable`: the one error an MCP server that cannot be used raises.

Its `reason` is short and machine-readable: `unreachable` (connection refused, DNS failure,
stdio command cannot start), `timeout`, `http_<status>` (the server answered an MCP request
with that HTTP status, e.g. `http_401`), `disconnected` (the connection or the stdio process
ended mid-session), `protocol_error` (an MCP error response or an answer that is not MCP),
`header_file` (a header file is missing, unreadable or empty). `str(error)` is a one-line human
message.
"""

from __future__ import annotations

__all__ = ["McpUnavailable"]


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
