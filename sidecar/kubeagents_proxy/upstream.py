"""The connection to the provider: one pooled aiohttp session, the real key, bounded retries.

Answers 429, 529 and 5xx are retried with exponential backoff and jitter, honouring the
upstream's `retry-after`, as long as the call's deadline allows; a 429 that says the
organisation's spend limit was reached is final. The response of the last attempt is returned to
the caller (status, headers and body stream untouched).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping

import aiohttp

from kubeagents_proxy.errors import UpstreamTimeout, UpstreamUnavailable

FORWARDED_REQUEST_HEADERS = ("anthropic-version", "anthropic-beta", "traceparent", "tracestate")
DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
)
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0


def _is_spend_limit(body: bytes) -> bool:
    lowered = body.lower()
    return b"spend limit" in lowered or b"billing" in lowered or b"credit balance" in lowered


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
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
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def headers(self, incoming: Mapping[str, str]) -> dict[str, str]:
        """The headers sent upstream: the real key, and the client's version/beta/trace only."""
        headers = {"x-api-key": self._api_key, "content-type": "application/json"}
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
    ) -> aiohttp.ClientResponse:
        """Send, retrying retryable answers within `deadline` (a `time.monotonic()` instant)."""
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
            except aiohttp.ClientError as error:
                raise UpstreamUnavailable(f"cannot reach the upstream: {error}") from None
            if response.status not in RETRYABLE_STATUSES or attempt >= self.max_retries:
                return response
            if response.status == 429:
                body_bytes = await response.read()
                if _is_spend_limit(body_bytes):
                    return response
            wait = _retry_after(response.headers)
            if wait is None:
                wait = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
                wait *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not cryptography
            if time.monotonic() + wait >= deadline:
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
