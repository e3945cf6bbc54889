"""Planning a call: validate a `/v1/messages` request and bound what it may cost.

The rules, in order (docs/proxy.md, "The order of checks of one call"):

1. Body: `content-type: application/json`, at most `max_body_bytes` (413), a JSON object.
2. Fields: only those the proxy knows; `anthropic-beta` values on the allow-list (400).
3. Model on the allow-list (403); priced by its exact id; under the agent's dollar budget a
   model without a price is refused (403).
4. `max_tokens` an integer in 1..2**31-1, `messages` a non-empty list, `stream` a boolean (400).
5. Priced options (`speed`, `inference_geo`): under the agent's dollar budget, one the proxy
   cannot price is refused (400 naming it).
6. Server-side tools, `mcp_servers`, `container`: refused unless allowed, else bounded (400).
7. The input bound: the body's bytes (or `count_tokens` for content its bytes cannot bound),
   plus the server tools' bound; then the per-call cap (400 `reject` / `clamp`, 413 when the
   input alone is over it).

Nothing here touches Redis; only `count_tokens` (free of charge) goes upstream. So bad input is
refused before it changes any state.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kubeagents.headers import PROBE_CALL_HEADER, RUN_BUDGET_HEADER
from kubeagents_proxy.accounting import RunBudget, parse_run_budget
from kubeagents_proxy.errors import (
    InvalidRequest,
    ModelNotAllowed,
    RequestTooLarge,
    UpstreamUnavailable,
)
from kubeagents_proxy.input_bound import byte_bound, counted_bound, needs_count_tokens
from kubeagents_proxy.prices import ModelPrice, PriceTable, Usage
from kubeagents_proxy.request_options import PriceOptions, RequestOptions
from kubeagents_proxy.server_tools import ServerToolBound, ServerTools
from kubeagents_proxy.settings import MaxTokensPolicy, ProxySettings
from kubeagents_proxy.upstream import Upstream

COUNT_TOKENS_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
)
MAX_TOKENS_CEILING = 2**31 - 1


@dataclass
class CallPlan:
    """A validated `/v1/messages` request and what it may cost."""

    body: dict[str, Any]
    raw: bytes
    model: str
    price: ModelPrice | None
    options: PriceOptions
    server_tools: ServerToolBound
    stream: bool
    body_bound: int  # input tokens the body can hold
    max_tokens: int
    run: RunBudget | None
    probe: bool
    counted: bool  # body_bound comes from count_tokens (tight), not from the body's bytes

    @property
    def input_bound(self) -> int:
        return self.body_bound + self.server_tools.input_tokens

    @property
    def priced(self) -> bool:
        return self.price is not None and self.options.unpriced is None

    def worst_case(self) -> tuple[int, int | None]:
        """Tokens and nano-dollars the call can cost at most (None: it has no price)."""
        tokens = self.input_bound + self.max_tokens
        if self.price is None or self.options.unpriced is not None:
            return tokens, None
        usd = self.price.worst_case_nanos(
            input_tokens=self.input_bound,
            output_tokens=self.max_tokens,
            multiplier_milli=self.options.multiplier_milli,
        )
        return tokens, usd + self.server_tools.fees_nanos


class CallPlanner:
    """Turns a request into a `CallPlan`, or refuses it with a `ProxyRefusal`."""

    def __init__(
        self,
        settings: ProxySettings,
        *,
        upstream: Upstream,
        prices: PriceTable,
        options: RequestOptions,
        server_tools: ServerTools,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.prices = prices
        self.options = options
        self.server_tools = server_tools
        self.allowed = frozenset(settings.allowed_models)
        self.agent_usd_budget = settings.budget_usd_per_day is not None

    async def read_json(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        if request.content_type != "application/json":
            raise InvalidRequest(
                f"content-type must be application/json, not {request.content_type or 'none'}"
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestTooLarge(
                f"request body exceeds the proxy's limit of {self.settings.max_body_bytes:,} bytes"
            ) from None
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise InvalidRequest(f"body: not valid JSON ({error})") from None
        if not isinstance(body, dict):
            raise InvalidRequest("body: must be a JSON object")
        return raw, body

    def check_model(self, body: dict[str, Any]) -> tuple[str, ModelPrice | None]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model: a non-empty string is required")
        if model not in self.allowed:
            allowed = ", ".join(sorted(self.allowed))
            raise ModelNotAllowed(
                f"model {model} is not allowed for agent {self.settings.agent}; allowed: {allowed}"
            )
        price = self.prices.get(model)
        if price is None and self.agent_usd_budget:
            raise ModelNotAllowed(
                f"model {model} has no price, so the dollar budget of agent "
                f"{self.settings.agent} cannot be enforced; add it to prices"
            )
        return model, price

    async def plan(self, request: web.Request) -> CallPlan:
        raw, body = await self.read_json(request)
        self.options.check_fields(body)
        self.options.check_betas(request.headers.get("anthropic-beta"))
        model, price = self.check_model(body)
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise InvalidRequest("max_tokens: an integer is required")
        if not 1 <= max_tokens <= MAX_TOKENS_CEILING:
            raise InvalidRequest(
                f"max_tokens: must be between 1 and {MAX_TOKENS_CEILING}, not {max_tokens}"
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages: a non-empty list is required")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequest("stream: must be a boolean")
        options = self.options.price_options(body, model, price)
        if options.unpriced is not None and self.agent_usd_budget:
            raise InvalidRequest(
                f"{options.unpriced}, so the dollar budget of agent {self.settings.agent} "
                "cannot be enforced"
            )
        server_tools = self.server_tools.bound(body)
        run_header = request.headers.get(RUN_BUDGET_HEADER)
        counted = needs_count_tokens(body, raw)
        if counted:
            bound = await self._count_tokens_bound(request, body)
        else:
            bound = byte_bound(raw, body)
        plan = CallPlan(
            body=body,
            raw=raw,
            model=model,
            price=price,
            options=options,
            server_tools=server_tools,
            stream=stream,
            body_bound=bound,
            max_tokens=max_tokens,
            run=parse_run_budget(run_header) if run_header else None,
            probe=request.headers.get(PROBE_CALL_HEADER) is not None,
            counted=counted,
        )
        if plan.input_bound + plan.max_tokens > self.settings.max_tokens_per_call:
            await self.tighten(request, plan)
        self._apply_cap(plan)
        return plan

    def _apply_cap(self, plan: CallPlan) -> None:
        cap = self.settings.max_tokens_per_call
        left = cap - plan.input_bound
        if left < 1:
            raise RequestTooLarge(
                f"input of up to {plan.input_bound:,} tokens leaves nothing of the per-call cap of "
                f"{cap:,} tokens of agent {self.settings.agent}"
            )
        if plan.max_tokens <= left:
            return
        if self.settings.max_tokens_policy is MaxTokensPolicy.CLAMP:
            plan.max_tokens = left
            plan.body["max_tokens"] = left
            plan.raw = json.dumps(plan.body, separators=(",", ":")).encode()
            return
        raise InvalidRequest(
            f"max_tokens {plan.max_tokens:,} exceeds the {left:,} tokens the per-call cap of "
            f"{cap:,} leaves after an input of up to {plan.input_bound:,} tokens"
        )

    async def tighten(self, request: web.Request, plan: CallPlan) -> bool:
        """Replace a loose byte bound by the `count_tokens` one; whether that lowered it."""
        if plan.counted:
            return False
        tightened = await self._count_tokens_bound(request, plan.body)
        plan.counted = True
        if tightened >= plan.body_bound:
            return False
        plan.body_bound = tightened
        return True

    async def _count_tokens_bound(self, request: web.Request, body: dict[str, Any]) -> int:
        counted_body = {k: v for k, v in body.items() if k in COUNT_TOKENS_FIELDS}
        deadline = time.monotonic() + self.settings.request_timeout_seconds
        response = await self.upstream.request(
            "POST",
            "/v1/messages/count_tokens",
            body=json.dumps(counted_body).encode(),
            headers=self.upstream.headers(request.headers),
            deadline=deadline,
        )
        async with response:
            payload = await response.read()
            if response.status != 200:
                raise UpstreamUnavailable(
                    f"cannot bound the input tokens: count_tokens answered {response.status}: "
                    f"{payload[:300].decode(errors='replace')}"
                )
        try:
            return counted_bound(int(json.loads(payload)["input_tokens"]))
        except (ValueError, KeyError, TypeError):
            raise UpstreamUnavailable(
                "cannot bound the input tokens: bad count_tokens answer"
            ) from None


class CallPricing:
    """What a call's real usage costs, by the rules its plan was priced with."""

    def __init__(self, server_tools: ServerTools) -> None:
        self.server_tools = server_tools

    def usd_nanos(self, plan: CallPlan, usage: Usage) -> int:
        if plan.price is None:
            return 0
        return plan.price.usage_nanos(
            usage,
            multiplier_milli=plan.options.multiplier_milli,
            fees_nanos=self.server_tools.fees_nanos(usage),
        )
