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

The budget ledger's errors (`LedgerError` and its kinds: `LedgerUnavailable`, `LimitMismatch`,
`Unpriced`, `BudgetExceeded`) are here too; `kubeagents_proxy.accounting` turns them into
refusals (`RateLimited`, `LedgerDown`, …), and docs of when each is raised are in
`kubeagents_proxy.ledger`.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import TYPE_CHECKING, ClassVar

from kubeagents.headers import BUDGET_SCOPE_HEADER

if TYPE_CHECKING:
    from kubeagents_proxy.ledger import Reservation


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


# --- the budget ledger's errors -------------------------------------------------------------


class LedgerError(Exception):
    """Base of every error of the budget ledger."""


class LedgerUnavailable(LedgerError):
    """Redis could not be reached or did not answer in time, or the replicas did not
    acknowledge a reservation in time; the proxy fails closed (503).

    Raised by `reserve()`, it carries the reservation that may or may not have been recorded
    (`unconfirmed`), so the caller can release it (`settle` with zero is idempotent) instead of
    leaving it to be charged in full when it expires.
    """

    unconfirmed: Reservation | None = None


class LimitMismatch(LedgerError):
    """`reserve()` named other limits for a scope with fixed limits than the stored ones."""

    def __init__(
        self,
        *,
        scope: str,
        stored_token_limit: int | None,
        stored_usd_nanos_limit: int | None,
    ) -> None:
        self.scope = scope
        self.stored_token_limit = stored_token_limit
        self.stored_usd_nanos_limit = stored_usd_nanos_limit
        super().__init__(str(self))

    def __str__(self) -> str:
        tokens = "none" if self.stored_token_limit is None else f"{self.stored_token_limit:,}"
        usd = (
            "none"
            if self.stored_usd_nanos_limit is None
            else _format_usd(self.stored_usd_nanos_limit)
        )
        return (
            f"the limits of scope {self.scope} were fixed by its first call at tokens={tokens}, "
            f"usd={usd}; a later call cannot change them"
        )


class Unpriced(LedgerError):
    """`reserve()` of a call without a price in a scope with a dollar limit."""

    def __init__(self, *, scope: str) -> None:
        self.scope = scope
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"scope {self.scope} has a dollar limit, and the call has no price"


class BudgetExceeded(LedgerError):
    """`reserve()` was refused because a scope's rolling budget of one kind would be exceeded."""

    def __init__(
        self,
        *,
        scope: str,
        kind: str,
        limit: int,
        used: int,
        reserved: int,
        requested: int,
        retry_after: int | None,
        never_fits: bool,
        window_seconds: int = 86400,
    ) -> None:
        self.scope = scope
        self.kind = kind
        self.limit = limit
        self.used = used
        self.reserved = reserved
        self.requested = requested
        self.retry_after = retry_after
        self.never_fits = never_fits
        self.window_seconds = window_seconds
        super().__init__(str(self))

    def __str__(self) -> str:
        tokens = self.kind == "tokens"

        def number(value: int) -> str:
            return f"{value:,}" if tokens else _format_usd(value)

        def amount(value: int) -> str:
            return f"{value:,} tokens" if tokens else _format_usd(value)

        unit = "token" if tokens else "USD"
        period = "daily" if self.window_seconds == 86400 else "rolling"
        text = (
            f"{period} {unit} budget of scope {self.scope} exhausted: "
            f"{number(self.used)} used + {number(self.reserved)} reserved of "
            f"{number(self.limit)} in the last {_format_duration(self.window_seconds)}"
        )
        if self.never_fits:
            return f"{text}; a request of {amount(self.requested)} can never fit"
        if self.retry_after is not None:
            return (
                f"{text}; {amount(self.requested)} free again in "
                f"{_format_duration(self.retry_after)}"
            )
        return text


def _format_usd(nanos: int) -> str:
    dollars = Decimal(nanos).scaleb(-9)
    if nanos % 10_000_000 == 0:
        return f"${dollars:,.2f}"
    return f"${dollars:,.9f}".rstrip("0")


def _format_duration(seconds: int) -> str:
    """`45s`, `37m`, `2h 5m`, `24h`: under a minute exact, otherwise rounded up to minutes."""
    if seconds < 60:
        return f"{seconds}s"
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    if hours and minutes:
        return f"{hours}h {minutes}m"
    return f"{hours}h" if hours else f"{minutes}m"
