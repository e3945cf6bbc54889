"""`kubeagents runtime` configuration (set by the Helm release; env prefix `KUBEAGENTS_RUNTIME_`,
lists as JSON). The system prompt comes from a mounted file (the release's ConfigMap)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from kubeagents.agent import AgentSettings, HttpBaseUrl, RedisUrl
from kubeagents.mcp import McpServer
from kubeagents.redis_settings import RedisSettings


class RuntimeSettings(RedisSettings, AgentSettings):
    """Configuration of the agent runtime."""

    model_config = SettingsConfigDict(env_prefix="KUBEAGENTS_RUNTIME_", extra="forbid")

    pod_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="This pod's name: the consumer name in the agent's stream.",
    )
    model: str = Field(min_length=1, description="The model the agent talks to.")
    system_prompt_file: Path | None = Field(
        default=None, description="File holding the system prompt (the mounted ConfigMap)."
    )
    max_tokens: int = Field(default=4096, ge=1, description="max_tokens of every model request.")
    mcp_servers: list[McpServer] = Field(
        default_factory=list, description="JSON list of the agent's MCP servers."
    )
    mcp_check_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often each connected MCP server's tools are listed again (a server "
        "that stops answering is reported down on /status and reconnected).",
    )
    tool_timeout_seconds: float = Field(default=60.0, gt=0, description="Bound of a tool call.")
    max_concurrent_tasks: int = Field(default=4, ge=1, description="Tasks run at once per pod.")
    task_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Bound of one attempt of a task (a retryable failure)."
    )
    max_turns: int = Field(default=20, ge=1, description="Model turns per task at most.")
    max_task_tokens: int = Field(
        default=200_000, ge=1, description="Tokens (input + output) per task at most."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts per task before it goes to the dead-letter stream."
    )
    backoff_base_seconds: float = Field(
        default=1.0, gt=0, description="First retry delay; doubled per attempt, with jitter."
    )
    backoff_max_seconds: float = Field(default=60.0, gt=0, description="Longest retry delay.")
    visibility_timeout_seconds: float = Field(
        default=60.0,
        ge=1.0,
        description="A task pending this long on a silent consumer (a dead pod) is reclaimed; "
        "a live pod renews its tasks every third of it.",
    )
    shutdown_grace_seconds: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long in-flight tasks may finish."
    )
    proxy_url: HttpBaseUrl = Field(
        default="http://127.0.0.1:8080", description="The pod's proxy (Anthropic API)."
    )
    readiness_url: HttpBaseUrl | None = Field(
        default=None,
        description="The probe's /readyz (in the pod: http://127.0.0.1:9091/readyz): while it "
        "is not 200, no task is pulled. Unset: no gate (a laptop without a probe).",
    )
    readiness_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the readiness gate is asked."
    )
    redis_url: RedisUrl = Field(
        default="redis://127.0.0.1:6379/0", description="Redis of the agent's queue."
    )
    host: str = Field(
        default="0.0.0.0",  # noqa: S104 - the kubelet and Prometheus reach the pod IP
        description="Address of /livez, /readyz, /metrics and the task API.",
    )
    port: int = Field(default=8081, ge=0, le=65535, description="Port of those endpoints.")
    task_api: bool = Field(
        default=True, description="Serve POST /v1/tasks and GET /v1/tasks/{id} on the port."
    )

    @model_validator(mode="after")
    def _consistent(self) -> RuntimeSettings:
        if self.system_prompt_file is not None and not self.system_prompt_file.is_file():
            raise ValueError(f"system_prompt_file: {self.system_prompt_file} is not a file")
        names = [server.name for server in self.mcp_servers]
        if len(set(names)) != len(names):
            raise ValueError(f"mcp_servers: names must be unique, not {names}")
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise ValueError("backoff_max_seconds must be at least backoff_base_seconds")
        return self

    def system_prompt(self) -> str:
        if self.system_prompt_file is None:
            return ""
        return self.system_prompt_file.read_text().strip()
