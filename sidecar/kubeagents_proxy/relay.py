"""Relaying a reserved call upstream and back, and deciding what it is charged.

The answer goes back untouched (status, headers, body), a stream chunk by chunk as it arrives,
never buffered. What the call is charged (docs/proxy.md, "Why the budget cannot overshoot"):

| what happened | charged |
|---|---|
| 200 with usage (a whole message, or a stream that reached `message_stop`) | the usage |
| 200 without readable usage; a stream cut short (client gone, upstream broke, timeout) | in full |
| the connection could not be made (nothing was sent) | nothing |
| the connection broke after the request was sent; the total timeout | in full |
| a 5xx other than 529 (the model may have worked), each attempt | in full |
| a 4xx (429 included) or a 529 (refusals: nothing was done) | nothing |

"In full" is the reservation: the call's worst case. Never charging less than could have been
used is the rule.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from contextlib import suppress

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kubeagents_proxy.accounting import Accountant, Charge
from kubeagents_proxy.call_record import CallRecorder, describe_call
from kubeagents_proxy.errors import UpstreamTimeout, UpstreamUnavailable
from kubeagents_proxy.metrics import ProxyMetrics
from kubeagents_proxy.planning import CallPlan, CallPricing
from kubeagents_proxy.prices import Usage
from kubeagents_proxy.stream_usage import StreamUsage
from kubeagents_proxy.upstream import BILLED_ERROR_STATUSES, Upstream, response_headers

PROPAGATOR = TraceContextTextMapPropagator()


class Relay:
    """Sends planned, reserved calls upstream and settles them."""

    def __init__(
        self,
        *,
        upstream: Upstream,
        accountant: Accountant,
        pricing: CallPricing,
        recorder: CallRecorder,
        metrics: ProxyMetrics,
        request_timeout_seconds: float,
    ) -> None:
        self.upstream = upstream
        self.accountant = accountant
        self.pricing = pricing
        self.recorder = recorder
        self.metrics = metrics
        self.timeout = request_timeout_seconds

    async def forward(
        self,
        request: web.Request,
        plan: CallPlan,
        charge: Charge,
        started: float,
        span: trace.Span | None,
    ) -> web.StreamResponse:
        deadline = started + self.timeout
        headers = self.upstream.headers(request.headers)
        if span is not None and span.get_span_context().is_valid:
            PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))

        async def before_retry(status: int) -> bool:
            if status in BILLED_ERROR_STATUSES:
                return await self.accountant.retry_after_billed_failure(charge)
            return True

        sent_at = time.monotonic()
        try:
            upstream = await self.upstream.request(
                "POST",
                "/v1/messages",
                body=plan.raw,
                headers=headers,
                deadline=deadline,
                before_retry=before_retry,
            )
        except UpstreamUnavailable as error:
            if error.sent:
                self.accountant.settle_in_full(charge)
            else:
                self.accountant.settle(charge, tokens=0, usd_nanos=0)  # nothing was sent
            raise
        except UpstreamTimeout:
            self.accountant.settle_in_full(charge)
            raise
        self.metrics.time_to_first_token.labels(plan.model).observe(time.monotonic() - sent_at)
        call = _Call(self, plan, charge, started, sent_at, span)
        if upstream.status != 200 or not plan.stream:
            return await call.relay_whole(upstream, deadline)
        return await call.relay_stream(request, upstream, deadline)


class _Call:
    """One call being relayed: the plan, what it holds, and how to record it."""

    def __init__(
        self,
        relay: Relay,
        plan: CallPlan,
        charge: Charge,
        started: float,
        sent_at: float,
        span: trace.Span | None,
    ) -> None:
        self.relay = relay
        self.plan = plan
        self.charge = charge
        self.started = started
        self.sent_at = sent_at
        self.span = span

    async def relay_whole(self, upstream: aiohttp.ClientResponse, deadline: float) -> web.Response:
        try:
            async with upstream, asyncio.timeout(max(0.0, deadline - time.monotonic())):
                payload = await upstream.read()
        except TimeoutError:
            self.relay.accountant.settle_in_full(self.charge)
            raise UpstreamTimeout(
                "upstream answer did not complete within the request timeout"
            ) from None
        except aiohttp.ClientError as error:
            self.relay.accountant.settle_in_full(self.charge)
            raise UpstreamUnavailable(
                f"the upstream answer broke off: {error!r}", sent=True
            ) from None
        status = upstream.status
        if status == 200:
            self.finish(_usage_of(payload), "ok")
        elif status in BILLED_ERROR_STATUSES:
            self.finish(None, "upstream_error")
        else:
            self.finish(Usage(), "upstream_error")
        return web.Response(status=status, body=payload, headers=response_headers(upstream))

    async def relay_stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, deadline: float
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
                    await _write_stream_error(response, "timeout_error", "request timeout")
                except ConnectionResetError:  # before ClientError: the client went away
                    outcome = "client_disconnect"
                except aiohttp.ClientError:
                    outcome = "upstream_error"
                    await _write_stream_error(response, "api_error", "upstream stream broke")
        except ConnectionResetError:
            outcome = "client_disconnect"
        if outcome == "ok" and not parser.saw_message_stop:
            outcome = "upstream_error"
        complete = outcome == "ok" and parser.saw_usage
        self.finish(parser.usage if complete else None, outcome)
        return response

    def finish(self, usage: Usage | None, outcome: str) -> None:
        """Settle and record the call. `usage=None`: unknown, so it is charged in full.

        The settlement runs as its own task; metrics and the log line are recorded on the
        loop's next turn, after the answer has been written, so neither delays the caller."""
        relay = self.relay
        plan = self.plan
        if usage is None:
            tokens, usd = self.charge.tokens, self.charge.usd_nanos or 0
        else:
            tokens, usd = usage.total_tokens, relay.pricing.usd_nanos(plan, usage)
        relay.accountant.settle(self.charge, tokens=tokens, usd_nanos=usd)
        if self.span is not None:
            describe_call(self.span, usage, outcome)
        record = functools.partial(
            relay.recorder.answered,
            model=plan.model,
            probe=plan.probe,
            usage=usage,
            outcome=outcome,
            started=self.started,
            upstream_seconds=time.monotonic() - self.sent_at,
            tokens=tokens,
            usd_nanos=usd,
        )
        asyncio.get_running_loop().call_soon(record)


def _usage_of(payload: bytes) -> Usage | None:
    """The usage of a 200 message, or None when it has none (charged in full)."""
    try:
        usage = json.loads(payload).get("usage")
    except (ValueError, AttributeError):
        return None
    if not isinstance(usage, dict) or not usage:
        return None
    return Usage.from_anthropic(usage)


async def _write_stream_error(response: web.StreamResponse, error_type: str, message: str) -> None:
    event = json.dumps({"type": "error", "error": {"type": error_type, "message": message}})
    with suppress(ConnectionResetError):
        await response.write(f"event: error\ndata: {event}\n\n".encode())
