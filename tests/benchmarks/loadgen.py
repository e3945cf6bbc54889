"""An open-loop, paced HTTP/1.1 load generator for latency at a fixed request rate.

`wrk` is closed-loop (each connection waits for its answer before sending again), so under a
slow answer it sends less and hides the latency it caused (coordinated omission), and it cannot
hold a fixed rate. This generator sends request i at `t0 + i / rate` whether or not earlier
answers have come back, over a pool of pre-opened keep-alive connections (one request in flight
per connection; a new connection is opened when every one is busy, and that request's latency
then counts from its scheduled time, connection set-up included).

Timing is taken in the protocol callbacks (`data_received`), not after an HTTP client library's
parsing and task switches, so the client adds as little as possible to what it measures:

- latency: from writing the request to the last byte of the answer;
- first byte: from writing the request to the first byte of the answer's body (for a stream,
  its first server-sent event);
- lag: how late each request was sent after its scheduled time (the event loop's timers have
  about 1 ms granularity, so a few sends go out together; a large lag would mean the generator
  itself could not keep up, and is reported).

Several targets are measured in interleaved phases (`--order a,b,b,a`) so that a drift of the
machine during the run falls on both alike. Prints one JSON object on stdout.

Standard library only (uvloop when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit


@dataclass
class Sample:
    status: int
    latency: float
    first_byte: float
    ok: bool


@dataclass
class TargetStats:
    samples: list[Sample] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    connection_errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    extra_connections: int = 0
    unfinished: int = 0

    def failed(self, error: BaseException) -> None:
        self.connection_errors += 1
        kind = f"{type(error).__name__}: {error}"[:120]
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


class Exchange(asyncio.Protocol):
    """One keep-alive connection; one request at a time; times measured in the callbacks."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._reset()

    def _reset(self) -> None:
        self.buffer = bytearray()
        self.body = bytearray()
        self.status: int | None = None
        self.length: int | None = None
        self.chunked = False
        self.chunk_left = 0  # data bytes still to read in the current chunk (then CRLF)
        self.started = 0.0
        self.first: float | None = None
        self.record = False
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection closed mid-answer"))

    def send(self, started: float, *, record: bool) -> asyncio.Future[None]:
        assert self.transport is not None
        self._reset()
        self.record = record
        self.done = asyncio.get_running_loop().create_future()
        self.started = started
        self.transport.write(self.target.request)
        return self.done

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        if self.status is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            self.status = int(lines[0].split(" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self.length = int(value)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
            del self.buffer[: end + 4]
        if self.first is None and self.buffer:
            self.first = now
        complete = self._parse_chunks() if self.chunked else self._parse_length()
        if complete:
            self._finish(now)

    def _parse_length(self) -> bool:
        if self.length is None or len(self.buffer) < self.length:
            return False
        self.body = self.buffer
        return True

    def _parse_chunks(self) -> bool:
        buffer = self.buffer
        while True:
            if self.chunk_left > 0:
                take = min(self.chunk_left, len(buffer))
                self.body += buffer[:take]
                del buffer[:take]
                self.chunk_left -= take
                if self.chunk_left:
                    return False
                self.chunk_left = -2  # the CRLF after the chunk's data
            if self.chunk_left == -2:
                if len(buffer) < 2:
                    return False
                del buffer[:2]
                self.chunk_left = 0
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
            if size == 0:  # last chunk: no trailers expected, just the final CRLF
                return len(buffer) >= line_end + 4
            del buffer[: line_end + 2]
            self.chunk_left = size

    def _finish(self, now: float) -> None:
        status = self.status or 0
        ok = status == 200 and self.target.expect in self.body
        if self.record:
            first = self.first if self.first is not None else now
            self.target.stats.samples.append(
                Sample(status, now - self.started, first - self.started, ok)
            )
        done = self.done
        self._reset()
        self.target.idle.append(self)
        if done is not None and not done.done():
            done.set_result(None)


class Target:
    """One server under test: its request bytes and its pool of connections."""

    def __init__(self, name: str, url: str, body: bytes, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.name = name
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"loadgen only sends to loopback, not {self.host}")
        head = [
            f"POST {parts.path or '/'} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            *(f"{name}: {value}" for name, value in headers.items()),
            "content-type: application/json",
            f"content-length: {len(body)}",
        ]
        self.request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        self.expect = b"message_stop" if b'"stream":true' in body else b'"type":"message"'
        self.idle: deque[Exchange] = deque()
        self.stats = TargetStats()

    async def connect(self) -> Exchange:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: Exchange(self), self.host, self.port)
        return protocol

    async def open(self, count: int) -> None:
        for exchange in await asyncio.gather(*(self.connect() for _ in range(count))):
            self.idle.append(exchange)


class Runner:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.pending: set[asyncio.Task[None]] = set()

    def dispatch(self, target: Target, scheduled: float, *, record: bool) -> None:
        while target.idle and target.idle[-1].lost:
            target.idle.pop()
        if target.idle:
            exchange = target.idle.pop()
            future = exchange.send(time.perf_counter(), record=record)
            task = asyncio.ensure_future(self._await(target, future, record))
        else:
            task = asyncio.ensure_future(self._fresh(target, scheduled, record))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _await(self, target: Target, future: asyncio.Future[None], record: bool) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await future
        except (TimeoutError, ConnectionError) as error:
            if record:
                target.stats.failed(error)

    async def _fresh(self, target: Target, scheduled: float, record: bool) -> None:
        """Every pooled connection is busy: open one more; its latency counts from `scheduled`."""
        if record:
            target.stats.extra_connections += 1
        try:
            async with asyncio.timeout(self.timeout):
                exchange = await target.connect()
        except (OSError, TimeoutError) as error:
            if record:
                target.stats.failed(error)
            return
        await self._await(target, exchange.send(scheduled, record=record), record)

    async def phase(self, target: Target, rate: float, seconds: float, *, record: bool) -> None:
        interval = 1.0 / rate
        count = max(1, round(rate * seconds))
        start = time.perf_counter() + 0.005
        for index in range(count):
            scheduled = start + index * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if record:
                target.stats.lags.append(time.perf_counter() - scheduled)
            self.dispatch(target, scheduled, record=record)
        await self.drain(target)

    async def drain(self, target: Target) -> None:
        if self.pending:
            _, not_done = await asyncio.wait(set(self.pending), timeout=self.timeout + 1)
            target.stats.unfinished += len(not_done)


def percentiles_ms(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)] * 1000

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": ordered[-1] * 1000,
        "mean": sum(ordered) / len(ordered) * 1000,
    }


def summary(target: Target) -> dict[str, Any]:
    stats = target.stats
    good = [sample for sample in stats.samples if sample.ok]
    statuses: dict[str, int] = {}
    for sample in stats.samples:
        statuses[str(sample.status)] = statuses.get(str(sample.status), 0) + 1
    return {
        "requests": len(stats.samples),
        "ok": len(good),
        "bad_answers": len(stats.samples) - len(good),
        "statuses": statuses,
        "connection_errors": stats.connection_errors,
        "error_kinds": stats.error_kinds,
        "unfinished": stats.unfinished,
        "extra_connections": stats.extra_connections,
        "latency_ms": percentiles_ms([sample.latency for sample in good]),
        "first_byte_ms": percentiles_ms([sample.first_byte for sample in good]),
        "lag_ms": percentiles_ms(stats.lags),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    body = args.body.encode()
    headers = dict(header.split(":", 1) for header in args.header)
    headers = {name.strip(): value.strip() for name, value in headers.items()}
    targets: dict[str, Target] = {}
    for spec in args.target:
        name, _, url = spec.partition("=")
        targets[name] = Target(name, url, body, headers)
    order = args.order.split(",") if args.order else list(targets)
    runner = Runner(args.timeout)
    for target in targets.values():
        await target.open(args.connections)
    for target in targets.values():
        await runner.phase(target, args.rate, args.warmup, record=False)
    started = time.perf_counter()
    for name in order:
        await runner.phase(targets[name], args.rate, args.phase_seconds, record=True)
    elapsed = time.perf_counter() - started
    for target in targets.values():
        for exchange in target.idle:
            if exchange.transport is not None:
                exchange.transport.close()
    return {
        "rate": args.rate,
        "phase_seconds": args.phase_seconds,
        "order": order,
        "elapsed_seconds": elapsed,
        "targets": {name: summary(target) for name, target in targets.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", action="append", required=True, help="NAME=URL (repeatable)")
    parser.add_argument("--order", default="", help="comma-separated NAMEs, one phase each")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--phase-seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per target, unmeasured")
    parser.add_argument("--connections", type=int, default=64, help="pre-opened per target")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--header", action="append", default=[], help="'name: value'")
    parser.add_argument("--body", required=True)
    args = parser.parse_args(argv)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(run(args))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
