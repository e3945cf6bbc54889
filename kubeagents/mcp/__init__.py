"""The project's MCP client, on the `mcp` SDK: configuration (`config`), sessions (`session`)
and the error of a server that cannot be used (`errors`).

Only the agent runtime talks MCP. Importing this package does not import the SDK (the first
connection does); the probe sidecar imports none of it.
"""

from kubeagents.mcp.config import McpServer
from kubeagents.mcp.errors import McpUnavailable
from kubeagents.mcp.session import McpSession, ToolInfo, ToolResult, list_tools, open_session

__all__ = [
    "McpServer",
    "McpSession",
    "McpUnavailable",
    "ToolInfo",
    "ToolResult",
    "list_tools",
    "open_session",
]
