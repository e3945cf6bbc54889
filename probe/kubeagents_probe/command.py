"""`kubeagents probe`: build the clients from the settings, run the checks, serve the endpoints."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from kubeagents.agent import agent_key
from kubeagents.process import announce, run, stop_on_signals
from kubeagents_probe.app import create_app
from kubeagents_probe.metrics import ProbeMetrics
from kubeagents_probe.probe import Probe
from kubeagents_probe.proxy_client import ProxyClient
from kubeagents_probe.runtime_status import RuntimeStatus
from kubeagents_probe.settings import ProbeSettings
from kubeagents_probe.shared_verdict import SharedVerdict, check_digest


async def serve(settings: ProbeSettings) -> int:
    client = ProxyClient(
        settings.proxy_url, settings.proxy_admin_url, timeout_seconds=settings.timeout_seconds
    )
    await client.start()
    runtime = None
    if settings.check_mcp:
        runtime = RuntimeStatus(
            settings.runtime_status_url, timeout_seconds=settings.timeout_seconds
        )
        await runtime.start()
    link = None
    shared = None
    if settings.shared and settings.redis_url:
        link = settings.redis_link(
            slot_key=agent_key(settings.namespace, settings.agent, "probe"),
            command_timeout=max(1.0, min(5.0, settings.timeout_seconds)),
        )
        shared = SharedVerdict(
            link,
            namespace=settings.namespace,
            agent=settings.agent,
            digest=check_digest(settings.semantic_check_definition()),
        )
    probe = Probe(settings, client, ProbeMetrics(), shared, runtime)
    runner = web.AppRunner(create_app(probe), access_log=None)
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    checks = loop.create_task(probe.run())
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = runner.addresses[0][1]
        announce(
            f"kubeagents probe for agent {settings.agent} listening on http://{settings.host}:{port}"
        )
        stopped = loop.create_task(stop.wait())
        await asyncio.wait({checks, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if checks.done():  # the loops never end on their own: a bug, not a verdict
            checks.result()
    finally:
        checks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checks
        await runner.cleanup()
        await client.close()
        if runtime is not None:
            await runtime.close()
        if link is not None:
            await link.aclose()
    return 0


def serve_probe(settings: ProbeSettings) -> int:
    """Serve until SIGTERM; warnings go to stderr."""
    return run(serve(settings))
