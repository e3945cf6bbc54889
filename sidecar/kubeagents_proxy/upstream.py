"""The connection to the provider: one pooled aiohttp session, the real key, bounded retries.

Answers 429, 529 and 5xx are retried with exponential backoff and jitter, honouring the
upstream's `retry-after`, as long as the call's deadline allows and the caller's `before_retry`
agrees (the proxy reserves budget for an attempt that may have been billed before it retries);
a 429 that says the organisation's spend limit was reached is final. The response of the last
attempt is returned to the caller (status, headers and body stream untouched).

Compression: the proxy asks for `identity` (usage is read from plain bytes, and the proxy's
CPU is not spent on inflating), and decodes whatever encoding still arrives (gzip, deflate; an
intermediary may compress anyway), so the client always gets plain bytes with no
`content-encoding`.

Failures: a connection that could not be made (`UpstreamUnavailable` with `sent=False`) reached
no model; any other broken connection (`sent=True`) happened after the request was sent, and
the provider may have billed it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping

import aiohttp

from kubeagents.backoff import Backoff
from kubeagents_proxy.errors import UpstreamTimeout, UpstreamUnavailable

FORWARDED_REQUEST_HEADERS = ("anthropic-version", "anthropic-beta", "traceparent", "tracestate")
DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
)
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
RETRY_BACKOFF = Backoff(base=0.5, cap=8.0)
BILLED_ERROR_STATUSES = frozenset({500, 502, 503, 504})
"""Upstream errors that may come after the model worked (and billed); 429 and 529 are refusals."""

RetryGate = Callable[[int], Awaitable[bool]]


def _is_spend_limit(body: bytes) -> bool:
    lowered = body.lower()
    return b"spend limit" in lowered or b"billing" in lowered or b"credit balance" in lowered


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue
            if math.isfinite(seconds):
                return max(0.0, seconds)
    return None


class Upstream:
    """Sends requests to the provider with the proxy's key; the caller owns the response."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_retries: int,
    ) -> None:
        self.base_url = base_url
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=idle_timeout
        )
        self.max_retries = max_retries
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def headers(self, incoming: Mapping[str, str]) -> dict[str, str]:
        """The headers sent upstream: the real key, and the client's version/beta/trace only."""
        headers = {
            "x-api-key": self._api_key,
            "content-type": "application/json",
            "accept-encoding": "identity",
        }
        for name in FORWARDED_REQUEST_HEADERS:
            value = incoming.get(name)
            if value is not None:
                headers[name] = value
        headers.setdefault("anthropic-version", "2023-06-01")
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        deadline: float,
        before_retry: RetryGate | None = None,
    ) -> aiohttp.ClientResponse:
        """Send, retrying retryable answers within `deadline` (a `time.monotonic()` instant)
        when `before_retry(status)` (if given) returns True."""
        assert self._session is not None, "Upstream.start() was not awaited"
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamTimeout("upstream did not answer within the request timeout")
            try:
                async with asyncio.timeout(remaining):
                    response = await self._session.request(
                        method, self.base_url + path, data=body, headers=headers
                    )
            except TimeoutError:
                raise UpstreamTimeout(
                    "upstream did not answer within the request timeout"
                ) from None
            except aiohttp.ClientConnectorError as error:
                raise UpstreamUnavailable(f"cannot reach the upstream: {error}") from None
            except aiohttp.ClientError as error:
                raise UpstreamUnavailable(
                    f"the upstream connection broke after the request was sent: {error!r}",
                    sent=True,
                ) from None
            if response.status not in RETRYABLE_STATUSES or attempt >= self.max_retries:
                return response
            if response.status == 429:
                body_bytes = await response.read()
                if _is_spend_limit(body_bytes):
                    return response
            wait = _retry_after(response.headers)
            if wait is None:
                wait = RETRY_BACKOFF.delay(attempt)
            if time.monotonic() + wait >= deadline:
                return response
            if before_retry is not None and not await before_retry(response.status):
                return response
            response.release()
            await asyncio.sleep(wait)
            attempt += 1


def response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    """The upstream's response headers a client may see (hop-by-hop ones dropped)."""
    return {
        name: value
        for name, value in upstream.headers.items()
        if name.lower() not in DROPPED_RESPONSE_HEADERS
    }
