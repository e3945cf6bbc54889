"""Request options that change what a call may cost: body fields, priced options, betas.

The body and `anthropic-beta` pass through to the upstream, so every option a client can send
must be one the proxy bounds and prices, or it is refused (400, naming it):

- **Body fields**: only the fields of the Messages API the proxy knows (`KNOWN_FIELDS`). An
  unknown field may be a new option with a price the proxy cannot know.
- **`speed: "fast"`**: priced at the model's fast multiplier (6x on the models that offer it);
  a model without one in the price table cannot be priced in fast mode.
- **`inference_geo`**: priced at the configured multiplier of its value (`"us"`: 1.1x).
- **`anthropic-beta`**: each value must be on the allow-list (`allowed_betas`; default
  `DEFAULT_ALLOWED_BETAS`, the betas the proxy knows to change neither the bound nor the price
  beyond what it prices).

An option the proxy cannot price makes the call *unpriced*: refused under a dollar budget (the
agent's: 400 naming the option here; a run's: 403 from the ledger), let through without one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubeagents_proxy.errors import InvalidRequest
from kubeagents_proxy.prices import UNIT_MULTIPLIER, ModelPrice, multiplier_milli

KNOWN_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stream",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "cache_control",
        "container",
        "mcp_servers",
        "inference_geo",
        "speed",
        "output_config",
        "output_format",
        "context_management",
    }
)

# Betas that change neither the input bound nor the price beyond what the proxy prices:
# output limits stay bounded by max_tokens, cache writes are priced at their dearest rate,
# files and PDFs are measured with count_tokens, the server tools of the code-execution,
# web-fetch and MCP-connector betas are gated by allowed_server_tools, the long-context tier
# and fast mode are in the price table.
DEFAULT_ALLOWED_BETAS: tuple[str, ...] = (
    "prompt-caching-2024-07-31",
    "extended-cache-ttl-2025-04-11",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "fine-grained-tool-streaming-2025-05-14",
    "output-128k-2025-02-19",
    "output-300k-2026-03-24",
    "pdfs-2024-09-25",
    "files-api-2025-04-14",
    "token-counting-2024-11-01",
    "context-management-2025-06-27",
    "context-1m-2025-08-07",
    "structured-outputs-2025-11-13",
    "fast-mode-2026-02-01",
    "code-execution-2025-05-22",
    "web-fetch-2025-09-10",
    "mcp-client-2025-04-04",
    "mcp-client-2025-11-20",
    "model-context-window-exceeded-2025-08-26",
)

DEFAULT_INFERENCE_GEO_MULTIPLIERS: dict[str, Decimal] = {
    "global": Decimal(1),
    "us": Decimal("1.1"),
}


@dataclass(frozen=True, slots=True)
class PriceOptions:
    """The price multiplier of a call's options, or why they cannot be priced."""

    multiplier_milli: int = UNIT_MULTIPLIER
    unpriced: str | None = None  # e.g. "speed: fast mode of claude-x has no price"


class RequestOptions:
    """Checks a call's fields, betas and priced options against the agent's settings."""

    def __init__(
        self, *, allowed_betas: Iterable[str], geo_multipliers: Mapping[str, Decimal]
    ) -> None:
        self.allowed_betas = frozenset(allowed_betas)
        self.geo_milli = {geo: multiplier_milli(value) for geo, value in geo_multipliers.items()}

    def check_fields(self, body: Mapping[str, Any]) -> None:
        if len(body) <= 6 and body.keys() <= KNOWN_FIELDS:  # the common short body
            return
        unknown = sorted(set(body) - KNOWN_FIELDS)
        if unknown:
            raise InvalidRequest(
                f"{unknown[0]}: not a request field the proxy knows, so it cannot bound what "
                "it costs"
            )

    def check_betas(self, header: str | None) -> None:
        if not header:
            return
        for beta in header.split(","):
            beta = beta.strip()
            if beta and beta not in self.allowed_betas:
                raise InvalidRequest(
                    f"anthropic-beta: {beta} is not allowed for this agent (allowedBetas); the "
                    "proxy cannot tell what it does to the call's bound or price"
                )

    def price_options(
        self, body: Mapping[str, Any], model: str, price: ModelPrice | None
    ) -> PriceOptions:
        speed = body.get("speed")
        geo = body.get("inference_geo")
        if speed is None and geo is None:
            return PriceOptions()
        milli = UNIT_MULTIPLIER
        unpriced = None
        if speed is not None and speed != "standard":
            if speed != "fast":
                raise InvalidRequest(f'speed: must be "standard" or "fast", not {speed!r}')
            if price is None or price.fast_multiplier_milli is None:
                unpriced = f"speed: fast mode of {model} has no price"
            else:
                milli = price.fast_multiplier_milli
        if geo is not None:
            if not isinstance(geo, str):
                raise InvalidRequest("inference_geo: must be a string")
            geo_milli = self.geo_milli.get(geo)
            if geo_milli is None:
                unpriced = unpriced or f"inference_geo: {geo} has no price multiplier"
            else:
                milli = -(-milli * geo_milli // UNIT_MULTIPLIER)
        return PriceOptions(multiplier_milli=milli, unpriced=unpriced)
