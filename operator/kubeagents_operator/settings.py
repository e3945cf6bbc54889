"""`kubeagents operator` configuration (env prefix `KUBEAGENTS_OPERATOR_`)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from kubeagents.agent import NAMESPACE_PATTERN, RedisUrl
from kubeagents.redis_settings import RedisSettings


class OperatorSettings(RedisSettings):
    """Configuration of the team-run operator."""

    model_config = SettingsConfigDict(env_prefix="KUBEAGENTS_OPERATOR_", extra="forbid")

    watch_namespaces: list[str] = Field(
        default_factory=list,
        description="JSON list of the namespaces whose AgentTeams and AgentRuns it drives; "
        "empty: every namespace.",
    )
    redis_url: RedisUrl = Field(
        default="redis://127.0.0.1:6379/0",
        description="The Redis of the agents' task queues and of the run budgets.",
    )
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - the kubelet and Prometheus reach the pod IP
        description="Address of /livez, /readyz and /metrics.",
    )
    metrics_port: int = Field(default=9092, ge=0, le=65535, description="Port of those endpoints.")
    output_max_chars: int = Field(
        default=4096,
        ge=64,
        description="A step's output in the run's status is cut past this many characters; the "
        "full text stays in the task's result in Redis.",
    )
    leader_election: bool = Field(
        default=False,
        description="Drive runs only while holding the Lease `lease_name` (coordination.k8s.io), "
        "so that of several replicas exactly one works and another takes over when it dies.",
    )
    lease_name: str = Field(default="kubeagents-operator", description="Name of that Lease.")
    lease_namespace: str = Field(
        default="",
        description="Namespace of that Lease; empty: the pod's own namespace (the service "
        "account's namespace file).",
    )
    lease_duration_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How long a Lease not renewed stays held: the longest a dead leader blocks "
        "its successor. It is renewed every third of that.",
    )
    identity: str = Field(
        default="",
        description="This replica's name in the Lease (`holderIdentity`); empty: the host name "
        "(in a pod: the pod's name) and the process id.",
    )
    wait_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest wait for a completion before a run's state is checked again "
        "(completions wake it at once).",
    )

    @field_validator("watch_namespaces")
    @classmethod
    def _namespaces(cls, namespaces: list[str]) -> list[str]:
        for namespace in namespaces:
            if not re.fullmatch(NAMESPACE_PATTERN, namespace):
                raise ValueError(f"{namespace!r} is not a namespace name")
        return namespaces
