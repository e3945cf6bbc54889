"""What the proxy's stream accounting costs per stream: `StreamUsage` on the core's spec-compliant
SSE decoder (`kubeagents.sse`) against a baseline that assumes the real API's framing (events
separated by LF LF, `event: ` and `data: ` with the space), the way the proxy parsed streams
before issue #14. Both run in this process on the same Anthropic-shaped streams, chunked as the
upstream's TCP reads deliver them (1 KiB) and one event per chunk.

    .venv/bin/python tests/benchmarks/bench_sse.py
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from typing import Any

from kubeagents_proxy.stream_usage import StreamUsage

_BASELINE_EVENTS = (b"event: message_start", b"event: message_delta")


class LfOnlyUsage:
    """The baseline: finds `\\n\\n`, reads `data: ` of the usage events, nothing else."""

    def __init__(self) -> None:
        self._pending = b""
        self._usage: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk if self._pending else chunk
        start = 0
        while (end := data.find(b"\n\n", start)) >= 0:
            event = data[start:end]
            start = end + 2
            if event.startswith(_BASELINE_EVENTS):
                parsed = json.loads(event.partition(b"\ndata: ")[2])
                usage = parsed.get("usage") or parsed.get("message", {}).get("usage") or {}
                self._usage.update(usage)
        self._pending = data[start:]


def anthropic_stream(deltas: int) -> bytes:
    def event(kind: str, data: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    usage = {"input_tokens": 25, "output_tokens": deltas}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "usage": usage}
    parts = [
        event("message_start", {"message": message}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        event("ping", {}),
    ]
    for i in range(deltas):
        delta = {"type": "text_delta", "text": f"Hello world, this is token {i}"}
        parts.append(event("content_block_delta", {"index": 0, "delta": delta}))
    parts += [
        event("content_block_stop", {"index": 0}),
        event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": usage}),
        event("message_stop", {}),
    ]
    return "".join(parts).encode()


def microseconds_per_stream(parser: Callable[[], Any], chunks: list[bytes]) -> float:
    def one_stream() -> None:
        accounting = parser()
        for chunk in chunks:
            accounting.feed(chunk)

    number = 2000
    return min(timeit.repeat(one_stream, number=number, repeat=5)) / number * 1e6


def main() -> None:
    print("stream accounting, µs of CPU per stream (best of 5 runs of 2,000 streams)")
    for deltas in (3, 50, 500):
        body = anthropic_stream(deltas)
        chunkings = {
            "1 KiB chunks": [body[i : i + 1024] for i in range(0, len(body), 1024)],
            "one event per chunk": [e + b"\n\n" for e in body.split(b"\n\n") if e],
        }
        for label, chunks in chunkings.items():
            decoder = microseconds_per_stream(StreamUsage, chunks)
            baseline = microseconds_per_stream(LfOnlyUsage, chunks)
            print(
                f"  {deltas:3d} text deltas, {label:19s}  StreamUsage {decoder:8.1f}"
                f"  LF-only baseline {baseline:8.1f}  ratio {decoder / baseline:.2f}"
                f"  (+{decoder - baseline:.1f} µs)"
            )


if __name__ == "__main__":
    main()
