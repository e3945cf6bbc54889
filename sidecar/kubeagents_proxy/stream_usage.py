"""Reads the usage out of an Anthropic SSE stream as it passes through, without buffering it.

Chunks are forwarded to the client untouched; this parser decodes them with the core's SSE
decoder (`kubeagents.sse`, any framing the spec allows) and only looks at the events that carry
usage (`message_start`, `message_delta`) and at `message_stop`. `message_delta` usage is
cumulative, so its values replace the start's, never add to them.
"""

from __future__ import annotations

import json
from typing import Any

from kubeagents.sse import SseDecoder
from kubeagents_proxy.prices import Usage

_USAGE_EVENTS = frozenset({b"message_start", b"message_delta"})


class StreamUsage:
    """Feed it the stream's chunks in order; it keeps the latest usage."""

    __slots__ = ("_decoder", "_usage", "saw_message_stop")

    def __init__(self) -> None:
        self._decoder = SseDecoder()
        self._usage: dict[str, Any] = {}
        self.saw_message_stop = False

    def feed(self, chunk: bytes) -> None:
        for event, data in self._decoder.feed(chunk):
            if event in _USAGE_EVENTS:
                self._usage_event(data)
            elif event == b"message_stop":
                self.saw_message_stop = True

    def _usage_event(self, data: bytes) -> None:
        try:
            parsed = json.loads(data)
        except ValueError:
            return
        if not isinstance(parsed, dict):
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

    @property
    def usage(self) -> Usage:
        return Usage.from_anthropic(self._usage)

    @property
    def saw_usage(self) -> bool:
        return bool(self._usage)
