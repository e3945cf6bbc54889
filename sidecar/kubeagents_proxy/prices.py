"""The price table: US dollars per million tokens, per model, as integer nano-dollars per token.

Defaults are the public list prices seen on Anthropic's pricing pages in November 2026 (pages
disagree in places; every entry can be overridden by configuration, and docs/proxy.md lists
the sources and the assumptions). Cache writes cost 1.25x the input price (5-minute TTL) or 2x
(1-hour TTL), cache reads 0.1x, unless overridden.

What changes a call's price, and how it is priced:

- **The long-context tier**: a model with a `long_context` entry charges every token of a call
  at the tier's prices once the call's whole input (input + cache writes + cache reads) exceeds
  the tier's threshold. The worst case uses the tier whenever the input bound exceeds it.
- **Multipliers** of request options (`speed: "fast"`, `inference_geo`), as integer thousandths
  (`1100` = 1.1x), applied to the whole token cost, rounded up.
- **Server-tool fees** (per web search, per web fetch), in nano-dollars per use, from the
  proxy's allowed server tools.

A model is priced only by its exact id, never by a prefix: an allowed `claude-opus-5-9` is not
priced as `claude-opus-5`. A model without a price cannot be used under a dollar budget (403).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NANOS_PER_USD_PER_MTOK = 1000  # $1 per million tokens = 1,000 nano-dollars per token
NANOS_PER_USD = Decimal(1_000_000_000)
UNIT_MULTIPLIER = 1000  # multipliers are integer thousandths


def ceil_int(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def multiplier_milli(multiplier: Decimal) -> int:
    """A price multiplier as integer thousandths, rounded up (1.1 -> 1100)."""
    return ceil_int(multiplier * UNIT_MULTIPLIER)


class LongContextOverride(BaseModel):
    """The long-context tier of a model, in USD per million tokens."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    threshold_tokens: int = Field(ge=1, alias="thresholdTokens")
    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)


class PriceOverride(BaseModel):
    """A price entry from configuration, in USD per million tokens."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_write_5m: Decimal | None = Field(default=None, ge=0, alias="cacheWrite5m")
    cache_write_1h: Decimal | None = Field(default=None, ge=0, alias="cacheWrite1h")
    cache_read: Decimal | None = Field(default=None, ge=0, alias="cacheRead")
    long_context: LongContextOverride | None = Field(default=None, alias="longContext")
    fast_multiplier: Decimal | None = Field(default=None, ge=1, alias="fastMultiplier")


@dataclass(frozen=True, slots=True)
class TokenRates:
    """Integer nano-dollars per token for each kind of token."""

    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int

    @classmethod
    def per_mtok(
        cls,
        input_usd: Decimal | str,
        output_usd: Decimal | str,
        *,
        cache_write_5m: Decimal | str | None = None,
        cache_write_1h: Decimal | str | None = None,
        cache_read: Decimal | str | None = None,
    ) -> TokenRates:
        base = Decimal(input_usd)

        def nanos(usd_per_mtok: Decimal | str | None, multiplier: str) -> int:
            value = base * Decimal(multiplier) if usd_per_mtok is None else Decimal(usd_per_mtok)
            return ceil_int(value * NANOS_PER_USD_PER_MTOK)

        return cls(
            input=nanos(base, "1"),
            output=nanos(output_usd, "1"),
            cache_write_5m=nanos(cache_write_5m, "1.25"),
            cache_write_1h=nanos(cache_write_1h, "2"),
            cache_read=nanos(cache_read, "0.1"),
        )

    @property
    def most_expensive_input(self) -> int:
        """The highest price any input token can have (it may turn out to be a cache write)."""
        return max(self.input, self.cache_write_5m, self.cache_write_1h, self.cache_read)

    def cost(self, usage: Usage) -> int:
        """Unsplit cache writes are priced as 1-hour writes (see `Usage.from_anthropic`)."""
        return (
            usage.input_tokens * self.input
            + usage.cache_write_5m_tokens * self.cache_write_5m
            + usage.cache_write_1h_tokens * self.cache_write_1h
            + usage.cache_read_tokens * self.cache_read
            + usage.output_tokens * self.output
        )


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's rates, its long-context tier (above `long_context_threshold` input tokens) and
    its fast-mode multiplier (None: the model has no fast mode the proxy can price)."""

    rates: TokenRates
    long_context_threshold: int | None = None
    long_context_rates: TokenRates | None = None
    fast_multiplier_milli: int | None = None

    def rates_for_input(self, input_tokens: int) -> TokenRates:
        """The rates of a call whose whole input is `input_tokens`."""
        if (
            self.long_context_rates is not None
            and self.long_context_threshold is not None
            and input_tokens > self.long_context_threshold
        ):
            return self.long_context_rates
        return self.rates

    def worst_case_nanos(
        self, *, input_tokens: int, output_tokens: int, multiplier_milli: int = UNIT_MULTIPLIER
    ) -> int:
        """The most a call can cost: every input token at the dearest input price, in the tier
        an input of up to `input_tokens` can reach."""
        rates = self.rates_for_input(input_tokens)
        tokens = input_tokens * rates.most_expensive_input + output_tokens * rates.output
        return _scaled(tokens, multiplier_milli)

    def usage_nanos(
        self, usage: Usage, *, multiplier_milli: int = UNIT_MULTIPLIER, fees_nanos: int = 0
    ) -> int:
        """What a call's real usage costs: tokens in the tier its input reached, times the
        options' multiplier, plus the server-tool fees."""
        rates = self.rates_for_input(usage.input_total)
        return _scaled(rates.cost(usage), multiplier_milli) + fees_nanos


def _scaled(nanos: int, multiplier_milli: int) -> int:
    if multiplier_milli == UNIT_MULTIPLIER:
        return nanos
    return -(-nanos * multiplier_milli // UNIT_MULTIPLIER)


@dataclass(frozen=True, slots=True)
class DefaultPrice:
    """A built-in entry: USD per million tokens, and the optional tier and fast mode."""

    input: str
    output: str
    long_context: tuple[int, str, str] | None = None  # threshold, input, output
    fast_multiplier: str | None = None


# Sources and assumptions are listed in docs/proxy.md ("Prices").
DEFAULT_PRICES: dict[str, DefaultPrice] = {
    "claude-opus-5-5": DefaultPrice("4", "20", fast_multiplier="6"),
    "claude-sonnet-5-5": DefaultPrice("2", "10"),
    "claude-sonnet-5": DefaultPrice("2", "10"),
    "claude-haiku-5-5": DefaultPrice("0.10", "0.50", long_context=(100_000, "0.20", "1.00")),
    "claude-fable-5-1": DefaultPrice("10", "50"),
    "claude-opus-5": DefaultPrice("5", "25", fast_multiplier="6"),
    "claude-opus-4-8": DefaultPrice("5", "25", fast_multiplier="6"),
    "claude-opus-4-7": DefaultPrice("5", "25", fast_multiplier="6"),
    "claude-opus-4-6": DefaultPrice("5", "25", fast_multiplier="6"),
    "claude-opus-4-5": DefaultPrice("5", "25"),
    "claude-sonnet-4-6": DefaultPrice("3", "15", long_context=(200_000, "6", "22.50")),
    "claude-sonnet-4-5": DefaultPrice("3", "15", long_context=(200_000, "6", "22.50")),
    "claude-haiku-4-5": DefaultPrice("1", "5"),
    "claude-opus-4-1": DefaultPrice("15", "75"),
    "claude-opus-4-0": DefaultPrice("15", "75"),
}


def _default_price(entry: DefaultPrice) -> ModelPrice:
    tier = entry.long_context
    return ModelPrice(
        rates=TokenRates.per_mtok(entry.input, entry.output),
        long_context_threshold=tier[0] if tier else None,
        long_context_rates=TokenRates.per_mtok(tier[1], tier[2]) if tier else None,
        fast_multiplier_milli=(
            multiplier_milli(Decimal(entry.fast_multiplier)) if entry.fast_multiplier else None
        ),
    )


def _override_price(override: PriceOverride) -> ModelPrice:
    tier = override.long_context
    return ModelPrice(
        rates=TokenRates.per_mtok(
            override.input,
            override.output,
            cache_write_5m=override.cache_write_5m,
            cache_write_1h=override.cache_write_1h,
            cache_read=override.cache_read,
        ),
        long_context_threshold=tier.threshold_tokens if tier else None,
        long_context_rates=TokenRates.per_mtok(tier.input, tier.output) if tier else None,
        fast_multiplier_milli=(
            multiplier_milli(override.fast_multiplier) if override.fast_multiplier else None
        ),
    )


class PriceTable:
    """A model's price by its exact id (the built-in table, overridden entry by entry)."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = dict(prices)

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, PriceOverride]) -> PriceTable:
        prices = {model: _default_price(entry) for model, entry in DEFAULT_PRICES.items()}
        for model, override in overrides.items():
            prices[model] = _override_price(override)
        return cls(prices)

    def get(self, model: str) -> ModelPrice | None:
        return self._prices.get(model)


@dataclass(frozen=True, slots=True)
class Usage:
    """A call's billed usage, from the upstream's `usage` object."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    web_search_requests: int = 0
    web_fetch_requests: int = 0

    @property
    def input_total(self) -> int:
        """Every input token: uncached, cache writes and cache reads."""
        return (
            self.input_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
            + self.cache_read_tokens
        )

    @property
    def total_tokens(self) -> int:
        return self.input_total + self.output_tokens

    @classmethod
    def from_anthropic(cls, usage: Mapping[str, Any]) -> Usage:
        """Read Anthropic's usage object; cache writes without a TTL split count as 1-hour."""

        def count(value: Any) -> int:
            return value if isinstance(value, int) and value > 0 else 0

        cache_creation = count(usage.get("cache_creation_input_tokens"))
        split = usage.get("cache_creation")
        five = one = 0
        if isinstance(split, Mapping):
            five = count(split.get("ephemeral_5m_input_tokens"))
            one = count(split.get("ephemeral_1h_input_tokens"))
        one += max(0, cache_creation - five - one)
        server = usage.get("server_tool_use")
        searches = fetches = 0
        if isinstance(server, Mapping):
            searches = count(server.get("web_search_requests"))
            fetches = count(server.get("web_fetch_requests"))
        return cls(
            input_tokens=count(usage.get("input_tokens")),
            output_tokens=count(usage.get("output_tokens")),
            cache_write_5m_tokens=five,
            cache_write_1h_tokens=one,
            cache_read_tokens=count(usage.get("cache_read_input_tokens")),
            web_search_requests=searches,
            web_fetch_requests=fetches,
        )
