"""Retry decisions: which failures of a model call another attempt can fix, and when."""

from __future__ import annotations

import anthropic
import httpx2 as httpx
import pytest

from kubeagents.headers import BUDGET_SCOPE_HEADER
from kubeagents_runtime.errors import Permanent, Retryable, RunCancelled, TaskFailure
from kubeagents_runtime.failures import classify

REQUEST = httpx.Request("POST", "http://127.0.0.1:8080/v1/messages")


def status_error(status: int, headers: dict[str, str] | None = None) -> anthropic.APIStatusError:
    response = httpx.Response(status, headers=headers, request=REQUEST, json={"error": {}})
    return anthropic.APIStatusError("refused", response=response, body=None)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 529])
def test_rate_limits_and_server_errors_are_retried(status: int) -> None:
    failure = classify(status_error(status))
    assert isinstance(failure, Retryable)
    assert failure.retryable
    assert failure.message == f"model call failed: {status} refused"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_a_request_that_is_wrong_fails_at_once(status: int) -> None:
    failure = classify(status_error(status))
    assert isinstance(failure, Permanent)
    assert not failure.retryable


def test_the_proxys_retry_after_says_when_to_try_again() -> None:
    assert classify(status_error(429, {"retry-after": "37"})).retry_after == 37.0
    assert classify(status_error(503, {"retry-after": "2.5"})).retry_after == 2.5


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_retry_after_that_is_no_duration_is_ignored(value: str) -> None:
    assert classify(status_error(429, {"retry-after": value})).retry_after is None


def test_a_team_runs_exhausted_budget_fails_the_step() -> None:
    failure = classify(status_error(429, {BUDGET_SCOPE_HEADER: "run", "retry-after": "60"}))
    assert isinstance(failure, Permanent)
    assert failure.message.startswith("BudgetExceeded: ")


def test_an_agents_exhausted_budget_comes_back_and_is_retried() -> None:
    failure = classify(status_error(429, {BUDGET_SCOPE_HEADER: "agent", "retry-after": "60"}))
    assert isinstance(failure, Retryable)
    assert failure.retry_after == 60.0


def test_timeouts_and_connection_failures_are_retried() -> None:
    assert isinstance(classify(anthropic.APITimeoutError(request=REQUEST)), Retryable)
    assert isinstance(classify(anthropic.APIConnectionError(request=REQUEST)), Retryable)
    assert classify(TimeoutError()).message == "the task timed out"
    assert classify(RuntimeError("odd")).message == "RuntimeError: odd"


def test_a_failure_already_decided_is_kept() -> None:
    cancelled = RunCancelled()
    assert classify(cancelled) is cancelled
    assert isinstance(cancelled, TaskFailure)
    assert not cancelled.retryable
