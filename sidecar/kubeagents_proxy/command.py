"""`kubeagents proxy`: build the clients from the settings and serve both applications."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from kubeagents.agent import agent_key
from kubeagents.process import announce, run, stop_on_signals
from kubeagents.redis_link import RedisLink
from kubeagents.telemetry import build_tracer, tracing_requested
from kubeagents_proxy.app import ProxyDeps, create_proxy
from kubeagents_proxy.metrics import ProxyMetrics
from kubeagents_proxy.settings import ProxySettings
from kubeagents_proxy.upstream import Upstream

SHUTDOWN_GRACE_SECONDS = 10.0


def redis_client(settings: ProxySettings) -> RedisLink | None:
    """One pipelined connection to the node that holds the agent's keys (see redis_link)."""
    if settings.redis_url is None:
        return None
    return RedisLink(
        settings.redis_url,
        cluster=settings.redis_cluster,
        slot_key=agent_key(settings.namespace, settings.agent, "ledger"),
        connect_timeout=2.0,
        command_timeout=5.0,
    )


async def serve(settings: ProxySettings) -> int:
    api_key = settings.read_api_key()
    upstream = Upstream(
        settings.upstream_url,
        api_key,
        connect_timeout=settings.connect_timeout_seconds,
        idle_timeout=settings.stream_idle_timeout_seconds,
        max_retries=settings.upstream_max_retries,
    )
    await upstream.start()
    redis = redis_client(settings)
    tracer = build_tracer("kubeagents-proxy", "kubeagents.proxy") if tracing_requested() else None
    deps = ProxyDeps(upstream=upstream, redis=redis, metrics=ProxyMetrics(), tracer=tracer)
    apps = create_proxy(settings, deps)
    runners = [web.AppRunner(apps.api, access_log=None), web.AppRunner(apps.admin, access_log=None)]
    stop = stop_on_signals()
    try:
        for runner in runners:
            await runner.setup()
        api_site = web.TCPSite(runners[0], settings.host, settings.port, backlog=2048)
        admin_site = web.TCPSite(runners[1], settings.metrics_host, settings.metrics_port)
        await api_site.start()
        await admin_site.start()
        api_port = runners[0].addresses[0][1]
        admin_port = runners[1].addresses[0][1]
        announce(
            f"kubeagents proxy for agent {settings.agent} listening on "
            f"http://{settings.host}:{api_port} (metrics on port {admin_port})"
        )
        await stop.wait()
    finally:
        await runners[0].cleanup()  # stops taking calls, lets running ones finish
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_GRACE_SECONDS):
                await apps.proxy.accountant.drain()
        await runners[1].cleanup()
        await upstream.close()
        if redis is not None:
            await redis.aclose()
    return 0


def serve_proxy(settings: ProxySettings) -> int:
    """Serve until SIGTERM; JSON log lines (one per call) go to stderr."""
    return run(serve(settings))
