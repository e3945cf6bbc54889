"""An upper bound on a request's input tokens that is never below the real count.

The argument (also in docs/proxy.md):

1. Claude's tokenizer is a byte-level BPE: every token stands for at least one byte of UTF-8
   text, so a text of B bytes is at most B tokens.
2. Every piece of text the model reads from the request (system prompt, message text, tool names,
   descriptions and input schemas, tool inputs and results) appears in the JSON body, escaped,
   so with at least as many bytes as it has. The JSON body's byte length therefore bounds the
   text's tokens.
3. The API adds formatting tokens the body does not contain: role and turn markers per message,
   and a hidden system prompt when tools are offered (a few hundred tokens). `MESSAGE_OVERHEAD`
   per message, `REQUEST_OVERHEAD` per request and `TOOLS_OVERHEAD` when `tools` is present cover
   them with a wide margin.
4. Content the body does not hold as text cannot be bounded from its bytes: images, documents
   (PDFs), sources given by URL or file id, and server-tool results passed back — at any depth
   (a `tool_result` may hold a document). For those the proxy asks the upstream's
   `count_tokens` (free of charge) and adds `COUNT_TOKENS_MARGIN`.
5. Content the upstream adds inside the call (server-side tools, the MCP connector) is not in
   the body at all: `server_tools.py` bounds it from configuration.

The byte bound is cheap but loose (about 4x for English text). When it alone would refuse a call
(the per-call cap or the budget), the proxy tightens it with `count_tokens` before refusing, so a
legitimate call is not refused because of the bound's slack.
"""

from __future__ import annotations

import math
from typing import Any

MESSAGE_OVERHEAD = 16
REQUEST_OVERHEAD = 64
TOOLS_OVERHEAD = 1024
COUNT_TOKENS_MARGIN = 0.05  # relative, plus REQUEST_OVERHEAD

# Content block types whose tokens are not bounded by their bytes in the body: media, files and
# URLs, and the results of server-side tools passed back in a later turn.
OPAQUE_BLOCK_TYPES = frozenset(
    {
        "image",
        "document",
        "container_upload",
        "search_result",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "mcp_tool_result",
    }
)
_OPAQUE_MARKERS = tuple(f'"{kind}"'.encode() for kind in sorted(OPAQUE_BLOCK_TYPES))


def byte_bound(raw_body: bytes, body: dict[str, Any]) -> int:
    """Input-token bound from the body's bytes (valid when `needs_count_tokens` is False)."""
    messages = body.get("messages")
    message_count = len(messages) if isinstance(messages, list) else 0
    tools = TOOLS_OVERHEAD if body.get("tools") else 0
    return len(raw_body) + MESSAGE_OVERHEAD * message_count + REQUEST_OVERHEAD + tools


def needs_count_tokens(body: dict[str, Any], raw_body: bytes) -> bool:
    """Whether the body holds content whose tokens its bytes cannot bound (images, files, URLs,
    server-tool results), at any depth of `messages` or `system`."""
    if b"\\u" not in raw_body and not any(marker in raw_body for marker in _OPAQUE_MARKERS):
        # the common case: no such type name appears anywhere in the body (a `\u` escape may
        # spell one, e.g. "im\u0061ge": then the decoded body decides)
        return False
    return _has_opaque(body.get("messages")) or _has_opaque(body.get("system"))


def _has_opaque(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_opaque(item) for item in value)
    if isinstance(value, dict):
        if value.get("type") in OPAQUE_BLOCK_TYPES:
            return True
        return any(_has_opaque(item) for item in value.values())
    return False


def counted_bound(counted_tokens: int) -> int:
    """Input-token bound from the upstream's `count_tokens` answer."""
    return math.ceil(counted_tokens * (1 + COUNT_TOKENS_MARGIN)) + REQUEST_OVERHEAD
