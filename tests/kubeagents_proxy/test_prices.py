"""Prices: integer nano-dollars, rounded up; the worst case bounds any real usage."""

from __future__ import annotations

import itertools

import pytest

from kubeagents_proxy.prices import ModelPrice, PriceTable, TokenRates, Usage

RATES = TokenRates.per_mtok("3", "15")  # $3 / $15 per million tokens
LONG = TokenRates.per_mtok("6", "22.5")
PRICE = ModelPrice(RATES, long_context_threshold=200_000, long_context_rates=LONG)


def test_rates_are_nanos_per_token_with_the_cache_multipliers() -> None:
    assert (RATES.input, RATES.output) == (3000, 15000)
    assert (RATES.cache_write_5m, RATES.cache_write_1h, RATES.cache_read) == (3750, 6000, 300)
    assert RATES.most_expensive_input == 6000


def test_a_fraction_of_a_nano_per_token_is_rounded_up() -> None:
    assert TokenRates.per_mtok("0.0000001", "0").input == 1


def test_usage_reads_the_cache_split_and_counts_an_unsplit_write_as_one_hour() -> None:
    usage = Usage.from_anthropic(
        {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 7,
            "cache_creation_input_tokens": 100,
            "cache_creation": {"ephemeral_5m_input_tokens": 60, "ephemeral_1h_input_tokens": 30},
            "server_tool_use": {"web_search_requests": 2},
        }
    )
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (60, 40)
    assert (usage.input_total, usage.total_tokens) == (117, 122)
    assert usage.web_search_requests == 2


@pytest.mark.parametrize("value", [None, -3, "12", 1.5])
def test_a_missing_or_odd_count_is_zero(value: object) -> None:
    usage = Usage.from_anthropic({"input_tokens": value, "output_tokens": 4})
    assert (usage.input_tokens, usage.output_tokens) == (0, 4)


def test_the_long_context_rates_start_above_the_threshold() -> None:
    assert PRICE.rates_for_input(200_000) is RATES
    assert PRICE.rates_for_input(200_001) is LONG


@pytest.mark.parametrize(
    ("fresh", "write_5m", "write_1h", "read", "output"),
    list(itertools.product([0, 1000], [0, 500], [0, 500], [0, 2000], [0, 64])),
)
def test_the_worst_case_is_never_below_the_real_cost(
    fresh: int, write_5m: int, write_1h: int, read: int, output: int
) -> None:
    usage = Usage(fresh, output, write_5m, write_1h, read)
    worst = PRICE.worst_case_nanos(input_tokens=usage.input_total, output_tokens=64)
    assert worst >= PRICE.usage_nanos(usage)


def test_a_price_table_knows_models_by_their_exact_id() -> None:
    table = PriceTable({"claude-x-1": PRICE})
    assert table.get("claude-x-1") is PRICE
    assert table.get("claude-x") is None
