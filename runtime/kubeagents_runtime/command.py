"""`kubeagents runtime`: connect the queue, the MCP servers and the proxy; run the worker and
serve the endpoints until SIGTERM, then drain."""

from __future__ import annotations

import asyncio
import contextlib

import anthropic
from aiohttp import web

from kubeagents.agent import agent_key
from kubeagents.process import announce, run, stop_on_signals
from kubeagents.redis_link import RedisLink
from kubeagents.tasks import QueueKeys, TaskQueue
from kubeagents.telemetry import build_tracer
from kubeagents_runtime.agent_loop import TRACER_NAME, AgentLoop
from kubeagents_runtime.app import create_app
from kubeagents_runtime.checkpoint import Checkpoints
from kubeagents_runtime.metrics import RuntimeMetrics
from kubeagents_runtime.settings import RuntimeSettings
from kubeagents_runtime.toolbox import Toolbox
from kubeagents_runtime.worker import Worker

MCP_CONNECT_WAIT_SECONDS = 10.0


def _link(settings: RuntimeSettings) -> RedisLink:
    return settings.redis_link(slot_key=agent_key(settings.namespace, settings.agent, "tasks"))


async def serve(settings: RuntimeSettings) -> int:
    link, reader = _link(settings), _link(settings)
    reader.command_timeout = 5.0 + 1.0  # its reads block for up to a second
    metrics = RuntimeMetrics()
    tracer = build_tracer("kubeagents-runtime", TRACER_NAME)
    toolbox = Toolbox(
        settings.mcp_servers,
        tool_timeout_seconds=settings.tool_timeout_seconds,
        check_seconds=settings.mcp_check_seconds,
    )
    client = anthropic.AsyncAnthropic(
        base_url=settings.proxy_url,
        api_key="kubeagents-runtime",  # ignored: the proxy holds the real key
        max_retries=0,  # the worker retries whole attempts, with backoff
        timeout=settings.task_timeout_seconds,
        # the SDK's aiohttp transport: about a fifth less CPU per call than its default (httpx)
        http_client=anthropic.DefaultAioHttpClient(),
    )
    keys = QueueKeys.of(settings.namespace, settings.agent)
    loop = AgentLoop(settings, client, toolbox, Checkpoints(link, keys), metrics, tracer)
    worker = Worker(settings, link, reader, loop, metrics, tracer)
    queue = TaskQueue(link, namespace=settings.namespace, agent=settings.agent)
    runner = web.AppRunner(
        create_app(worker, queue, toolbox, metrics, task_api=settings.task_api), access_log=None
    )
    stop = stop_on_signals()
    try:
        await toolbox.start(wait_seconds=MCP_CONNECT_WAIT_SECONDS)
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port).start()
        port = runner.addresses[0][1]
        working = asyncio.create_task(worker.run())
        announce(
            f"kubeagents runtime for agent {settings.agent} listening on "
            f"http://{settings.host}:{port}"
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({working, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        await worker.drain()
        working.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await working
    finally:
        await runner.cleanup()
        await toolbox.close()
        await client.close()
        await link.aclose()
        await reader.aclose()
    return 0


def serve_runtime(settings: RuntimeSettings) -> int:
    """Run until SIGTERM; one JSON log line per task attempt on stderr."""
    return run(serve(settings))
