"""Why an attempt of a task failed, and whether another attempt can help (the kinds of
`TaskFailure` are in `kubeagents_runtime.errors`).

- `Retryable`: upstream 5xx/529, 429 (rate or budget: then `retry_after` from the proxy's
  `retry-after` header), timeouts, connection failures, Redis errors. Retried with exponential
  backoff and jitter, or after `retry_after` when the proxy said so, until `max_attempts`.
- `Permanent`: the request itself is wrong (400, 401, 403, 404, 413, 422): another attempt would
  fail the same way, so the task fails at once; so does a 429 of the team run's budget
  (`kubeagents-budget-scope: run`: "BudgetExceeded: …"), and a cancelled run
  (`RunCancelled`).
"""

from __future__ import annotations

import math

import anthropic

from kubeagents.headers import BUDGET_SCOPE_HEADER
from kubeagents_runtime.errors import Permanent, Retryable, TaskFailure


def _retry_after(headers: object) -> float | None:
    value = getattr(headers, "get", lambda _: None)("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def classify(error: BaseException) -> TaskFailure:
    """The failure an exception of the model call means."""
    if isinstance(error, TaskFailure):
        return error
    if isinstance(error, anthropic.APIStatusError):
        status = error.status_code
        message = f"model call failed: {status} {error.message}"
        if status == 429:
            if error.response.headers.get(BUDGET_SCOPE_HEADER) == "run":
                # A team run's budget does not come back for that run: fail the step.
                return Permanent(f"BudgetExceeded: {message}")
            return Retryable(message, retry_after=_retry_after(error.response.headers))
        if status >= 500:
            return Retryable(message, retry_after=_retry_after(error.response.headers))
        return Permanent(message)
    if isinstance(error, anthropic.APITimeoutError):
        return Retryable("model call timed out")
    if isinstance(error, anthropic.APIConnectionError):
        return Retryable(f"cannot reach the proxy: {error}")
    if isinstance(error, TimeoutError):
        return Retryable("the task timed out")
    return Retryable(f"{type(error).__name__}: {error}")
