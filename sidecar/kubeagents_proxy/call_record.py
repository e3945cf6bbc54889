"""Recording a finished call: Prometheus metrics, the JSON log line and the span's attributes.

Recorded after the answer has been written (the relay schedules it on the loop's next turn),
so none of it delays the caller.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from kubeagents.logs import log_event
from kubeagents_proxy.errors import ProxyRefusal, refusal_label
from kubeagents_proxy.metrics import ProxyMetrics
from kubeagents_proxy.prices import Usage

log = logging.getLogger("kubeagents.proxy")


class CallRecorder:
    """Records every call of one proxy."""

    def __init__(self, metrics: ProxyMetrics, *, agent: str, allowed_models: frozenset[str]):
        self.metrics = metrics
        self.agent = agent
        self.allowed = allowed_models

    def answered(
        self,
        *,
        model: str,
        probe: bool,
        usage: Usage | None,
        outcome: str,
        started: float,
        upstream_seconds: float,
        tokens: int,
        usd_nanos: int,
    ) -> None:
        metrics = self.metrics
        metrics.requests.labels(model, outcome).inc()
        metrics.upstream_latency.labels(model).observe(upstream_seconds)
        if usage is not None:
            for kind, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cache_write", usage.cache_write_5m_tokens + usage.cache_write_1h_tokens),
                ("cache_read", usage.cache_read_tokens),
            ):
                if count:
                    metrics.tokens.labels(model, kind).inc(count)
            for tool, uses in (
                ("web_search", usage.web_search_requests),
                ("web_fetch", usage.web_fetch_requests),
            ):
                if uses:
                    metrics.server_tool_uses.labels(model, tool).inc(uses)
        if usd_nanos:
            metrics.cost.labels(model).inc(usd_nanos / 1e9)
        if probe:
            metrics.probe_calls.labels(outcome).inc()
        self.log_line(model, outcome, started, tokens=tokens, usd_nanos=usd_nanos, probe=probe)

    def refused(self, model: str, refusal: ProxyRefusal, started: float) -> None:
        self.metrics.refusals.labels(refusal_label(refusal)).inc()
        outcome = "timeout" if refusal.reason == "timeout" else "refused"
        self.metrics.requests.labels(model if model in self.allowed else "other", outcome).inc()
        self.log_line(model, outcome, started, refusal=refusal)

    def log_line(
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
        """One `call` event per call (`kubeagents.logs.log_event`); silenced with the
        `kubeagents.proxy` logger's level above INFO."""
        if not log.isEnabledFor(logging.INFO):
            return
        record: dict[str, Any] = {
            "agent": self.agent,
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
        log_event(log, "call", record)


def describe_call(span: trace.Span, usage: Usage | None, outcome: str) -> None:
    """GenAI semantic-convention attributes of a finished call."""
    if usage is not None:
        cache_write = usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_total)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cache_read_tokens)
        span.set_attribute("gen_ai.usage.cache_creation.input_tokens", cache_write)
    span.set_attribute("kubeagents.outcome", outcome)
    if outcome != "ok":
        span.set_attribute("error.type", outcome)
        span.set_status(Status(StatusCode.ERROR, outcome))


def describe_refusal(span: trace.Span, refusal: ProxyRefusal) -> None:
    span.set_attribute("error.type", refusal.error_type)
    span.set_status(Status(StatusCode.ERROR, refusal.message))
