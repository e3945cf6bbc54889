"""The script of the fake Anthropic API: programmed replies and errors, as JSON-serialisable models.

A test programs the fake with a FIFO of script entries (see `control.py`). Each request to
`POST /v1/messages` consumes the next entry; when the script is empty, the default entry is used.
An entry is either

- a `Reply` (`"kind": "reply"`): content blocks (text and tool calls), optional token counts,
  server-tool use and the input tokens the server tools added, stop reason, latency before the
  first byte, delay between stream events, optionally an `error` event injected into a stream
  after N events, and the fault `omit_usage` (a 200 without usage); or
- an `ErrorReply` (`"kind": "error"`): an HTTP error in Anthropic's error shape, with any status,
  an optional `retry-after` header and extra headers; or
- a `Drop` (`"kind": "drop"`): the fake reads the whole request, then closes the TCP connection
  without a response (`"after": "request"`) or right after 200 headers (`"after": "headers"`).

Billing (see `billing.py`): a `Reply` answered with 200 bills its usage; an `ErrorReply` bills
nothing unless `billed` is true, and a `Drop` bills unless `billed` is false. A billed error or
drop bills the input estimate of the body plus `billed_output_tokens` (a 5xx or a lost
connection after the provider has billed).

Every entry has `times` (default 1): how many requests it answers before it leaves the script.
Models reject unknown fields, so a typo is a 400 from the control API, not a silent default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]

# Anthropic's error type for each HTTP status it uses; other statuses fall back by class.
ERROR_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# The HTTP status the API answers with for an error type (used when a stream error is scripted
# for a request that did not stream, and to pick the error type's status in general).
STATUS_BY_ERROR_TYPE: dict[str, int] = {
    kind: status for status, kind in ERROR_TYPE_BY_STATUS.items()
}

DEFAULT_ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of requests has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out",
    "overloaded_error": "Overloaded",
}


def error_type_for_status(status: int) -> str:
    """Anthropic's error `type` for an HTTP status."""
    known = ERROR_TYPE_BY_STATUS.get(status)
    if known is not None:
        return known
    return "api_error" if status >= 500 else "invalid_request_error"


def status_for_error_type(error_type: str) -> int:
    """The HTTP status Anthropic answers with for an error `type` (500 when unknown)."""
    return STATUS_BY_ERROR_TYPE.get(error_type, 500)


def default_error_message(error_type: str) -> str:
    return DEFAULT_ERROR_MESSAGES.get(error_type, "Error")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextBlock(_Strict):
    """A `text` content block of the reply."""

    type: Literal["text"] = "text"
    text: str = Field(description="The text; streamed as several `text_delta` chunks.")


class ToolUseBlock(_Strict):
    """A `tool_use` content block: the model calls a client tool."""

    type: Literal["tool_use"] = "tool_use"
    name: str = Field(min_length=1, description="The tool's name.")
    input: dict[str, Any] = Field(
        default_factory=dict, description="The tool input; streamed as `input_json_delta`s."
    )
    id: str | None = Field(
        default=None, description='The block id; a fresh "toolu_..." id per request when None.'
    )


ContentBlock = Annotated[TextBlock | ToolUseBlock, Field(discriminator="type")]


class ServerToolUse(_Strict):
    """How many server-tool requests (web search, web fetch) a reply reports in its usage."""

    web_search_requests: int = Field(default=0, ge=0)
    web_fetch_requests: int = Field(default=0, ge=0)


class StreamError(_Strict):
    """An `error` event sent in a 200 stream after `after_events` events; the stream then ends.

    Events are counted from `message_start`, pings included; the count is capped so that the
    error always comes before `message_stop`. For a request that did not ask to stream, the same
    error is answered as an HTTP error with the status of its type (e.g. 529 for
    `overloaded_error`), after the reply's latency.
    """

    after_events: int = Field(
        default=1, ge=0, description="How many stream events are sent before the error event."
    )
    error_type: str = Field(default="overloaded_error", min_length=1)
    message: str | None = Field(default=None, description="Defaults to the type's usual text.")


class Reply(_Strict):
    """A successful reply to `POST /v1/messages`."""

    kind: Literal["reply"] = "reply"
    content: list[ContentBlock] | None = Field(
        default=None,
        description="The content blocks; None means one text block with the server's default text.",
    )
    stop_reason: StopReason | None = Field(
        default=None,
        description='None derives it: "tool_use" when a tool_use block is present, else '
        '"end_turn". Truncation by max_tokens or a stop sequence always wins.',
    )
    stop_sequence: str | None = Field(
        default=None, description='Reported when stop_reason is "stop_sequence".'
    )
    input_tokens: int | None = Field(
        default=None, ge=0, description="Overrides the estimate from the request body."
    )
    output_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Overrides the estimate from the content (capped by max_tokens).",
    )
    cache_creation_input_tokens: int = Field(default=0, ge=0)
    cache_read_input_tokens: int = Field(default=0, ge=0)
    server_tool_use: ServerToolUse | None = Field(
        default=None,
        description="Server-tool requests reported in usage.server_tool_use (absent when None); "
        "in a stream, message_start reports 0 of each and message_delta the totals.",
    )
    server_tool_input_tokens: int = Field(
        default=0,
        ge=0,
        description="Input tokens the upstream's own tool loop added (search results, fetched "
        "pages): added to the reported (and billed) input_tokens on top of the estimate or "
        "override; in a stream only message_delta's cumulative input_tokens has them. "
        "count_tokens never includes them.",
    )
    omit_usage: bool = Field(
        default=False,
        description="A fault: the message (or message_start and message_delta) carries no "
        "usage at all. The reply is still billed.",
    )
    latency_ms: float | None = Field(
        default=None, ge=0, description="Time to first byte; None uses the server's latency_ms."
    )
    event_delay_ms: float | None = Field(
        default=None,
        ge=0,
        description="Delay before each stream event after the first; None uses the server's.",
    )
    chunk_chars: int = Field(
        default=16, ge=1, description="Characters per text_delta / input_json_delta chunk."
    )
    stream_error: StreamError | None = None
    times: int = Field(default=1, ge=1, description="How many requests this entry answers.")

    @classmethod
    def with_text(cls, text: str, **fields: Any) -> Self:
        """A reply with one text block."""
        return cls(content=[TextBlock(text=text)], **fields)

    @classmethod
    def with_tool_use(
        cls,
        name: str,
        tool_input: dict[str, Any] | None = None,
        *,
        text: str | None = None,
        tool_id: str | None = None,
        **fields: Any,
    ) -> Self:
        """A reply that calls one tool, optionally preceded by a text block."""
        blocks: list[TextBlock | ToolUseBlock] = [] if text is None else [TextBlock(text=text)]
        blocks.append(ToolUseBlock(name=name, input=tool_input or {}, id=tool_id))
        return cls(content=list(blocks), **fields)


class ErrorReply(_Strict):
    """An HTTP error in Anthropic's shape: `{"type":"error","error":{...},"request_id":...}`."""

    kind: Literal["error"] = "error"
    status: int = Field(ge=400, le=599, description="The HTTP status.")
    error_type: str | None = Field(
        default=None, min_length=1, description="error.type; None derives it from the status."
    )
    message: str | None = Field(default=None, description="error.message; None uses a default.")
    retry_after: float | None = Field(
        default=None, ge=0, description="Seconds for the `retry-after` header (none when None)."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra response headers, e.g. x-should-retry."
    )
    latency_ms: float | None = Field(
        default=None, ge=0, description="Time to first byte; None uses the server's latency_ms."
    )
    billed: bool = Field(
        default=False,
        description="Whether the provider billed the request before failing (a 5xx after "
        "billing): the input estimate of the body plus billed_output_tokens.",
    )
    billed_output_tokens: int = Field(
        default=0, ge=0, description="Output tokens billed when `billed` (ignored otherwise)."
    )
    times: int = Field(default=1, ge=1, description="How many requests this entry answers.")

    @property
    def resolved_type(self) -> str:
        return self.error_type or error_type_for_status(self.status)

    @property
    def resolved_message(self) -> str:
        if self.message is not None:
            return self.message
        return default_error_message(self.resolved_type)


class Drop(_Strict):
    """A lost connection: the fake reads the whole request, waits `latency_ms`, then closes TCP.

    `after="request"`: no response byte at all (a client sees the server disconnect);
    `after="headers"`: 200 headers of the reply the request asked for (SSE or JSON, chunked),
    then no body (a client sees an incomplete body). Never an HTTP status to the client.
    """

    kind: Literal["drop"] = "drop"
    after: Literal["request", "headers"] = Field(
        default="request", description="Close before any response byte, or after the headers."
    )
    billed: bool = Field(
        default=True,
        description="Whether the provider billed the request: the input estimate of the body "
        "plus billed_output_tokens.",
    )
    billed_output_tokens: int = Field(
        default=0, ge=0, description="Output tokens billed when `billed` (ignored otherwise)."
    )
    latency_ms: float | None = Field(
        default=None, ge=0, description="Time before the drop; None uses the server's latency_ms."
    )
    times: int = Field(default=1, ge=1, description="How many requests this entry answers.")


AnyEntry = Reply | ErrorReply | Drop
ScriptEntry = Annotated[AnyEntry, Field(discriminator="kind")]

SCRIPT_ENTRY: TypeAdapter[AnyEntry] = TypeAdapter(ScriptEntry)
SCRIPT_ENTRIES: TypeAdapter[list[AnyEntry]] = TypeAdapter(list[ScriptEntry])
