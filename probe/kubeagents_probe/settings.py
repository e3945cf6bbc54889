"""`kubeagents probe` configuration (set by the Helm release).

Environment variables carry the prefix `KUBEAGENTS_PROBE_`; list values are JSON. Every setting
is checked at start: a bad expectation (unknown kind, a regex that does not compile, a JSON
schema that is not valid) stops the probe with a message naming the setting.
"""

from __future__ import annotations

import json
import re
import socket
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from kubeagents.agent import AgentSettings, HttpBaseUrl, RedisUrl
from kubeagents.redis_settings import RedisSettings


class ExpectKind(StrEnum):
    """How the validator's reply is judged."""

    EXACT = "exact"  # the reply, stripped, equals the value
    CONTAINS = "contains"  # the value occurs in the reply
    REGEX = "regex"  # re.search(value, reply) finds a match
    JSON_SCHEMA = "jsonSchema"  # the reply is JSON valid against the schema in value
    JUDGE = "judge"  # a second model call grades the reply against the rubric in value


class ProbeSettings(RedisSettings, AgentSettings):
    """Configuration of the semantic-probe sidecar."""

    model_config = SettingsConfigDict(env_prefix="KUBEAGENTS_PROBE_", extra="forbid")

    pod_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="This pod's name (default: the host name, which Kubernetes sets to it).",
    )
    host: str = Field(
        default="0.0.0.0",  # noqa: S104 - the kubelet probes the pod IP
        description="Address of /readyz, /livez, /status and /metrics.",
    )
    port: int = Field(default=9091, ge=0, le=65535, description="Port of the endpoints.")
    proxy_url: HttpBaseUrl = Field(
        default="http://127.0.0.1:8080", description="The pod's proxy API (model calls)."
    )
    proxy_admin_url: HttpBaseUrl = Field(
        default="http://127.0.0.1:9090",
        description="The pod's proxy admin port (/readyz, /kubeagents/budget).",
    )
    model: str = Field(min_length=1, description="Model of the validator call.")
    system_prompt: str = Field(
        default="You are a health check. Follow the instruction exactly.",
        description="System prompt of the validator call.",
    )
    prompt: str = Field(
        default="Reply with exactly the word READY and nothing else.",
        min_length=1,
        description="The validator question (the user message).",
    )
    max_tokens: int = Field(
        default=16, ge=1, le=4096, description="max_tokens of the validator call."
    )
    expect: ExpectKind = Field(
        default=ExpectKind.CONTAINS,
        description="How the reply is judged: exact, contains, regex, jsonSchema or judge.",
    )
    expect_value: str = Field(
        default="READY",
        min_length=1,
        description="The text (exact, contains), pattern (regex), JSON schema (jsonSchema) or "
        "rubric (judge) the reply is judged by.",
    )
    judge_model: str | None = Field(
        default=None, description="Model of the grading call (expect=judge; default: model)."
    )
    judge_max_tokens: int = Field(
        default=8, ge=1, le=1024, description="max_tokens of the grading call."
    )
    interval_seconds: float = Field(
        default=60.0,
        ge=1.0,
        description="The semantic check runs once per interval (per agent when shared).",
    )
    jitter_ratio: float = Field(
        default=0.1, ge=0.0, le=0.5, description="Random spread of every schedule (± ratio)."
    )
    timeout_seconds: float = Field(
        default=15.0, gt=0, description="Bound of each check (a model call, a path check)."
    )
    failure_threshold: int = Field(
        default=3, ge=1, description="Consecutive failures that make a passing check fail."
    )
    success_threshold: int = Field(
        default=1, ge=1, description="Consecutive passes that make a failing check pass again."
    )
    verdict_ttl_seconds: float | None = Field(
        default=None,
        gt=0,
        description="A semantic verdict older than this counts as unknown (NotReady); "
        "default: 2 x interval + timeout.",
    )
    startup_grace_seconds: float = Field(
        default=60.0,
        ge=0,
        description="After start, checks without a first result report 'starting' rather "
        "than a failure.",
    )
    shared: bool = Field(
        default=True,
        description="Run the semantic check once per interval per agent (one pod takes a "
        "Redis lock, the others read its verdict) instead of once per pod.",
    )
    redis_url: RedisUrl | None = Field(
        default=None, description="Redis of the shared verdict; required when shared."
    )
    path_interval_seconds: float = Field(
        default=10.0,
        ge=0.2,
        description="How often the token-free path checks run in this pod.",
    )
    check_key: bool = Field(
        default=True,
        description="Check that the provider accepts the key (count_tokens, no token cost).",
    )
    check_budget: bool = Field(
        default=True, description="Check that the agent's budget is not exhausted."
    )
    check_mcp: bool = Field(
        default=False,
        description="Check that every MCP server of the agent is up, as the runtime reports "
        "it on runtime_status_url (the chart turns it on when the agent has MCP servers).",
    )
    runtime_status_url: HttpBaseUrl = Field(
        default="http://127.0.0.1:8081/status",
        description="The pod's runtime status endpoint (GET /status on the runtime's port).",
    )
    history: int = Field(
        default=50, ge=1, le=10_000, description="How many check results /status keeps."
    )

    @field_validator("expect_value")
    @classmethod
    def _expectation(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("expect")
        if kind is ExpectKind.REGEX:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regex ({error})") from None
        elif kind is ExpectKind.JSON_SCHEMA:
            from jsonschema import Draft202012Validator  # only when used: every process's
            from jsonschema.exceptions import SchemaError  # CLI imports this module

            try:
                Draft202012Validator.check_schema(parse_schema(value))
            except SchemaError as error:
                raise ValueError(f"not a valid JSON schema ({error.message})") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ProbeSettings:
        if self.shared and not self.redis_url:
            raise ValueError(
                "redis_url is required when shared is true (or set shared=false to run the "
                "semantic check in every pod)"
            )
        if self.verdict_ttl_seconds is not None and self.verdict_ttl_seconds <= (
            self.interval_seconds
        ):
            raise ValueError(
                f"verdict_ttl_seconds ({self.verdict_ttl_seconds:g}) must be longer than "
                f"interval_seconds ({self.interval_seconds:g})"
            )
        return self

    @property
    def verdict_ttl(self) -> float:
        if self.verdict_ttl_seconds is not None:
            return self.verdict_ttl_seconds
        return 2 * self.interval_seconds + self.timeout_seconds

    @property
    def grader_model(self) -> str:
        return self.judge_model or self.model

    def semantic_check_definition(self) -> dict[str, object]:
        """What the semantic check asks and how it judges: pods share a verdict only when this
        is equal (shared_verdict.check_digest)."""
        return {
            "model": self.model,
            "system_prompt": self.system_prompt,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "expect": str(self.expect),
            "expect_value": self.expect_value,
            "judge_model": self.grader_model,
            "judge_max_tokens": self.judge_max_tokens,
        }

    @property
    def verdict_poll_seconds(self) -> float:
        """How often a pod reads the shared verdict (and claims the check when it is due)."""
        return max(0.2, min(5.0, self.interval_seconds / 4))


def parse_schema(value: str) -> Any:
    """The JSON schema of a jsonSchema expectation (checked at start by ProbeSettings)."""
    try:
        return json.loads(value)
    except ValueError as error:
        raise ValueError(f"the JSON schema is not JSON ({error})") from None
