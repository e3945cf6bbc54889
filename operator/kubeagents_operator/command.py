"""`kubeagents operator`: kopf embedded, the admin endpoints beside it."""

from __future__ import annotations

import asyncio
import contextlib

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kubeagents.process import announce, run, stop_on_signals
from kubeagents.redis_link import RedisLink
from kubeagents_operator.handlers import OperatorDeps, register
from kubeagents_operator.kube import KubeClient
from kubeagents_operator.metrics import OperatorMetrics
from kubeagents_operator.settings import OperatorSettings


def admin_app(link: RedisLink, ready: asyncio.Event, metrics: CollectorRegistry) -> web.Application:
    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = {"kopf": "ok" if ready.is_set() else "starting"}
        try:
            async with asyncio.timeout(2):
                await link.ping()
            checks["redis"] = "ok"
        except Exception as error:  # noqa: BLE001 - any failure means not ready
            checks["redis"] = f"unavailable: {type(error).__name__}: {error}"
        ok = all(value == "ok" for value in checks.values())
        return web.json_response({"checks": checks}, status=200 if ok else 503)

    async def metrics_endpoint(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics), headers={"content-type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


async def serve(settings: OperatorSettings) -> int:
    def new_link() -> RedisLink:
        link = RedisLink(settings.redis_url, cluster=settings.redis_cluster)
        link.command_timeout = 5.0 + 1.0  # blocking reads wait up to a second
        return link

    link = new_link()
    kube = KubeClient.discover()
    registry = kopf.OperatorRegistry()
    metrics = OperatorMetrics()
    deps = OperatorDeps(settings=settings, kube=kube, link=link, new_link=new_link, metrics=metrics)
    register(registry, deps)
    ready = asyncio.Event()
    stop = stop_on_signals()
    runner = web.AppRunner(admin_app(link, ready, metrics.registry), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
    await site.start()
    announce(
        f"kubeagents operator watching {', '.join(settings.watch_namespaces) or 'every namespace'} "
        f"(metrics on port {runner.addresses[0][1]})"
    )
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry,
            clusterwide=not settings.watch_namespaces,
            namespaces=settings.watch_namespaces,
            ready_flag=ready,
            stop_flag=stop,
            standalone=True,
        )
    )
    try:
        await operator
    finally:
        operator.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await operator
        await runner.cleanup()
        await kube.aclose()
        await link.aclose()
    return 0


def serve_operator(settings: OperatorSettings) -> int:
    """Serve until SIGTERM."""
    return run(serve(settings))
