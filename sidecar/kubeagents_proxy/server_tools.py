"""Content the request body does not hold: server-side tools, the MCP connector, containers.

A call's input is not always in its body. With a server-side tool the upstream runs its own loop
inside the one call: search results, fetched pages, code output and remote MCP tool results are
billed as input tokens, and a web search also bills a fee per search (`usage.server_tool_use`).
The byte bound (`input_bound`) cannot see any of that, so the proxy admits such a call only with
a configured bound:

- A `tools` entry with a `type` other than `custom` is an Anthropic-defined tool. Its family is
  the type without its date suffix (`web_search_20250305` -> `web_search`). It is refused (400,
  naming the entry) unless its family is in `allowed_server_tools`. Client-executed Anthropic
  tools (bash, text_editor, computer, memory) are typed too, and are allowed the same way
  (their hidden system prompt is what their bound then covers).
- An allowed tool's uses are its `max_uses` (which the API enforces); a tool without `max_uses`
  (code execution has none) uses the allowance's `maxUses`, which the API does not enforce: the
  guarantee then rests on that configured number. A `max_uses` over the allowance's `maxUses`
  is refused. Without either, the call is refused.
- `mcp_servers` (the MCP connector) needs an allowance named `mcp_servers` with `maxUses`.
- `container` (container reuse, skills) runs in code execution: it needs `code_execution`.

Each allowed use adds `maxTokensPerUse` input tokens to the call's bound and `usdPerUse` to its
worst-case cost. Nobody can bound what a web page or a remote tool returns: with server tools
allowed, the budget guarantee rests on these configured bounds (docs/proxy.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kubeagents_proxy.errors import InvalidRequest
from kubeagents_proxy.prices import NANOS_PER_USD, Usage, ceil_int

MCP_SERVERS = "mcp_servers"
CODE_EXECUTION = "code_execution"
DEFAULT_USD_PER_USE: dict[str, Decimal] = {"web_search": Decimal("0.01")}  # $10 per 1,000
_DATE_SUFFIX = re.compile(r"_\d{8}$")


class ServerToolAllowance(BaseModel):
    """How one server-tool family may be used under the proxy's limits."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_tokens_per_use: int = Field(
        ge=1,
        alias="maxTokensPerUse",
        description="Input tokens one use may add (a search's results, a fetched page).",
    )
    usd_per_use: Decimal | None = Field(
        default=None,
        ge=0,
        alias="usdPerUse",
        description="Fee per use in USD; default: the built-in fee (web_search $0.01, else 0).",
    )
    max_uses: int | None = Field(
        default=None,
        ge=1,
        alias="maxUses",
        description="Uses assumed for a tool without max_uses, and the most a call may ask for.",
    )

    def fee_nanos(self, family: str) -> int:
        usd = self.usd_per_use
        if usd is None:
            usd = DEFAULT_USD_PER_USE.get(family, Decimal(0))
        return ceil_int(usd * NANOS_PER_USD)


@dataclass(frozen=True, slots=True)
class ServerToolBound:
    """What a call's server-side tools may add: input tokens and fees."""

    input_tokens: int = 0
    fees_nanos: int = 0


NO_SERVER_TOOLS = ServerToolBound()


def tool_family(tool_type: str) -> str:
    return _DATE_SUFFIX.sub("", tool_type)


class ServerTools:
    """The allowed server tools of an agent: bounds a call, and prices its reported uses."""

    def __init__(self, allowed: Mapping[str, ServerToolAllowance]) -> None:
        self.allowed = dict(allowed)
        self._search_fee = self._fee("web_search")
        self._fetch_fee = self._fee("web_fetch")

    def _fee(self, family: str) -> int:
        allowance = self.allowed.get(family)
        return allowance.fee_nanos(family) if allowance is not None else 0

    def bound(self, body: Mapping[str, Any]) -> ServerToolBound:
        """The bound of the call's server-side content; raises InvalidRequest naming the field
        of anything that is not allowed or cannot be bounded."""
        tools = body.get("tools")
        mcp_servers = body.get(MCP_SERVERS)
        container = body.get("container")
        if not tools and not mcp_servers and container is None:
            return NO_SERVER_TOOLS
        tokens = fees = 0
        if isinstance(tools, list):
            for index, tool in enumerate(tools):
                if not isinstance(tool, dict):
                    continue
                tool_type = tool.get("type")
                if tool_type is None or tool_type == "custom":
                    continue
                field = f"tools[{index}]"
                if not isinstance(tool_type, str):
                    raise InvalidRequest(f"{field}.type: must be a string")
                uses, allowance, family = self._uses(field, tool_family(tool_type), tool)
                tokens += uses * allowance.max_tokens_per_use
                fees += uses * allowance.fee_nanos(family)
        if mcp_servers:
            uses, allowance, _ = self._uses(MCP_SERVERS, MCP_SERVERS, {})
            tokens += uses * allowance.max_tokens_per_use
            fees += uses * allowance.fee_nanos(MCP_SERVERS)
        if container is not None and CODE_EXECUTION not in self.allowed:
            raise InvalidRequest(
                "container: runs in code execution, which is not among the agent's allowed "
                "server tools (allowedServerTools)"
            )
        return ServerToolBound(input_tokens=tokens, fees_nanos=fees)

    def _uses(
        self, field: str, family: str, tool: Mapping[str, Any]
    ) -> tuple[int, ServerToolAllowance, str]:
        allowance = self.allowed.get(family)
        if allowance is None:
            allowed = ", ".join(sorted(self.allowed)) or "none"
            raise InvalidRequest(
                f"{field}: server tool {family} is not allowed for this agent; its results are "
                f"billed as input the proxy cannot bound (allowedServerTools: {allowed})"
            )
        requested = tool.get("max_uses")
        if requested is None:
            if allowance.max_uses is None:
                raise InvalidRequest(
                    f"{field}.max_uses: required for server tool {family}, so that its uses "
                    "can be bounded"
                )
            return allowance.max_uses, allowance, family
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise InvalidRequest(f"{field}.max_uses: must be a positive integer")
        if allowance.max_uses is not None and requested > allowance.max_uses:
            raise InvalidRequest(
                f"{field}.max_uses: {requested} exceeds the {allowance.max_uses} uses allowed "
                f"for server tool {family}"
            )
        return requested, allowance, family

    def fees_nanos(self, usage: Usage) -> int:
        """The fees of the uses an answer reports (`usage.server_tool_use`)."""
        return (
            usage.web_search_requests * self._search_fee
            + usage.web_fetch_requests * self._fetch_fee
        )
