"""`kubeagents proxy` configuration: every limit comes from here (set by the Helm release).

Environment variables carry the prefix `KUBEAGENTS_PROXY_`; list and map values are JSON.
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from kubeagents.agent import AgentSettings, HttpBaseUrl, RedisUrl
from kubeagents.redis_settings import RedisSettings
from kubeagents_proxy.prices import PriceOverride
from kubeagents_proxy.request_options import (
    DEFAULT_ALLOWED_BETAS,
    DEFAULT_INFERENCE_GEO_MULTIPLIERS,
)
from kubeagents_proxy.server_tools import ServerToolAllowance


class MaxTokensPolicy(StrEnum):
    REJECT = "reject"
    CLAMP = "clamp"


class ProxySettings(RedisSettings, AgentSettings):
    """Configuration of the LLM proxy sidecar."""

    model_config = SettingsConfigDict(env_prefix="KUBEAGENTS_PROXY_", extra="forbid")

    host: str = Field(
        default="127.0.0.1",
        description="Address of the Anthropic-compatible API; must be a loopback address so only "
        "containers of the pod can reach it.",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="Port of the API (0: any free).")
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - kubelet probes and Prometheus reach the pod IP
        description="Address of /metrics, /livez, /readyz and /kubeagents/budget.",
    )
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="Port of the metrics.")
    upstream_url: HttpBaseUrl = Field(
        default="https://api.anthropic.com", description="Base URL of the Anthropic API."
    )
    api_key: SecretStr | None = Field(
        default=None, description="The provider API key (prefer api_key_file)."
    )
    api_key_file: Path | None = Field(
        default=None,
        description="File holding the provider API key (a mounted Secret); read at start.",
    )
    allowed_models: list[str] = Field(
        min_length=1, description="JSON list of the model ids this agent may call."
    )
    max_tokens_per_call: int = Field(
        default=100_000, ge=1, description="Cap on input + output tokens of a single call."
    )
    max_tokens_policy: MaxTokensPolicy = Field(
        default=MaxTokensPolicy.REJECT,
        description="When max_tokens exceeds what the cap leaves after the input: reject (400) "
        "or clamp max_tokens down to it.",
    )
    max_concurrent_calls: int = Field(
        default=8, ge=1, description="Calls in flight at once in this pod."
    )
    concurrency_wait_seconds: float = Field(
        default=5.0, ge=0, description="How long a call waits for a free slot before a 429."
    )
    max_concurrent_calls_per_agent: int | None = Field(
        default=None, ge=1, description="Calls in flight at once across all replicas (Redis)."
    )
    request_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Total time of one call, retries included; then 504."
    )
    connect_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time to connect to the upstream."
    )
    stream_idle_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Longest silence of the upstream inside a call."
    )
    upstream_max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of 429/529/5xx answers within the deadline."
    )
    requests_per_minute: int | None = Field(
        default=None, ge=1, description="Calls per minute per agent, across replicas (Redis)."
    )
    budget_tokens_per_day: int | None = Field(
        default=None, ge=1, description="Rolling 24-hour token budget of the agent (Redis)."
    )
    budget_usd_per_day: Decimal | None = Field(
        default=None, gt=0, description="Rolling 24-hour budget of the agent in US dollars."
    )
    budget_fail_open: bool = Field(
        default=False,
        description="Let calls through unmetered while Redis is unreachable (default: 503).",
    )
    redis_url: RedisUrl | None = Field(
        default=None,
        description="Redis for budgets, per-agent concurrency and rates; required by those.",
    )
    prices: dict[str, PriceOverride] = Field(
        default_factory=dict,
        description='JSON map model -> {"input": USD/MTok, "output": ..., "cacheWrite5m": ..., '
        '"cacheWrite1h": ..., "cacheRead": ..., "longContext": {"thresholdTokens": N, "input": '
        '..., "output": ...}, "fastMultiplier": x} overriding the built-in price table (a '
        "model is priced by its exact id only).",
    )
    allowed_server_tools: dict[str, ServerToolAllowance] = Field(
        default_factory=dict,
        description='JSON map server-tool family -> {"maxTokensPerUse": N, "usdPerUse": x, '
        '"maxUses": N}: the server-side tools (web_search, web_fetch, code_execution, ...) a '
        "call may use, each with the bound that enters its reservation. Tools not listed, "
        "mcp_servers and container are refused (400).",
    )
    allowed_betas: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_BETAS),
        description="JSON list of the anthropic-beta values a call may send; others are "
        "refused (400). Default: the betas the proxy knows not to change bounds or prices.",
    )
    inference_geo_multipliers: dict[str, Decimal] = Field(
        default_factory=lambda: dict(DEFAULT_INFERENCE_GEO_MULTIPLIERS),
        description="JSON map inference_geo value -> price multiplier; under a dollar budget "
        "a value not listed is refused (400).",
    )
    accept_eviction_risk: bool = Field(
        default=False,
        description="Meter budgets even when Redis may evict the ledger's keys (maxmemory-policy "
        "not noeviction, or unreadable). Off: the proxy refuses to meter (503, not ready).",
    )
    durable_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Replicas that must acknowledge a reservation (Redis WAIT) before the call "
        "goes upstream; 0: do not wait. Fails closed (503) when fewer acknowledge in time.",
    )
    durable_timeout_ms: int = Field(
        default=100,
        ge=1,
        le=4_000,
        description="How long WAIT waits for the replicas (below the 5 s Redis command timeout).",
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest request body accepted (413)."
    )
    reservation_grace_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A reservation outlives the request timeout by this much before an "
        "unsettled one is charged in full.",
    )

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, host: str) -> str:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ValueError(f"{host} is not a loopback address; the API must stay in the pod")
        return host

    @model_validator(mode="after")
    def _consistent(self) -> ProxySettings:
        if self.api_key is None and self.api_key_file is None:
            raise ValueError("set api_key_file (or api_key): the proxy holds the only API key")
        needs_redis = [
            name
            for name, value in (
                ("budget_tokens_per_day", self.budget_tokens_per_day),
                ("budget_usd_per_day", self.budget_usd_per_day),
                ("max_concurrent_calls_per_agent", self.max_concurrent_calls_per_agent),
                ("requests_per_minute", self.requests_per_minute),
            )
            if value is not None
        ]
        if needs_redis and not self.redis_url:
            raise ValueError(f"redis_url is required by {', '.join(needs_redis)}")
        for geo, multiplier in self.inference_geo_multipliers.items():
            if not multiplier >= 1:
                raise ValueError(
                    f"inference_geo_multipliers[{geo}]: must be >= 1, not {multiplier}"
                )
        if self.durable_replicas and not self.redis_url:
            raise ValueError("durable_replicas needs redis_url")
        return self

    def read_api_key(self) -> str:
        """The provider key: the file's content (stripped) when set, else `api_key`."""
        if self.api_key_file is not None:
            key = self.api_key_file.read_text().strip()
            if not key:
                raise ValueError(f"api_key_file {self.api_key_file} is empty")
            return key
        assert self.api_key is not None  # guaranteed by _consistent
        return self.api_key.get_secret_value()

    @property
    def budgets_enabled(self) -> bool:
        return self.budget_tokens_per_day is not None or self.budget_usd_per_day is not None
