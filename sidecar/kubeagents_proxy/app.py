"""The proxy's two aiohttp applications, built by `create_proxy(settings, parts)`:

- the API on 127.0.0.1 (`POST /v1/messages`, `POST /v1/messages/count_tokens`, `GET /v1/models`);
- the admin port (`/livez`, `/readyz`, `/metrics`, `/kubeagents/budget`; see `admin.py`).

A call to `/v1/messages` is planned (`planning.py`: shape, model, options, server tools, the
input bound and the per-call cap), admitted (request rate, the pod's and the agent's
concurrency caps: `guards.py`), reserved (`accounting.py`), then relayed and settled
(`relay.py`). Every refusal is a `ProxyRefusal`, turned into Anthropic's error shape in one
place: the API's error middleware.

The collaborators (`ProxyParts`) are built by `command.py` from the settings and passed in, so
a test can build the applications around its own.
"""

from __future__ import annotations

import secrets
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kubeagents.metrics_endpoint import metrics_handler
from kubeagents_proxy.accounting import Accountant, Charge
from kubeagents_proxy.admin import Admin
from kubeagents_proxy.call_record import CallRecorder, describe_refusal
from kubeagents_proxy.errors import ProxyRefusal, refusal_label
from kubeagents_proxy.guards import AgentConcurrency, PodConcurrency, RequestRate
from kubeagents_proxy.metrics import ProxyMetrics
from kubeagents_proxy.planning import CallPlan, CallPlanner
from kubeagents_proxy.relay import Relay
from kubeagents_proxy.upstream import Upstream, response_headers

PROPAGATOR = TraceContextTextMapPropagator()


@dataclass
class ProxyParts:
    """Everything the handlers use, built from the settings by `command.build_parts`."""

    planner: CallPlanner
    upstream: Upstream
    pod_concurrency: PodConcurrency
    agent_concurrency: AgentConcurrency | None
    rate: RequestRate | None
    accountant: Accountant
    relay: Relay
    recorder: CallRecorder
    admin: Admin
    metrics: ProxyMetrics
    tracer: trace.Tracer | None
    request_timeout_seconds: float


@dataclass
class CallContext:
    """A `/v1/messages` call in progress: what the error middleware needs to record it."""

    started: float
    model: str = "unknown"
    span: trace.Span | None = None


_CALL_KEY = "kubeagents.call"


def refusal_response(refusal: ProxyRefusal) -> web.Response:
    request_id = "req_proxy_" + secrets.token_hex(12)
    return web.Response(
        status=refusal.status,
        body=refusal.body(request_id),
        content_type="application/json",
        headers={"request-id": request_id, **refusal.headers()},
    )


def refusal_middleware(parts: ProxyParts) -> web.middleware:  # type: ignore[valid-type]
    """Turns every `ProxyRefusal` into Anthropic's error shape, and records it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ProxyRefusal as refusal:
            call: CallContext | None = request.get(_CALL_KEY)
            if call is None:
                parts.metrics.refusals.labels(refusal_label(refusal)).inc()
            else:
                parts.recorder.refused(call.model, refusal, call.started)
            return refusal_response(refusal)

    return middleware


class ApiHandlers:
    """The API's handlers."""

    def __init__(self, parts: ProxyParts) -> None:
        self.parts = parts

    async def messages(self, request: web.Request) -> web.StreamResponse:
        parts = self.parts
        call = CallContext(started=time.monotonic())
        request[_CALL_KEY] = call
        if parts.tracer is None:
            return await self._messages(request, call)
        call.span = parts.tracer.start_span(
            "chat",
            context=PROPAGATOR.extract(request.headers),
            kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic"},
        )
        try:
            return await self._messages(request, call)
        except ProxyRefusal as refusal:
            describe_refusal(call.span, refusal)
            raise
        finally:
            call.span.end()

    async def _messages(self, request: web.Request, call: CallContext) -> web.StreamResponse:
        parts = self.parts
        plan = await parts.planner.plan(request)
        call.model = plan.model
        if call.span is not None:
            call.span.update_name(f"chat {plan.model}")
            call.span.set_attribute("gen_ai.request.model", plan.model)
            call.span.set_attribute("gen_ai.request.max_tokens", plan.max_tokens)
        if parts.rate is not None:
            await parts.rate.admit()
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(parts.pod_concurrency.slot())
            if parts.agent_concurrency is not None:
                await stack.enter_async_context(parts.agent_concurrency.slot())
            charge = await self._reserve(request, plan)
            parts.metrics.in_flight.inc()
            try:
                return await parts.relay.forward(request, plan, charge, call.started, call.span)
            finally:
                parts.metrics.in_flight.dec()

    async def _reserve(self, request: web.Request, plan: CallPlan) -> Charge:
        accountant = self.parts.accountant
        tokens, usd = plan.worst_case()
        try:
            return await accountant.reserve(tokens=tokens, usd_nanos=usd, run=plan.run)
        except ProxyRefusal:
            if plan.counted or not accountant.metering:
                raise
            if not await self.parts.planner.tighten(request, plan):
                raise
            tokens, usd = plan.worst_case()  # refused on the loose bound: try once more
            return await accountant.reserve(tokens=tokens, usd_nanos=usd, run=plan.run)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        planner = self.parts.planner
        raw, body = await planner.read_json(request)
        planner.check_model(body)
        return await self._pass_through(request, "POST", request.path, raw)

    async def models(self, request: web.Request) -> web.StreamResponse:
        return await self._pass_through(request, "GET", request.path_qs, None)

    async def _pass_through(
        self, request: web.Request, method: str, path: str, body: bytes | None
    ) -> web.Response:
        upstream = self.parts.upstream
        deadline = time.monotonic() + self.parts.request_timeout_seconds
        response = await upstream.request(
            method, path, body=body, headers=upstream.headers(request.headers), deadline=deadline
        )
        async with response:
            payload = await response.read()
        return web.Response(
            status=response.status, body=payload, headers=response_headers(response)
        )


@dataclass
class ProxyApps:
    api: web.Application
    admin: web.Application
    parts: ProxyParts


def create_proxy(max_body_bytes: int, parts: ProxyParts) -> ProxyApps:
    """The API and admin applications of one proxy (no globals; collaborators injected)."""
    handlers = ApiHandlers(parts)
    api = web.Application(client_max_size=max_body_bytes, middlewares=[refusal_middleware(parts)])
    api.router.add_post("/v1/messages", handlers.messages)
    api.router.add_post("/v1/messages/count_tokens", handlers.count_tokens)
    api.router.add_get("/v1/models", handlers.models)
    api.router.add_get("/v1/models/{model_id}", handlers.models)
    admin = web.Application()
    admin.router.add_get("/livez", parts.admin.livez)
    admin.router.add_get("/readyz", parts.admin.readyz)
    admin.router.add_get(
        "/metrics",
        metrics_handler(parts.admin.metrics.registry, refresh=parts.admin.refresh_budget_gauges),
    )
    admin.router.add_get("/kubeagents/budget", parts.admin.budget)
    return ProxyApps(api, admin, parts)
