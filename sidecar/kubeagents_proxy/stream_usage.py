"""Reads the usage out of an Anthropic SSE stream as it passes through, without buffering it.

Chunks are forwarded to the client untouched; this parser only looks at the events that carry
usage (`message_start`, `message_delta`) and at `error`. `message_delta` usage is cumulative, so
its values replace the start's, never add to them.
"""

from __future__ import annotations

import json
from typing import Any

from kubeagents_proxy.prices import Usage

_USAGE_EVENTS = (b"event: message_start", b"event: message_delta", b"event: error")


class StreamUsage:
    """Feed it the stream's chunks in order; it keeps the latest usage and the stop reason."""

    __slots__ = ("_pending", "_usage", "error_type", "saw_message_stop", "stop_reason")

    def __init__(self) -> None:
        self._pending = b""
        self._usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.error_type: str | None = None
        self.saw_message_stop = False

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk if self._pending else chunk
        start = 0
        while True:
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            self._event(data[start:end])
            start = end + 2
        self._pending = data[start:]

    def _event(self, event: bytes) -> None:
        if not event.startswith(_USAGE_EVENTS):
            if event.startswith(b"event: message_stop"):
                self.saw_message_stop = True
            return
        payload = event.partition(b"\ndata: ")[2]
        try:
            parsed = json.loads(payload)
        except ValueError:
            return
        kind = parsed.get("type")
        if kind == "message_start":
            usage = parsed.get("message", {}).get("usage")
            if isinstance(usage, dict):
                self._usage = dict(usage)
        elif kind == "message_delta":
            usage = parsed.get("usage")
            if isinstance(usage, dict):
                self._usage.update({k: v for k, v in usage.items() if v is not None})
            self.stop_reason = parsed.get("delta", {}).get("stop_reason") or self.stop_reason
        elif kind == "error":
            self.error_type = str(parsed.get("error", {}).get("type", "api_error"))

    @property
    def usage(self) -> Usage:
        return Usage.from_anthropic(self._usage)

    @property
    def saw_usage(self) -> bool:
        return bool(self._usage)
