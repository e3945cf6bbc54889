"""The runtime's Prometheus metrics, on a registry of its own (names in docs/architecture.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.tasks = Counter(
            "kubeagents_runtime_tasks",
            "Attempts of tasks by outcome: succeeded, failed (permanent), retried, dead.",
            ["outcome"],
            registry=r,
        )
        self.task_duration = Histogram(
            "kubeagents_runtime_task_duration_seconds",
            "Duration of each attempt of a task.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.model_turns = Counter(
            "kubeagents_runtime_model_turns", "Model turns (requests) made.", registry=r
        )
        self.tool_calls = Counter(
            "kubeagents_runtime_tool_calls",
            "Tool calls by tool and outcome (ok, error).",
            ["tool", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "kubeagents_runtime_retries", "Attempts scheduled again after a failure.", registry=r
        )
        self.dead_letters = Counter(
            "kubeagents_runtime_dead_letters",
            "Tasks moved to the dead-letter stream.",
            registry=r,
        )
        self.reclaimed = Counter(
            "kubeagents_runtime_reclaimed",
            "Tasks taken over from a consumer that stopped renewing them.",
            registry=r,
        )
        self.in_flight = Gauge(
            "kubeagents_runtime_tasks_in_flight", "Tasks running in this pod.", registry=r
        )
        self.queue_pending = Gauge(
            "kubeagents_runtime_queue_pending",
            "Messages delivered to a consumer of the agent's group and not acknowledged yet.",
            registry=r,
        )
        self.queue_lag = Gauge(
            "kubeagents_runtime_queue_lag",
            "Messages in the agent's stream not yet delivered to any consumer.",
            registry=r,
        )
        self.ready_gate = Gauge(
            "kubeagents_runtime_ready_gate",
            "1 while the probe says Ready and the runtime pulls tasks.",
            registry=r,
        )
        self.mcp_server_up = Gauge(
            "kubeagents_runtime_mcp_server_up",
            "1 while the MCP server is connected (its tools are offered to the model).",
            ["server"],
            registry=r,
        )
