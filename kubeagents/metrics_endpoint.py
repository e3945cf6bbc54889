"""`GET /metrics` for every process: prometheus_client's aiohttp handler over the process's
own registry (content negotiation, OpenMetrics, gzip and `name[]` filters included).

A process whose gauges are read at scrape time (the proxy's budget from Redis, the probe's
readiness, the runtime's MCP servers) passes `refresh`, awaited before each exposition.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def metrics_handler(
    registry: CollectorRegistry, *, refresh: Callable[[], Awaitable[None]] | None = None
) -> Handler:
    """The `/metrics` handler of `registry`; `refresh()` runs before each scrape."""
    expose = make_aiohttp_handler(registry)
    if refresh is None:
        return expose

    async def refreshed(request: web.Request) -> web.StreamResponse:
        await refresh()
        return await expose(request)

    return refreshed
