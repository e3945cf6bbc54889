"""The one decoder of server-sent events (text/event-stream), incremental and spec-compliant.

It follows the WHATWG "event stream interpretation": lines end with CRLF, LF or CR (a CRLF split
between two chunks still counts once); a line starting with `:` is a comment; `field:value`
drops one space after the colon, if there is one (`data:x` and `data: x` are the same); several
`data` lines join with LF; a blank line dispatches the event, unless it had no `data` line; the
event's type is its last `event` field, `message` when it has none; a leading byte-order mark
is skipped. `id` and `retry` are not used by anything here and are ignored.

Chunks may split the stream anywhere, even inside a line or a UTF-8 sequence: the decoder works
on bytes and hands out each event's type and data as bytes, which JSON parsers take as they are.
It holds at most one unfinished line and one unfinished event.
"""

from __future__ import annotations

from typing import NamedTuple

_BOM = b"\xef\xbb\xbf"


class ServerSentEvent(NamedTuple):
    event: bytes
    data: bytes


class SseDecoder:
    """Feed it the stream's chunks in order; `feed` returns the events they completed."""

    __slots__ = ("_after_cr", "_data", "_event", "_partial", "_started")

    def __init__(self) -> None:
        self._partial = b""  # the unfinished last line
        self._after_cr = False  # the last chunk ended with CR: a LF next is that line's end
        self._started = False
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if not self._started:
            buffered = self._partial + chunk
            if len(buffered) < len(_BOM) and _BOM.startswith(buffered):
                self._partial = buffered
                return []
            self._started = True
            self._partial = b""
            chunk = buffered.removeprefix(_BOM)
        text = self._partial + chunk if self._partial else chunk
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = text.split(b"\n")
        self._partial = lines.pop()
        events: list[ServerSentEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(
                        ServerSentEvent(self._event or b"message", b"\n".join(self._data))
                    )
                    self._data = []
                self._event = b""
                continue
            if line.startswith(b"data: "):  # the usual forms first: one method call each
                self._data.append(line[6:])
                continue
            if line.startswith(b"event: "):
                self._event = line[7:]
                continue
            if line[0] == 0x3A:  # ":" a comment
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value
        return events
