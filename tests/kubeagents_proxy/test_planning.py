"""The planning rules in process: bounds, prices, refusals (no Redis, no upstream)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest

from kubeagents_proxy.accounting import parse_run_budget
from kubeagents_proxy.errors import InvalidRequest
from kubeagents_proxy.input_bound import needs_count_tokens
from kubeagents_proxy.prices import PriceOverride, PriceTable, Usage
from kubeagents_proxy.request_options import (
    DEFAULT_ALLOWED_BETAS,
    DEFAULT_INFERENCE_GEO_MULTIPLIERS,
    RequestOptions,
)
from kubeagents_proxy.server_tools import ServerToolAllowance, ServerTools

HELLO = [{"role": "user", "content": "hello"}]
PRICES = PriceTable.with_overrides({})
OPTIONS = RequestOptions(
    allowed_betas=DEFAULT_ALLOWED_BETAS, geo_multipliers=DEFAULT_INFERENCE_GEO_MULTIPLIERS
)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-5-5", "max_tokens": 100, "messages": HELLO, **fields}


# --- prices ----------------------------------------------------------------------------------


def test_a_model_is_priced_only_by_its_exact_id() -> None:
    assert PRICES.get("claude-opus-5") is not None
    assert PRICES.get("claude-opus-5-9") is None
    assert PRICES.get("claude-sonnet-4-5-20250929") is None


def test_the_long_context_tier_prices_the_whole_call_once_the_input_passes_its_threshold() -> None:
    price = PRICES.get("claude-sonnet-4-6")
    assert price is not None
    under = Usage(input_tokens=200_000, output_tokens=1_000)
    over = Usage(input_tokens=150_000, cache_read_tokens=50_001, output_tokens=1_000)
    assert price.usage_nanos(under) == 200_000 * 3_000 + 1_000 * 15_000
    assert price.usage_nanos(over) == 150_000 * 6_000 + 50_001 * 600 + 1_000 * 22_500
    # the worst case uses the tier as soon as the bound can reach it
    assert price.worst_case_nanos(input_tokens=200_001, output_tokens=0) == 200_001 * 12_000


def test_an_override_can_add_a_long_context_tier_and_a_fast_multiplier() -> None:
    table = PriceTable.with_overrides(
        {
            "claude-x": PriceOverride.model_validate(
                {
                    "input": 1,
                    "output": 2,
                    "longContext": {"thresholdTokens": 10, "input": 3, "output": 4},
                    "fastMultiplier": 6,
                }
            )
        }
    )
    price = table.get("claude-x")
    assert price is not None
    assert price.fast_multiplier_milli == 6000
    assert price.usage_nanos(Usage(input_tokens=11, output_tokens=1)) == 11 * 3000 + 4000


def test_multipliers_and_fees_enter_the_cost() -> None:
    price = PRICES.get("claude-opus-5-5")
    assert price is not None
    usage = Usage(input_tokens=1_000, output_tokens=100)
    base = 1_000 * 4_000 + 100 * 20_000
    assert price.usage_nanos(usage, multiplier_milli=6600, fees_nanos=7) == base * 66 // 10 + 7


def test_usage_reads_server_tool_uses() -> None:
    usage = Usage.from_anthropic(
        {
            "input_tokens": 5,
            "output_tokens": 1,
            "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 2},
        }
    )
    assert (usage.web_search_requests, usage.web_fetch_requests) == (3, 2)


# --- request options -------------------------------------------------------------------------


def test_an_unknown_field_is_refused_naming_it() -> None:
    with pytest.raises(InvalidRequest, match=r"^surcharge: not a request field"):
        OPTIONS.check_fields(body(surcharge=True))
    OPTIONS.check_fields(body(temperature=0.5, stop_sequences=["x"], metadata={}))


def test_an_unknown_beta_is_refused_naming_it() -> None:
    OPTIONS.check_betas("interleaved-thinking-2025-05-14, context-1m-2025-08-07")
    with pytest.raises(InvalidRequest, match="anthropic-beta: priority-lane-2027-01-01 is not"):
        OPTIONS.check_betas("interleaved-thinking-2025-05-14,priority-lane-2027-01-01")


def test_fast_mode_is_priced_on_models_that_offer_it_and_unpriced_elsewhere() -> None:
    opus = PRICES.get("claude-opus-5-5")
    sonnet = PRICES.get("claude-sonnet-5-5")
    fast = OPTIONS.price_options(body(speed="fast"), "claude-opus-5-5", opus)
    assert (fast.multiplier_milli, fast.unpriced) == (6000, None)
    unpriced = OPTIONS.price_options(body(speed="fast"), "claude-sonnet-5-5", sonnet)
    assert unpriced.unpriced == "speed: fast mode of claude-sonnet-5-5 has no price"
    with pytest.raises(InvalidRequest, match=r"^speed: must be"):
        OPTIONS.price_options(body(speed="warp"), "claude-opus-5-5", opus)


def test_inference_geo_multiplies_and_an_unknown_region_is_unpriced() -> None:
    opus = PRICES.get("claude-opus-5-5")
    both = OPTIONS.price_options(body(speed="fast", inference_geo="us"), "claude-opus-5-5", opus)
    assert both.multiplier_milli == 6600
    mars = OPTIONS.price_options(body(inference_geo="mars"), "claude-opus-5-5", opus)
    assert mars.unpriced == "inference_geo: mars has no price multiplier"


# --- server tools ----------------------------------------------------------------------------

WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}


def test_server_tools_are_refused_unless_allowed_naming_the_entry() -> None:
    tools = ServerTools({})
    client_tool = {"name": "lookup", "input_schema": {"type": "object"}}
    assert tools.bound(body(tools=[client_tool])).input_tokens == 0
    with pytest.raises(InvalidRequest, match=r"^tools\[1\]: server tool web_search is not allowed"):
        tools.bound(body(tools=[client_tool, WEB_SEARCH]))
    with pytest.raises(InvalidRequest, match=r"^mcp_servers: server tool mcp_servers is not"):
        tools.bound(body(mcp_servers=[{"type": "url", "url": "https://x", "name": "x"}]))
    with pytest.raises(InvalidRequest, match=r"^container: runs in code execution"):
        tools.bound(body(container="container_1"))


def test_an_allowed_server_tool_adds_its_uses_times_the_bound_and_its_fees() -> None:
    tools = ServerTools(
        {"web_search": ServerToolAllowance.model_validate({"maxTokensPerUse": 2_000})}
    )
    bound = tools.bound(body(tools=[WEB_SEARCH]))
    assert bound.input_tokens == 3 * 2_000
    assert bound.fees_nanos == 3 * 10_000_000  # $0.01 per search, built in
    assert tools.fees_nanos(Usage(web_search_requests=2)) == 20_000_000


def test_a_server_tool_without_max_uses_needs_the_allowance_bound() -> None:
    tools = ServerTools(
        {
            "web_search": ServerToolAllowance(max_tokens_per_use=100),
            "code_execution": ServerToolAllowance(max_tokens_per_use=500, max_uses=4),
        }
    )
    no_max = {"type": "web_search_20250305", "name": "web_search"}
    with pytest.raises(InvalidRequest, match=r"^tools\[0\]\.max_uses: required"):
        tools.bound(body(tools=[no_max]))
    code = {"type": "code_execution_20250825", "name": "code_execution"}
    assert tools.bound(body(tools=[code], container="c")).input_tokens == 4 * 500
    too_many = {**code, "max_uses": 5}
    with pytest.raises(InvalidRequest, match=r"max_uses: 5 exceeds the 4 uses allowed"):
        tools.bound(body(tools=[too_many]))


# --- content the bytes cannot bound ----------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "u"}}]}],
        [  # a document inside a tool_result's dict-valued content
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": {"type": "document", "source": {"type": "base64"}},
                    }
                ],
            }
        ],
        [{"role": "user", "content": [{"type": "web_search_tool_result", "content": []}]}],
    ],
    ids=["image", "nested-document", "server-tool-result"],
)
def test_content_whose_bytes_cannot_bound_it_is_counted_at_any_depth(
    messages: list[dict[str, Any]],
) -> None:
    planned = body(messages=messages)
    assert needs_count_tokens(planned, json.dumps(planned).encode())


def test_text_that_only_mentions_an_opaque_type_is_bounded_by_its_bytes() -> None:
    planned = body(messages=[{"role": "user", "content": 'the word "image" in quotes'}])
    assert not needs_count_tokens(planned, json.dumps(planned).encode())


# --- the run budget header -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("run=r1; tokens=9007199254740992", "tokens must be an integer from 1 to"),
        ("run=r1; tokens=-5", "tokens must be an integer"),
        ("run=r1; usd=NaN", "usd must be a number above 0"),
        ("run=r1; usd=Infinity", "usd must be a number above 0"),
        ("run=r1; usd=1e300", "usd must be a number above 0"),
        ("run=r1; usd=0", "usd must be a number above 0"),
        ("run=a b", "run must match"),
        ("run=r1; color=red", "unknown field(s) color"),
        ("run=r1; step=Not_A_Label", "step must be a DNS label"),
    ],
)
def test_a_bad_run_budget_header_is_a_clear_400(header: str, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape("kubeagents-run-budget: " + problem)):
        parse_run_budget(header)


def test_a_run_budget_header_names_the_run_and_its_limits() -> None:
    budget = parse_run_budget("run=team/run-1; tokens=5000; usd=2.5")
    assert (budget.run, budget.token_limit, budget.usd_nanos_limit) == (
        "team/run-1",
        5000,
        int(Decimal("2.5") * 10**9),
    )
    assert parse_run_budget("run=r").token_limit is None


def test_a_run_budget_header_may_name_the_step_metered_apart_without_limits() -> None:
    budget = parse_run_budget("run=r1; step=outline")
    assert (budget.step, budget.token_limit, budget.usd_nanos_limit) == ("outline", None, None)
    assert [scope.name for scope in budget.scopes] == ["run", "step:outline"]
    assert budget.scopes[1].token_limit is None
    assert not budget.scopes[1].fixed_limits
