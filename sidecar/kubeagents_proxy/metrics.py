"""The proxy's Prometheus metrics, on a registry of its own (injected, no globals).

Labels are low-cardinality only: the model (from the allow-list), an outcome, a refusal reason,
a token type, a budget kind.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ProxyMetrics:
    """Every metric the proxy exports (names in docs/architecture.md)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kubeagents_proxy_requests",
            "Model calls by model and outcome (ok, upstream_error, refused, timeout, "
            "client_disconnect).",
            ["model", "outcome"],
            registry=r,
        )
        self.refusals = Counter(
            "kubeagents_proxy_refusals",
            "Calls the proxy refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.tokens = Counter(
            "kubeagents_proxy_tokens",
            "Tokens billed by the upstream, by model and type (input, output, cache_write, "
            "cache_read).",
            ["model", "type"],
            registry=r,
        )
        self.server_tool_uses = Counter(
            "kubeagents_proxy_server_tool_uses",
            "Uses of server-side tools the upstream reported, by model and tool (web_search, "
            "web_fetch).",
            ["model", "tool"],
            registry=r,
        )
        self.cost = Counter(
            "kubeagents_proxy_cost_usd", "US dollars spent, by model.", ["model"], registry=r
        )
        self.probe_calls = Counter(
            "kubeagents_proxy_probe_calls",
            "Calls marked as semantic-probe calls, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.budget = Gauge(
            "kubeagents_proxy_budget",
            "The agent's rolling 24h budget by kind (tokens, usd) and state (limit, used, "
            "reserved, remaining).",
            ["kind", "state"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "kubeagents_proxy_upstream_duration_seconds",
            "Time from sending a call upstream to the end of its answer, by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "kubeagents_proxy_time_to_first_byte_seconds",
            "Time from sending a call upstream to the first byte of its answer, by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "kubeagents_proxy_in_flight_calls", "Calls in flight in this proxy.", registry=r
        )
        self.settlements_pending = Gauge(
            "kubeagents_proxy_settlements_pending",
            "Reconciliations waiting for Redis to come back.",
            registry=r,
        )
