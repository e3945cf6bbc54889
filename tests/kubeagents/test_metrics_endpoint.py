"""`/metrics` is served one way everywhere: refreshed gauges, content negotiation, gzip."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Gauge

from kubeagents.metrics_endpoint import metrics_handler


async def scrape(app: web.Application, headers: dict[str, str]) -> tuple[str, str, str]:
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics", headers=headers)
        assert response.status == 200
        body = await response.text()  # aiohttp decompresses; the header says what was sent
        return response.headers["content-type"], response.headers.get("content-encoding", ""), body


def test_refresh_runs_before_each_scrape_and_both_formats_are_served() -> None:
    registry = CollectorRegistry()
    gauge = Gauge(
        "kubeagents_test_reads", "How many scrapes refreshed the gauge.", [], registry=registry
    )
    reads = 0

    async def refresh() -> None:
        nonlocal reads
        reads += 1
        gauge.set(reads)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry, refresh=refresh))

    async def main() -> None:
        kind, encoding, body = await scrape(app, {"accept-encoding": "identity"})
        assert kind.startswith("text/plain; version=0.0.4")
        assert encoding == ""
        assert "kubeagents_test_reads 1.0" in body
        kind, encoding, body = await scrape(
            app,
            {"accept": "application/openmetrics-text; version=1.0.0", "accept-encoding": "gzip"},
        )
        assert kind.startswith("application/openmetrics-text")
        assert encoding == "gzip"
        assert "kubeagents_test_reads 2.0" in body
        assert body.endswith("# EOF\n")

    asyncio.run(main())


def test_without_refresh_the_registry_is_served_as_it_is() -> None:
    registry = CollectorRegistry()
    Gauge("kubeagents_test_static", "A gauge nobody refreshes.", registry=registry).set(7)
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    _, _, body = asyncio.run(scrape(app, {}))
    assert "kubeagents_test_static 7.0" in body
