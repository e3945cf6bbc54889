"""The probe's Prometheus metrics, on a registry of its own (names in docs/architecture.md).

The `check` label takes the configured checks only: `semantic`, `proxy`, `key`, `budget` and
`mcp:<server>` for each configured MCP server.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ProbeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ready = Gauge(
            "kubeagents_probe_ready",
            "1 when every check passes (what /readyz answers).",
            registry=r,
        )
        self.check_success = Gauge(
            "kubeagents_probe_check_success",
            "1 when the check passes (after hysteresis), 0 when it fails or has no result yet.",
            ["check"],
            registry=r,
        )
        self.consecutive_failures = Gauge(
            "kubeagents_probe_consecutive_failures",
            "Consecutive failed runs of the check.",
            ["check"],
            registry=r,
        )
        self.check_duration = Histogram(
            "kubeagents_probe_check_duration_seconds",
            "Duration of each check this pod ran.",
            ["check"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.model_calls = Counter(
            "kubeagents_probe_model_calls",
            "Model calls this pod made: kind semantic or judge; outcome ok or the failure reason.",
            ["kind", "outcome"],
            registry=r,
        )
        self.tokens = Counter(
            "kubeagents_probe_tokens",
            "Tokens spent by this pod's probe calls, by type (input, output).",
            ["type"],
            registry=r,
        )
        self.verdict_age = Gauge(
            "kubeagents_probe_verdict_age_seconds",
            "Age of the semantic verdict this pod holds (shared or its own).",
            registry=r,
        )
