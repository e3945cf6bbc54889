"""Every refusal of the proxy, in one place, rendered in Anthropic's error shape.

The hierarchy (all subclasses of `ProxyRefusal`; each knows its HTTP status and Anthropic error
type, and its message names the limit and the numbers):

- `InvalidRequest` (400 invalid_request_error): malformed JSON, wrong types, bad `max_tokens`.
- `ModelNotAllowed` (403 permission_error): the model is not on the agent's allow-list, or has
  no price under the agent's dollar budget.
- `NotPriced` (403 permission_error): a call the proxy cannot price, under a run's dollar limit.
- `RequestTooLarge` (413 request_too_large): body over the size limit, or an input alone over
  the per-call token cap.
- `RateLimited` (429 rate_limit_error, with `retry-after`): budget exhausted, requests per minute,
  concurrency caps. A budget refusal also says whose budget it was: `kubeagents-budget-scope:
  agent` or `run` (a run's budget does not come back for that run: the runtime fails the step).
- `LedgerDown` (503 api_error): the budget ledger (Redis) is unreachable and the proxy fails
  closed.
- `UpstreamTimeout` (504 timeout_error): the call's total, connect or stream-idle timeout.
- `UpstreamUnavailable` (502 api_error): the upstream could not be reached, or the connection
  broke after the request was sent (`sent=True`: charged in full).

Errors returned by the upstream itself are passed through unchanged (status, headers and body).
"""

from __future__ import annotations

import json
import math
from typing import ClassVar

from kubeagents.headers import BUDGET_SCOPE_HEADER


class ProxyRefusal(Exception):
    """A request the proxy answers itself, with an Anthropic-shaped error."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    reason: ClassVar[str] = "error"  # the low-cardinality label in metrics

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after)))}

    def body(self, request_id: str) -> bytes:
        return json.dumps(
            {
                "type": "error",
                "error": {"type": self.error_type, "message": self.message},
                "request_id": request_id,
            }
        ).encode()


class InvalidRequest(ProxyRefusal):
    status = 400
    error_type = "invalid_request_error"
    reason = "invalid_request"


class ModelNotAllowed(ProxyRefusal):
    status = 403
    error_type = "permission_error"
    reason = "model_not_allowed"


class NotPriced(ProxyRefusal):
    status = 403
    error_type = "permission_error"
    reason = "not_priced"


class RequestTooLarge(ProxyRefusal):
    status = 413
    error_type = "request_too_large"
    reason = "too_large"


class RateLimited(ProxyRefusal):
    status = 429
    error_type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        retry_after: float | None = None,
        budget_scope: str | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.limit_reason = reason
        self.budget_scope = budget_scope  # "agent" or "run" for a budget refusal

    def headers(self) -> dict[str, str]:
        headers = super().headers()
        if self.budget_scope is not None:
            headers[BUDGET_SCOPE_HEADER] = self.budget_scope
        return headers

    @property
    def label(self) -> str:
        return self.limit_reason


class LedgerDown(ProxyRefusal):
    status = 503
    error_type = "api_error"
    reason = "ledger_unavailable"


class UpstreamTimeout(ProxyRefusal):
    status = 504
    error_type = "timeout_error"
    reason = "timeout"


class UpstreamUnavailable(ProxyRefusal):
    """`sent`: the connection broke after the request was sent (the provider may have billed
    it), rather than never being made."""

    status = 502
    error_type = "api_error"
    reason = "upstream_unavailable"

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


def refusal_label(refusal: ProxyRefusal) -> str:
    """The metrics label of a refusal (`budget_tokens`, `concurrency`, `timeout`, ...)."""
    return refusal.label if isinstance(refusal, RateLimited) else refusal.reason
