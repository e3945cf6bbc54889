"""`kubeagents fake-anthropic` configuration (env prefix `KUBEAGENTS_FAKE_ANTHROPIC_`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeagents.fake_anthropic.compression import CompressionMode


class Answer(BaseModel):
    """A canned answer: when nothing is scripted, a request whose text matches `pattern` gets
    `text` (with `\\1`-style references to the pattern's groups expanded)."""

    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(
        min_length=1,
        description="A regular expression searched in the request's system prompt and last "
        "user message (joined by a newline).",
    )
    text: str = Field(description="The reply text; `\\1` or `\\g<name>` insert groups.")
    latency_ms: float | None = Field(
        default=None,
        ge=0,
        description="Time to first byte of this answer; None: the server's `latency_ms`.",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from None
        return value


class FakeAnthropicSettings(BaseSettings):
    """Configuration of the fake Anthropic Messages API process."""

    model_config = SettingsConfigDict(env_prefix="KUBEAGENTS_FAKE_ANTHROPIC_")

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(
        default=8787,
        ge=0,
        le=65535,
        description="TCP port to listen on; 0 picks a free port (the listening line names it).",
    )
    api_key: str | None = Field(
        default=None,
        description="The only API key accepted (x-api-key or Authorization: Bearer); "
        "unset accepts any non-empty key. Other keys get 401 authentication_error.",
    )
    latency_ms: float = Field(
        default=0,
        ge=0,
        description="Base time to first byte of every /v1/messages reply, in milliseconds "
        "(a script entry can override it).",
    )
    event_delay_ms: float = Field(
        default=0,
        ge=0,
        description="Delay before each stream event after the first, in milliseconds "
        "(a script entry can override it).",
    )
    default_text: str = Field(
        default="Hello from the fake Anthropic API.",
        description="The reply text when nothing is programmed.",
    )
    answers: list[Answer] = Field(
        default_factory=list,
        description="Canned answers (JSON list of {pattern, text}), tried in order when the "
        "script is empty, before the default reply: they let the fake stand in for the model "
        "in demos and in-cluster tests (a probe's validator question, a step that must answer "
        "JSON).",
    )
    max_recorded: int = Field(
        default=10_000,
        ge=0,
        description="How many recent requests the fake remembers for GET /_fake/requests "
        "(0 records nothing, for long benchmarks).",
    )
    compression: CompressionMode = Field(
        default="auto",
        description="Compression of /v1/* responses, like a CDN: auto (gzip, or br when "
        "available, when Accept-Encoding allows it), off (never), always (gzip even when the "
        "client did not offer it).",
    )
    sse_framing: Literal["lf", "crlf-compact"] = Field(
        default="lf",
        description="Framing of streamed events: lf (Anthropic's: LF line ends, `data: ` with a "
        "space) or crlf-compact (CRLF line ends, `data:` without the space, as other "
        "spec-compliant servers and gateways may send).",
    )
    access_log: bool = Field(
        default=False, description="Log every request to stderr (off: the hot path stays cheap)."
    )

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_unset(cls, value: str | None) -> str | None:
        return value or None
