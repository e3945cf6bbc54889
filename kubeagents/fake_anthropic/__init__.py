"""A faithful fake of the Anthropic Messages API, served on loopback for tests, benchmarks and
local mode.

- `script`: what a test programs (`Reply`, `ErrorReply`, `Drop`, `StreamError`,
  `ServerToolUse`, content blocks).
- `control`: `FakeAnthropicControl`, the HTTP client of the `/_fake/*` control API.
- `recording`: `RecordedRequest`, what the fake remembers of each `/v1/*` request.
- `billing`: what the provider bills (`BilledUsage` per request, the summed `Bill`).
- `tokens`: the deterministic token estimate.
- `compression`: gzip (br) of `/v1/*` responses, like a CDN.
- `events`, `validation`, `catalog`, `state`, `server`: the server's parts
  (`server.create_app(settings, state)`).
- `settings`: `FakeAnthropicSettings`; `command`: `serve_fake_anthropic`, behind
  `kubeagents fake-anthropic`.
"""

from typing import TYPE_CHECKING

from kubeagents.fake_anthropic.billing import Bill, BilledUsage
from kubeagents.fake_anthropic.recording import RecordedRequest
from kubeagents.fake_anthropic.script import (
    Drop,
    ErrorReply,
    Reply,
    ScriptEntry,
    ServerToolUse,
    StreamError,
    TextBlock,
    ToolUseBlock,
)

if TYPE_CHECKING:
    from kubeagents.fake_anthropic.control import FakeAnthropicControl, FakeAnthropicControlError

_LAZY = frozenset({"FakeAnthropicControl", "FakeAnthropicControlError"})


def __getattr__(name: str) -> object:
    # The control client pulls in httpx; the server process (`kubeagents fake-anthropic`) never
    # needs it, so it is imported on first use only (faster start-up).
    if name in _LAZY:
        from kubeagents.fake_anthropic import control

        return getattr(control, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Bill",
    "BilledUsage",
    "Drop",
    "ErrorReply",
    "FakeAnthropicControl",
    "FakeAnthropicControlError",
    "RecordedRequest",
    "Reply",
    "ScriptEntry",
    "ServerToolUse",
    "StreamError",
    "TextBlock",
    "ToolUseBlock",
]
