"""The operator's Prometheus metrics, on a registry of its own (names in docs/architecture.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "kubeagents_operator_runs",
            "Runs that ended, by team and phase (Succeeded, Failed, Cancelled).",
            ["team", "phase"],
            registry=r,
        )
        self.steps = Counter(
            "kubeagents_operator_steps",
            "Step transitions, by phase (Running, Retrying, Succeeded, Failed, Skipped).",
            ["phase"],
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "kubeagents_operator_dispatch_latency_seconds",
            "From the operator seeing a step's completion to the tasks it made ready being queued.",
            buckets=DISPATCH_BUCKETS,
            registry=r,
        )
        self.run_duration = Histogram(
            "kubeagents_operator_run_duration_seconds",
            "Duration of runs that ended, from the operator starting to drive them.",
            ["team"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.run_cost = Counter(
            "kubeagents_operator_run_cost_usd",
            "US dollars the proxies metered for runs that ended, by team.",
            ["team"],
            registry=r,
        )
