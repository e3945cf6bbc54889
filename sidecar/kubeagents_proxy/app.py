"""The proxy's two aiohttp applications, built by `create_proxy(settings, deps)`:

- the API on 127.0.0.1 (`POST /v1/messages`, `POST /v1/messages/count_tokens`, `GET /v1/models`);
- the admin port (`/livez`, `/readyz`, `/metrics`, `/kubeagents/budget`).

A call to `/v1/messages` passes, in order: body size and JSON shape, the model allow-list and
price, the input bound and the per-call cap, the request rate, the pod's and the agent's
concurrency caps, the budget reservation; then it goes upstream (with retries inside the
deadline), streams back untouched, and is settled with its real usage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
import time
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubeagents_proxy.accounting import Accountant, Charge, parse_run_budget
from kubeagents_proxy.errors import (
    InvalidRequest,
    ModelNotAllowed,
    ProxyRefusal,
    RequestTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
    refusal_label,
)
from kubeagents_proxy.guards import AgentConcurrency, PodConcurrency, RequestRate
from kubeagents_proxy.input_bound import byte_bound, counted_bound, needs_count_tokens
from kubeagents_proxy.ledger import BudgetLedger, LedgerUnavailable, Scope
from kubeagents_proxy.metrics import ProxyMetrics
from kubeagents_proxy.prices import ModelPrice, PriceTable, Usage
from kubeagents_proxy.settings import (
    PROBE_CALL_HEADER,
    RUN_BUDGET_HEADER,
    MaxTokensPolicy,
    ProxySettings,
)
from kubeagents_proxy.stream_usage import StreamUsage
from kubeagents_proxy.upstream import Upstream, response_headers

log = logging.getLogger("kubeagents.proxy")
COUNT_TOKENS_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
)
MAX_TOKENS_CEILING = 2**31 - 1
PROPAGATOR = TraceContextTextMapPropagator()


@dataclass
class ProxyDeps:
    """What the proxy talks to, injected (tests and `kubeagents proxy` build them)."""

    upstream: Upstream
    redis: Any | None  # redis.asyncio.Redis or RedisCluster
    metrics: ProxyMetrics
    tracer: trace.Tracer | None = None  # None: no spans (kubeagents.telemetry.build_tracer)


def _request_id() -> str:
    return "req_proxy_" + secrets.token_hex(12)


def refusal_response(refusal: ProxyRefusal) -> web.Response:
    request_id = _request_id()
    return web.Response(
        status=refusal.status,
        body=refusal.body(request_id),
        content_type="application/json",
        headers={"request-id": request_id, **refusal.headers()},
    )


@dataclass
class CallPlan:
    """A validated `/v1/messages` request and what it may cost."""

    body: dict[str, Any]
    raw: bytes
    model: str
    price: ModelPrice | None
    stream: bool
    input_bound: int
    max_tokens: int
    run_scope: Scope | None
    probe: bool
    counted: bool  # the input bound comes from count_tokens (tight), not from the body's bytes
    span: trace.Span | None = None


class Proxy:
    """The handlers of both applications, sharing one configuration and its clients."""

    def __init__(self, settings: ProxySettings, deps: ProxyDeps) -> None:
        self.settings = settings
        self.upstream = deps.upstream
        self.redis = deps.redis
        self.metrics = deps.metrics
        self.tracer = deps.tracer
        self.prices = PriceTable.with_overrides(settings.prices)
        self.allowed = frozenset(settings.allowed_models)
        self.pod_concurrency = PodConcurrency(
            settings.max_concurrent_calls, settings.concurrency_wait_seconds
        )
        lease = settings.request_timeout_seconds + settings.reservation_grace_seconds
        self.agent_concurrency = (
            AgentConcurrency(
                deps.redis,
                namespace=settings.namespace,
                agent=settings.agent,
                limit=settings.max_concurrent_calls_per_agent,
                wait_seconds=settings.concurrency_wait_seconds,
                lease_seconds=lease,
            )
            if settings.max_concurrent_calls_per_agent is not None
            else None
        )
        self.rate = (
            RequestRate(
                deps.redis,
                namespace=settings.namespace,
                agent=settings.agent,
                limit=settings.requests_per_minute,
            )
            if settings.requests_per_minute is not None
            else None
        )
        ledger = (
            BudgetLedger(deps.redis, namespace=settings.namespace, agent=settings.agent)
            if deps.redis is not None
            else None
        )
        agent_scope = (
            Scope(
                name="agent",
                token_limit=settings.budget_tokens_per_day,
                usd_nanos_limit=(
                    int(settings.budget_usd_per_day * 1_000_000_000)
                    if settings.budget_usd_per_day is not None
                    else None
                ),
            )
            if settings.budgets_enabled
            else None
        )
        self.ledger = ledger
        self.agent_scope = agent_scope
        self.accountant = Accountant(
            ledger if settings.budgets_enabled else None,
            agent=settings.agent,
            agent_scope=agent_scope,
            reservation_ttl_seconds=lease,
            fail_open=settings.budget_fail_open,
            metrics=self.metrics,
        )

    # --- validation -----------------------------------------------------------------------

    async def _read_json(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
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

    def _check_model(self, body: dict[str, Any]) -> tuple[str, ModelPrice | None]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model: a non-empty string is required")
        if model not in self.allowed:
            allowed = ", ".join(sorted(self.allowed))
            raise ModelNotAllowed(
                f"model {model} is not allowed for agent {self.settings.agent}; allowed: {allowed}"
            )
        price = self.prices.get(model)
        if price is None and self.settings.budget_usd_per_day is not None:
            raise ModelNotAllowed(
                f"model {model} has no price, so the dollar budget of agent "
                f"{self.settings.agent} cannot be enforced; add it to prices"
            )
        return model, price

    async def _plan(self, request: web.Request) -> CallPlan:
        raw, body = await self._read_json(request)
        model, price = self._check_model(body)
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
        run_header = request.headers.get(RUN_BUDGET_HEADER)
        run_scope = parse_run_budget(run_header) if run_header else None
        counted = needs_count_tokens(body)
        if counted:
            bound = await self._count_tokens_bound(request, body)
        else:
            bound = byte_bound(raw, body)
        plan = CallPlan(
            body=body,
            raw=raw,
            model=model,
            price=price,
            stream=stream,
            input_bound=bound,
            max_tokens=max_tokens,
            run_scope=run_scope,
            probe=request.headers.get(PROBE_CALL_HEADER) is not None,
            counted=counted,
        )
        if plan.input_bound + plan.max_tokens > self.settings.max_tokens_per_call:
            await self._tighten_bound(request, plan)
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

    # --- /v1/messages -----------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        span = None
        if self.tracer is not None:
            span = self.tracer.start_span(
                "chat",
                context=PROPAGATOR.extract(request.headers),
                kind=SpanKind.CLIENT,
                attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic"},
            )
        try:
            return await self._messages(request, started, span)
        finally:
            if span is not None:
                span.end()

    async def _messages(
        self, request: web.Request, started: float, span: trace.Span | None
    ) -> web.StreamResponse:
        model = "unknown"
        try:
            plan = await self._plan(request)
            plan.span = span
            model = plan.model
            if span is not None:
                span.update_name(f"chat {model}")
                span.set_attribute("gen_ai.request.model", model)
                span.set_attribute("gen_ai.request.max_tokens", plan.max_tokens)
            if self.rate is not None:
                await self.rate.admit()
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(self.pod_concurrency.slot())
                if self.agent_concurrency is not None:
                    await stack.enter_async_context(self.agent_concurrency.slot())
                charge = await self._reserve(request, plan)
                self.metrics.in_flight.inc()
                try:
                    return await self._forward(request, plan, charge, started)
                finally:
                    self.metrics.in_flight.dec()
        except ProxyRefusal as refusal:
            if span is not None:
                span.set_attribute("error.type", refusal.error_type)
                span.set_status(Status(StatusCode.ERROR, refusal.message))
            self.metrics.refusals.labels(refusal_label(refusal)).inc()
            outcome = "timeout" if isinstance(refusal, UpstreamTimeout) else "refused"
            self.metrics.requests.labels(model if model in self.allowed else "other", outcome).inc()
            self._log_call(model, outcome, started, refusal=refusal)
            return refusal_response(refusal)

    async def _reserve(self, request: web.Request, plan: CallPlan) -> Charge:
        scopes = self.accountant.scopes(plan.run_scope)
        tokens, usd = self._worst_case(plan)
        try:
            return await self.accountant.reserve(scopes, tokens=tokens, usd_nanos=usd)
        except ProxyRefusal:
            if plan.counted or not scopes or not await self._tighten_bound(request, plan):
                raise
            tokens, usd = self._worst_case(plan)  # refused on the loose bound: try once more
            return await self.accountant.reserve(scopes, tokens=tokens, usd_nanos=usd)

    async def _tighten_bound(self, request: web.Request, plan: CallPlan) -> bool:
        """Replace a loose byte bound by the `count_tokens` one; whether that lowered it."""
        if plan.counted:
            return False
        tightened = await self._count_tokens_bound(request, plan.body)
        plan.counted = True
        if tightened >= plan.input_bound:
            return False
        plan.input_bound = tightened
        return True

    def _worst_case(self, plan: CallPlan) -> tuple[int, int]:
        tokens = plan.input_bound + plan.max_tokens
        usd = (
            self.prices.worst_case_nanos(
                plan.price, input_tokens=plan.input_bound, output_tokens=plan.max_tokens
            )
            if plan.price is not None
            else 0
        )
        return tokens, usd

    def _cost(self, plan: CallPlan, usage: Usage) -> int:
        return self.prices.usage_nanos(plan.price, usage) if plan.price is not None else 0

    async def _forward(
        self, request: web.Request, plan: CallPlan, charge: Charge, started: float
    ) -> web.StreamResponse:
        deadline = started + self.settings.request_timeout_seconds
        headers = self.upstream.headers(request.headers)
        if plan.span is not None and plan.span.get_span_context().is_valid:
            PROPAGATOR.inject(headers, context=trace.set_span_in_context(plan.span))
        sent_at = time.monotonic()
        try:
            upstream = await self.upstream.request(
                "POST", "/v1/messages", body=plan.raw, headers=headers, deadline=deadline
            )
        except UpstreamUnavailable:
            self.accountant.settle(charge, tokens=0, usd_nanos=0)  # nothing reached the model
            raise
        except UpstreamTimeout:
            # The model may have worked on it: never charge less than could have been used.
            self.accountant.settle(charge, tokens=charge.tokens, usd_nanos=charge.usd_nanos)
            raise
        self.metrics.time_to_first_token.labels(plan.model).observe(time.monotonic() - sent_at)
        if upstream.status != 200 or not plan.stream:
            return await self._relay_whole(plan, charge, upstream, started, sent_at, deadline)
        return await self._relay_stream(request, plan, charge, upstream, started, sent_at, deadline)

    async def _relay_whole(
        self,
        plan: CallPlan,
        charge: Charge,
        upstream: aiohttp.ClientResponse,
        started: float,
        sent_at: float,
        deadline: float,
    ) -> web.Response:
        try:
            async with upstream, asyncio.timeout(max(0.0, deadline - time.monotonic())):
                payload = await upstream.read()
        except (TimeoutError, aiohttp.ClientError):
            self.accountant.settle(charge, tokens=charge.tokens, usd_nanos=charge.usd_nanos)
            raise UpstreamTimeout(
                "upstream answer did not complete within the request timeout"
            ) from None
        usage = Usage()
        if upstream.status == 200:
            try:
                usage = Usage.from_anthropic(json.loads(payload).get("usage") or {})
            except (ValueError, AttributeError):
                usage = Usage(input_tokens=charge.tokens)  # unreadable: charge the worst case
        outcome = "ok" if upstream.status == 200 else "upstream_error"
        self._account(plan, charge, usage, outcome, started, sent_at)
        return web.Response(
            status=upstream.status, body=payload, headers=response_headers(upstream)
        )

    async def _relay_stream(
        self,
        request: web.Request,
        plan: CallPlan,
        charge: Charge,
        upstream: aiohttp.ClientResponse,
        started: float,
        sent_at: float,
        deadline: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=response_headers(upstream))
        parser = StreamUsage()
        outcome = "ok"
        try:
            async with upstream:
                await response.prepare(request)
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        async for chunk in upstream.content.iter_any():
                            parser.feed(chunk)
                            await response.write(chunk)
                except TimeoutError:
                    outcome = "timeout"
                    await self._write_stream_error(response, "timeout_error", "request timeout")
                except ConnectionResetError:  # before ClientError: the client went away
                    outcome = "client_disconnect"
                except aiohttp.ClientError:
                    outcome = "upstream_error"
                    await self._write_stream_error(response, "api_error", "upstream stream broke")
        except ConnectionResetError:
            outcome = "client_disconnect"
        if outcome == "ok" and not parser.saw_message_stop:
            outcome = "upstream_error"
        complete = outcome == "ok" and parser.saw_usage
        usage = parser.usage if complete else None
        self._account(plan, charge, usage, outcome, started, sent_at)
        return response

    async def _write_stream_error(
        self, response: web.StreamResponse, error_type: str, message: str
    ) -> None:
        event = json.dumps({"type": "error", "error": {"type": error_type, "message": message}})
        with suppress(ConnectionResetError):
            await response.write(f"event: error\ndata: {event}\n\n".encode())

    def _account(
        self,
        plan: CallPlan,
        charge: Charge,
        usage: Usage | None,
        outcome: str,
        started: float,
        sent_at: float,
    ) -> None:
        """Settle and record a call. `usage=None`: unknown, so the whole reservation is charged.

        The settlement runs as its own task; metrics and the log line are recorded on the
        loop's next turn, after the answer has been written, so neither delays the caller."""
        if usage is None:
            tokens, usd = charge.tokens, charge.usd_nanos
        else:
            tokens, usd = usage.total_tokens, self._cost(plan, usage)
        self.accountant.settle(charge, tokens=tokens, usd_nanos=usd)
        if plan.span is not None:
            _describe_call(plan.span, usage, outcome)
        upstream_seconds = time.monotonic() - sent_at
        asyncio.get_running_loop().call_soon(
            self._record_call, plan, usage, outcome, started, upstream_seconds, tokens, usd
        )

    def _record_call(
        self,
        plan: CallPlan,
        usage: Usage | None,
        outcome: str,
        started: float,
        upstream_seconds: float,
        tokens: int,
        usd: int,
    ) -> None:
        metrics = self.metrics
        metrics.requests.labels(plan.model, outcome).inc()
        metrics.upstream_latency.labels(plan.model).observe(upstream_seconds)
        if usage is not None:
            for kind, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cache_write", usage.cache_write_5m_tokens + usage.cache_write_1h_tokens),
                ("cache_read", usage.cache_read_tokens),
            ):
                if count:
                    metrics.tokens.labels(plan.model, kind).inc(count)
        if usd:
            metrics.cost.labels(plan.model).inc(usd / 1e9)
        if plan.probe:
            metrics.probe_calls.labels(outcome).inc()
        self._log_call(plan.model, outcome, started, tokens=tokens, usd_nanos=usd, probe=plan.probe)

    def _log_call(
        self,
        model: str,
        outcome: str,
        started: float,
        *,
        refusal: ProxyRefusal | None = None,
        tokens: int = 0,
        usd_nanos: int = 0,
        probe: bool = False,
    ) -> None:
        """One JSON line per call on stderr, written directly: the logging module's records
        and handlers cost more than the line itself on this path. Silenced with the
        `kubeagents.proxy` logger's level above INFO."""
        if not log.isEnabledFor(logging.INFO):
            return
        record: dict[str, Any] = {
            "event": "call",
            "agent": self.settings.agent,
            "model": model,
            "outcome": outcome,
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
            "tokens": tokens,
            "usd": usd_nanos / 1e9,
            "probe": probe,
        }
        if refusal is not None:
            record["status"] = refusal.status
            record["reason"] = refusal_label(refusal)
            record["message"] = refusal.message
        sys.stderr.write(json.dumps(record) + "\n")

    # --- pass-through endpoints -------------------------------------------------------------

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        try:
            raw, body = await self._read_json(request)
            self._check_model(body)
            return await self._pass_through(request, "POST", request.path, raw)
        except ProxyRefusal as refusal:
            self.metrics.refusals.labels(refusal_label(refusal)).inc()
            return refusal_response(refusal)

    async def models(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._pass_through(request, "GET", request.path_qs, None)
        except ProxyRefusal as refusal:
            return refusal_response(refusal)

    async def _pass_through(
        self, request: web.Request, method: str, path: str, body: bytes | None
    ) -> web.Response:
        deadline = time.monotonic() + self.settings.request_timeout_seconds
        upstream = await self.upstream.request(
            method,
            path,
            body=body,
            headers=self.upstream.headers(request.headers),
            deadline=deadline,
        )
        async with upstream:
            payload = await upstream.read()
        return web.Response(
            status=upstream.status, body=payload, headers=response_headers(upstream)
        )

    # --- admin ------------------------------------------------------------------------------

    async def livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {"config": "ok"}
        if self.redis is not None:
            try:
                async with asyncio.timeout(2):
                    await self.redis.ping()
                checks["redis"] = "ok"
            except Exception as error:  # noqa: BLE001 - any failure means not ready
                checks["redis"] = f"unreachable: {type(error).__name__}"
        ready = all(value == "ok" for value in checks.values())
        return web.json_response(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status=200 if ready else 503,
        )

    async def budget(self, request: web.Request) -> web.Response:
        scopes: list[Scope] = []
        if self.agent_scope is not None:
            scopes.append(self.agent_scope)
        run = request.query.get("run")
        if run:
            try:
                scopes.append(parse_run_budget(f"run={run}"))
            except ProxyRefusal as refusal:
                return refusal_response(refusal)
        if self.ledger is None or not scopes:
            return web.json_response({"agent": self.settings.agent, "budgets": False, "scopes": []})
        try:
            states = await self.ledger.snapshot(scopes)
        except LedgerUnavailable as error:
            return web.json_response({"error": f"budget ledger unavailable: {error}"}, status=503)
        return web.json_response(
            {
                "agent": self.settings.agent,
                "namespace": self.settings.namespace,
                "budgets": True,
                "window_seconds": 86400,
                "scopes": [
                    {
                        "scope": state.scope,
                        "tokens": _kind_json(state.tokens),
                        "usd": _kind_json(state.usd_nanos, scale=1e-9),
                    }
                    for state in states
                ],
            }
        )

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        if self.ledger is not None and self.agent_scope is not None:
            try:
                async with asyncio.timeout(1):
                    (state,) = await self.ledger.snapshot([self.agent_scope])
                for kind, kind_state, scale in (
                    ("tokens", state.tokens, 1.0),
                    ("usd", state.usd_nanos, 1e-9),
                ):
                    for name in ("limit", "used", "reserved", "remaining"):
                        value = getattr(kind_state, name)
                        if value is not None:
                            self.metrics.budget.labels(kind, name).set(value * scale)
            except (LedgerUnavailable, TimeoutError):
                pass  # the gauges keep their last values
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"content-type": CONTENT_TYPE_LATEST},
        )


def _describe_call(span: trace.Span, usage: Usage | None, outcome: str) -> None:
    """GenAI semantic-convention attributes of a finished call."""
    if usage is not None:
        cache_write = usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
        span.set_attribute(
            "gen_ai.usage.input_tokens",
            usage.input_tokens + cache_write + usage.cache_read_tokens,
        )
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cache_read_tokens)
        span.set_attribute("gen_ai.usage.cache_creation.input_tokens", cache_write)
    span.set_attribute("kubeagents.outcome", outcome)
    if outcome != "ok":
        span.set_attribute("error.type", outcome)
        span.set_status(Status(StatusCode.ERROR, outcome))


def _kind_json(state: Any, *, scale: float = 1.0) -> dict[str, Any]:
    def scaled(value: int | None) -> float | int | None:
        if value is None:
            return None
        return value * scale if scale != 1.0 else value

    return {
        "limit": scaled(state.limit),
        "used": scaled(state.used),
        "reserved": scaled(state.reserved),
        "remaining": scaled(state.remaining),
        "seconds_until_free": state.seconds_until_free,
    }


@dataclass
class ProxyApps:
    api: web.Application
    admin: web.Application
    proxy: Proxy


def create_proxy(settings: ProxySettings, deps: ProxyDeps) -> ProxyApps:
    """The API and admin applications of one proxy (no globals; clients injected)."""
    proxy = Proxy(settings, deps)
    api = web.Application(client_max_size=settings.max_body_bytes)
    api.router.add_post("/v1/messages", proxy.messages)
    api.router.add_post("/v1/messages/count_tokens", proxy.count_tokens)
    api.router.add_get("/v1/models", proxy.models)
    api.router.add_get("/v1/models/{model_id}", proxy.models)
    admin = web.Application()
    admin.router.add_get("/livez", proxy.livez)
    admin.router.add_get("/readyz", proxy.readyz)
    admin.router.add_get("/metrics", proxy.metrics_endpoint)
    admin.router.add_get("/kubeagents/budget", proxy.budget)
    return ProxyApps(api, admin, proxy)
