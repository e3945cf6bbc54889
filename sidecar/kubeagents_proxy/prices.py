"""The price table: US dollars per million tokens, per model, as integer nano-dollars per token.

Defaults are the public list prices seen on Anthropic's pricing pages in November 2026 (pages
disagree in places; every entry can be overridden by configuration). Cache writes cost 1.25x the
input price (5-minute TTL) or 2x (1-hour TTL), cache reads 0.1x, unless overridden.

A model without a price cannot be used under a dollar budget: the proxy refuses it rather than
pricing it at zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NANOS_PER_USD_PER_MTOK = 1000  # $1 per million tokens = 1,000 nano-dollars per token


class PriceOverride(BaseModel):
    """A price entry from configuration, in USD per million tokens."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_write_5m: Decimal | None = Field(default=None, ge=0, alias="cacheWrite5m")
    cache_write_1h: Decimal | None = Field(default=None, ge=0, alias="cacheWrite1h")
    cache_read: Decimal | None = Field(default=None, ge=0, alias="cacheRead")


@dataclass(frozen=True, slots=True)
class ModelPrice:
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
    ) -> ModelPrice:
        base = Decimal(input_usd)

        def nanos(usd_per_mtok: Decimal | str | None, multiplier: str) -> int:
            value = base * Decimal(multiplier) if usd_per_mtok is None else Decimal(usd_per_mtok)
            nanos = value * NANOS_PER_USD_PER_MTOK
            return int(nanos.to_integral_value(rounding="ROUND_CEILING"))

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


# USD per million tokens (input, output).
DEFAULT_PRICES_PER_MTOK: dict[str, tuple[str, str]] = {
    "claude-opus-5-5": ("4", "20"),
    "claude-sonnet-5-5": ("2", "10"),
    "claude-sonnet-5": ("2", "10"),
    "claude-haiku-5-5": ("0.10", "0.50"),  # the lower tier; prompts over 100K tokens cost more
    "claude-fable-5-1": ("10", "50"),
    "claude-opus-5": ("5", "25"),
    "claude-opus-4-8": ("5", "25"),
    "claude-opus-4-7": ("5", "25"),
    "claude-opus-4-6": ("5", "25"),
    "claude-opus-4-5": ("5", "25"),
    "claude-sonnet-4-6": ("3", "15"),
    "claude-sonnet-4-5": ("3", "15"),
    "claude-haiku-4-5": ("1", "5"),
    "claude-opus-4-1": ("15", "75"),
    "claude-opus-4-0": ("15", "75"),
}


class PriceTable:
    """Looks up a model's price: exact id first, then the longest listed prefix (dated ids)."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = dict(prices)
        self._by_length = sorted(self._prices, key=len, reverse=True)

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, PriceOverride]) -> PriceTable:
        prices = {
            model: ModelPrice.per_mtok(input_usd, output_usd)
            for model, (input_usd, output_usd) in DEFAULT_PRICES_PER_MTOK.items()
        }
        for model, override in overrides.items():
            prices[model] = ModelPrice.per_mtok(
                override.input,
                override.output,
                cache_write_5m=override.cache_write_5m,
                cache_write_1h=override.cache_write_1h,
                cache_read=override.cache_read,
            )
        return cls(prices)

    def get(self, model: str) -> ModelPrice | None:
        price = self._prices.get(model)
        if price is not None:
            return price
        for known in self._by_length:
            if model.startswith(known + "-"):
                return self._prices[known]
        return None

    def worst_case_nanos(self, price: ModelPrice, *, input_tokens: int, output_tokens: int) -> int:
        """The most a call can cost: every input token at the dearest input price."""
        return input_tokens * price.most_expensive_input + output_tokens * price.output

    @staticmethod
    def usage_nanos(price: ModelPrice, usage: Usage) -> int:
        """What a call's real usage costs. Unsplit cache writes are priced as 1-hour writes."""
        return (
            usage.input_tokens * price.input
            + usage.cache_write_5m_tokens * price.cache_write_5m
            + usage.cache_write_1h_tokens * price.cache_write_1h
            + usage.cache_read_tokens * price.cache_read
            + usage.output_tokens * price.output
        )


@dataclass(frozen=True, slots=True)
class Usage:
    """A call's billed usage, from the upstream's `usage` object."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
            + self.cache_read_tokens
        )

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
        return cls(
            input_tokens=count(usage.get("input_tokens")),
            output_tokens=count(usage.get("output_tokens")),
            cache_write_5m_tokens=five,
            cache_write_1h_tokens=one,
            cache_read_tokens=count(usage.get("cache_read_input_tokens")),
        )
