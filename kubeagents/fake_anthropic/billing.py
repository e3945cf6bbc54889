"""What the fake *billed*, the way the provider would: per request, and summed since the reset.

The provider's bill is not what the client saw: it bills a reply whose client went away
mid-stream, may bill a request that then failed, and bills the input its own tool loop added.
Tests of the proxy assert against this ground truth (e.g. billed <= budget).

Rules, for `POST /v1/messages` (other requests never bill):

- a reply answered with 200 (JSON or stream, with or without a scripted stream `error` event)
  bills its full usage: input (estimate or override, plus `server_tool_input_tokens`), output,
  cache and server-tool counts. It is billed as soon as the fake has taken it from the script,
  so a client that disconnects during the latency or mid-stream is billed in full (the provider
  bills generated tokens; over-estimating is the safe side for budget tests);
- an `ErrorReply` (and a `Reply` with a `stream_error` answered as an HTTP error because the
  request did not stream) bills nothing, unless `ErrorReply.billed` is true;
- a `Drop` bills unless `Drop.billed` is false;
- a billed error or drop bills the body's input estimate plus `billed_output_tokens`, no cache
  and no server-tool use;
- requests refused before the script (auth, validation, unknown model) bill nothing.

A billed usage records `speed` as requested in the body ("standard" when absent) and
`inference_geo` as requested (None when absent): the options the provider prices.

`GET /_fake/bill` sums the billed usages since the last reset (`POST /_fake/reset` or
`DELETE /_fake/requests`); the sums are kept apart from the records, so they stay exact when
`max_recorded` forgets old records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from kubeagents.fake_anthropic.script import ServerToolUse

if TYPE_CHECKING:
    from kubeagents.fake_anthropic.events import Outcome

DEFAULT_SPEED = "standard"


def billed_usage(
    *,
    input_tokens: int,
    output_tokens: int,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    web_search_requests: int = 0,
    web_fetch_requests: int = 0,
    speed: str | None,
    inference_geo: str | None,
) -> dict[str, Any]:
    """The JSON of one billed usage (a record's `billed`)."""
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_creation_input_tokens,
        "cache_read_input_tokens": cache_read_input_tokens,
        "server_tool_use": {
            "web_search_requests": web_search_requests,
            "web_fetch_requests": web_fetch_requests,
        },
        "speed": DEFAULT_SPEED if speed is None else speed,
        "inference_geo": inference_geo,
    }


def bill_of_outcome(outcome: Outcome) -> dict[str, Any]:
    """The billed usage of a 200 reply: all of its usage, server tools included."""
    uses = outcome.plan.server_tool_use
    return billed_usage(
        input_tokens=outcome.total_input_tokens,
        output_tokens=outcome.output_tokens,
        cache_creation_input_tokens=outcome.cache_creation_input_tokens,
        cache_read_input_tokens=outcome.cache_read_input_tokens,
        web_search_requests=0 if uses is None else uses["web_search_requests"],
        web_fetch_requests=0 if uses is None else uses["web_fetch_requests"],
        speed=outcome.speed,
        inference_geo=outcome.inference_geo,
    )


class BillTotals:
    """The running sums behind `GET /_fake/bill` (mutated on the event loop's thread only)."""

    __slots__ = (
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "input_tokens",
        "output_tokens",
        "requests",
        "web_fetch_requests",
        "web_search_requests",
    )

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_creation_input_tokens = 0
        self.cache_read_input_tokens = 0
        self.web_search_requests = 0
        self.web_fetch_requests = 0

    def add(self, usage: dict[str, Any]) -> None:
        self.requests += 1
        self.input_tokens += usage["input_tokens"]
        self.output_tokens += usage["output_tokens"]
        self.cache_creation_input_tokens += usage["cache_creation_input_tokens"]
        self.cache_read_input_tokens += usage["cache_read_input_tokens"]
        tools = usage["server_tool_use"]
        self.web_search_requests += tools["web_search_requests"]
        self.web_fetch_requests += tools["web_fetch_requests"]

    def as_json(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "web_search_requests": self.web_search_requests,
            "web_fetch_requests": self.web_fetch_requests,
            "total_tokens": self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens,
        }


class BilledUsage(BaseModel):
    """What the fake billed for one request (`RecordedRequest.billed`)."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    server_tool_use: ServerToolUse
    speed: str = Field(description='As requested in the body; "standard" when absent.')
    inference_geo: str | None = Field(description="As requested in the body; None when absent.")


class Bill(BaseModel):
    """`GET /_fake/bill`: the sums of every billed usage since the last reset."""

    model_config = ConfigDict(frozen=True)

    requests: int = Field(description="How many requests were billed.")
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    web_search_requests: int
    web_fetch_requests: int
    total_tokens: int = Field(
        description="input + output + cache_creation_input + cache_read_input tokens."
    )
