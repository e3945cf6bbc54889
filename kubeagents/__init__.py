"""kubeagents: AI agents on Kubernetes with budgets, semantic readiness and team runs."""

__version__ = "0.1.0"
