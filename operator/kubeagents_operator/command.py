"""`kubeagents operator`: kopf embedded, the admin endpoints beside it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

import kopf
from aiohttp import web
from prometheus_client import CollectorRegistry

from kubeagents.http_errors import error_middleware
from kubeagents.metrics_endpoint import metrics_handler
from kubeagents.process import announce, run, stop_on_signals
from kubeagents.redis_link import RedisLink
from kubeagents_operator.handlers import OperatorDeps, register
from kubeagents_operator.kube import KubeClient
from kubeagents_operator.leader import LeaseElector
from kubeagents_operator.metrics import OperatorMetrics
from kubeagents_operator.settings import OperatorSettings
from kubeagents_operator.tracing import RunTracer

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def admin_app(
    link: RedisLink, ready: asyncio.Event, standby: asyncio.Event, metrics: CollectorRegistry
) -> web.Application:
    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        # A replica waiting for the Lease is ready: it is healthy, and takes over when needed.
        checks = {"kopf": "ok" if ready.is_set() or standby.is_set() else "starting"}
        try:
            async with asyncio.timeout(2):
                await link.ping()
            checks["redis"] = "ok"
        except Exception as error:  # noqa: BLE001 - any failure means not ready
            checks["redis"] = f"unavailable: {type(error).__name__}: {error}"
        ok = all(value == "ok" for value in checks.values())
        return web.json_response({"checks": checks}, status=200 if ok else 503)

    app = web.Application(middlewares=[error_middleware()])
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(metrics))
    return app


async def serve(settings: OperatorSettings) -> int:
    def new_link() -> RedisLink:
        link = settings.redis_link()
        link.command_timeout = 5.0 + 1.0  # blocking reads wait up to a second
        return link

    link = new_link()
    kube = KubeClient.discover()
    registry = kopf.OperatorRegistry()
    metrics = OperatorMetrics()
    deps = OperatorDeps(
        settings=settings, kube=kube, link=link, new_link=new_link, metrics=metrics,
        tracer=RunTracer(),
    )  # fmt: skip
    register(registry, deps)
    ready, standby = asyncio.Event(), asyncio.Event()
    stop = stop_on_signals()
    runner = web.AppRunner(admin_app(link, ready, standby, metrics.registry), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
    await site.start()
    elector = _elector(settings, kube) if settings.leader_election else None
    holding: asyncio.Task[None] | None = None
    if elector is not None:
        standby.set()
        acquiring = asyncio.ensure_future(elector.acquire())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not acquiring.done():
            acquiring.cancel()
            await _close(runner, kube, link)
            return 0
        standby.clear()
        holding = asyncio.create_task(elector.hold())
        holding.add_done_callback(lambda _: stop.set())  # lost the Lease: stop driving at once
    announce(
        f"kubeagents operator watching {', '.join(settings.watch_namespaces) or 'every namespace'} "
        f"(metrics on port {runner.addresses[0][1]})"
    )
    kopf_settings = kopf.OperatorSettings()
    # Watching listed namespaces needs no cluster-wide rights: without this, kopf would list
    # namespaces and CRDs (refused to a namespaced Role) before serving anything.
    kopf_settings.scanning.disabled = bool(settings.watch_namespaces)
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry,
            settings=kopf_settings,
            clusterwide=not settings.watch_namespaces,
            namespaces=settings.watch_namespaces,
            ready_flag=ready,
            stop_flag=stop,
            standalone=True,
        )
    )
    lost = False
    try:
        await operator
    finally:
        operator.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await operator
        if holding is not None and elector is not None:
            lost = holding.done() and not holding.cancelled() and holding.exception() is not None
            if lost:
                announce(f"kubeagents operator stopped: {holding.exception()}")
            else:
                holding.cancel()
                with contextlib.suppress(Exception):
                    await elector.release()
        await _close(runner, kube, link)
    return 1 if lost else 0


async def _close(runner: web.AppRunner, kube: KubeClient, link: RedisLink) -> None:
    await runner.cleanup()
    await kube.aclose()
    await link.aclose()


def _elector(settings: OperatorSettings, kube: KubeClient) -> LeaseElector:
    namespace = settings.lease_namespace
    if not namespace:
        if not SERVICE_ACCOUNT_NAMESPACE.exists():
            raise SystemExit(
                "KUBEAGENTS_OPERATOR_LEASE_NAMESPACE is empty and there is no service account "
                f"namespace file ({SERVICE_ACCOUNT_NAMESPACE}): set the Lease's namespace"
            )
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    identity = settings.identity or f"{socket.gethostname()}_{os.getpid()}"
    return LeaseElector(
        kube.http,
        namespace=namespace,
        name=settings.lease_name,
        identity=identity,
        duration_seconds=settings.lease_duration_seconds,
    )


def serve_operator(settings: OperatorSettings) -> int:
    """Serve until SIGTERM."""
    # kopf logs every handler and timer that succeeds (each scheduled team every second);
    # what a user needs of that is in the objects' status and Events. Failures still log.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return run(serve(settings))
