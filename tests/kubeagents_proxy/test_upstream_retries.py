"""The proxy's retry decisions on the upstream's answers, with an aiohttp test server upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kubeagents_proxy.upstream import Upstream, _is_spend_limit, _retry_after

Answer = tuple[int, dict[str, str], bytes]
FAST = {"retry-after-ms": "1"}  # every retry waits 1 ms: the test never waits on the backoff


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "100", "retry-after": "3"}, 0.1),
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),
        ({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, None),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "inf", "retry-after": "4"}, 4.0),
        ({}, None),
    ],
)
def test_retry_after_is_read_from_the_ms_header_first(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert _retry_after(headers) == seconds


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "You have reached your specified API usage limits (spend limit)"}}',
        b'{"error": {"message": "Your credit balance is too low"}}',
        b'{"error": {"message": "Check your Billing settings"}}',
    ],
)
def test_a_spend_limit_is_told_apart_from_a_rate_limit(body: bytes) -> None:
    assert _is_spend_limit(body)
    assert not _is_spend_limit(b'{"error": {"message": "Number of requests has exceeded"}}')


def exchange(
    answers: Sequence[Answer], *, max_retries: int = 3, allow_retry: bool = True
) -> tuple[int, int, list[int]]:
    """Serve `answers` in turn; return the final status, how many requests came, and the
    statuses `before_retry` was asked about."""
    remaining = list(answers)
    seen: list[int] = []
    asked: list[int] = []

    async def messages(request: web.Request) -> web.Response:
        seen.append(1)
        status, headers, body = remaining.pop(0)
        return web.Response(status=status, headers=headers, body=body)

    async def gate(status: int) -> bool:
        asked.append(status)
        return allow_retry

    async def main() -> int:
        app = web.Application()
        app.router.add_post("/v1/messages", messages)
        async with TestServer(app) as server:
            upstream = Upstream(
                str(server.make_url("")).rstrip("/"),
                "key",
                connect_timeout=5,
                idle_timeout=5,
                max_retries=max_retries,
            )
            await upstream.start()
            try:
                response = await upstream.request(
                    "POST",
                    "/v1/messages",
                    body=b"{}",
                    headers={},
                    deadline=time.monotonic() + 60,
                    before_retry=gate,
                )
                response.release()
                return response.status
            finally:
                await upstream.close()

    return asyncio.run(main()), len(seen), asked


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 529])
def test_a_retryable_answer_is_retried_until_one_works(status: int) -> None:
    final, requests, asked = exchange([(status, FAST, b"{}"), (200, {}, b"{}")])
    assert (final, requests, asked) == (200, 2, [status])


def test_after_max_retries_the_last_answer_is_returned() -> None:
    final, requests, _ = exchange([(529, FAST, b"{}")] * 3, max_retries=2)
    assert (final, requests) == (529, 3)


def test_a_refused_gate_stops_the_retries() -> None:
    final, requests, asked = exchange([(500, FAST, b"{}"), (200, {}, b"{}")], allow_retry=False)
    assert (final, requests, asked) == (500, 1, [500])


def test_a_spend_limit_is_never_retried() -> None:
    spent = b'{"type":"error","error":{"type":"rate_limit_error","message":"spend limit"}}'
    final, requests, asked = exchange([(429, FAST, spent), (200, {}, b"{}")])
    assert (final, requests, asked) == (429, 1, [])


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
def test_a_client_error_is_returned_at_once(status: int) -> None:
    final, requests, _ = exchange([(status, FAST, b"{}"), (200, {}, b"{}")])
    assert (final, requests) == (status, 1)


def test_a_retry_after_beyond_the_deadline_returns_the_answer_instead_of_waiting() -> None:
    final, requests, asked = exchange([(429, {"retry-after": "3600"}, b"{}"), (200, {}, b"{}")])
    assert (final, requests, asked) == (429, 1, [])
