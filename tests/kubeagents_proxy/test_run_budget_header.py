"""`kubeagents-run-budget`: what the operator writes, the proxy reads; bad headers are named."""

from __future__ import annotations

import re

import pytest

from kubeagents_operator.runs import TeamSpec
from kubeagents_proxy.accounting import parse_run_budget
from kubeagents_proxy.errors import InvalidRequest


def team(budget: dict[str, object]) -> TeamSpec:
    return TeamSpec.parse(
        {
            "roles": {"writer": {"agent": "writer-agent"}},
            "steps": [{"name": "draft", "role": "writer", "prompt": "write"}],
            **({"budget": budget} if budget else {}),
        }
    )


@pytest.mark.parametrize(
    ("budget", "tokens", "usd_nanos"),
    [
        ({}, None, None),
        ({"tokens": 5000}, 5000, None),
        ({"usd": "0.25"}, None, 250_000_000),
        ({"tokens": 7, "usd": "1.5"}, 7, 1_500_000_000),
    ],
)
def test_the_header_the_operator_writes_is_the_budget_the_proxy_reads(
    budget: dict[str, object], tokens: int | None, usd_nanos: int | None
) -> None:
    header = team(budget).run_budget_header("nightly.ab12cd34", "draft")
    parsed = parse_run_budget(header)
    assert (parsed.run, parsed.step) == ("nightly.ab12cd34", "draft")
    assert (parsed.token_limit, parsed.usd_nanos_limit) == (tokens, usd_nanos)
    assert [scope.name for scope in parsed.scopes] == ["run", "step:draft"]


def test_spacing_and_case_of_names_do_not_matter() -> None:
    parsed = parse_run_budget(" RUN = r1 ;Tokens=10 ")
    assert (parsed.run, parsed.token_limit, parsed.step) == ("r1", 10, "")
    assert [scope.name for scope in parsed.scopes] == ["run"]


def test_a_tiny_dollar_limit_is_at_least_one_nano() -> None:
    assert parse_run_budget("run=r; usd=0.0000000001").usd_nanos_limit == 1


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("run", "'run' is not name=value"),
        ("run=", "'run=' is not name=value"),
        ("run=r; colour=blue", "unknown field(s) colour"),
        ("tokens=5", "run must match"),
        ("run=a b", "run must match"),
        ("run=r; tokens=0", "tokens must be an integer from 1 to"),
        ("run=r; tokens=-3", "tokens must be an integer from 1 to"),
        ("run=r; tokens=1.5", "tokens must be an integer from 1 to"),
        ("run=r; usd=0", "usd must be a number above 0"),
        ("run=r; usd=abc", "usd must be a number above 0"),
        ("run=r; usd=NaN", "usd must be a number above 0"),
        ("run=r; usd=1e30", "usd must be a number above 0"),
        ("run=r; step=Not_A_Label", "step must be a DNS label"),
    ],
)
def test_a_bad_header_is_refused_with_what_is_wrong(header: str, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(problem)):
        parse_run_budget(header)
