"""`kubeagents proxy`: build the collaborators from the settings and serve both applications."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from opentelemetry import trace

from kubeagents.agent import agent_key
from kubeagents.process import announce, run, stop_on_signals
from kubeagents.redis_link import RedisLink
from kubeagents.telemetry import build_tracer, tracing_requested
from kubeagents_proxy.accounting import Accountant
from kubeagents_proxy.admin import Admin
from kubeagents_proxy.app import ProxyParts, create_proxy
from kubeagents_proxy.call_record import CallRecorder
from kubeagents_proxy.guards import AgentConcurrency, PodConcurrency, RequestRate
from kubeagents_proxy.ledger import BudgetLedger, Scope
from kubeagents_proxy.metrics import ProxyMetrics
from kubeagents_proxy.planning import CallPlanner, CallPricing
from kubeagents_proxy.prices import NANOS_PER_USD, PriceTable
from kubeagents_proxy.redis_policy import EvictionPolicyCheck
from kubeagents_proxy.relay import Relay
from kubeagents_proxy.request_options import RequestOptions
from kubeagents_proxy.server_tools import ServerTools
from kubeagents_proxy.settings import ProxySettings
from kubeagents_proxy.upstream import Upstream

SHUTDOWN_GRACE_SECONDS = 10.0
RUN_LINK_CACHE = 16


class RedisLinks:
    """The proxy's Redis links: one to the node holding the agent's keys, and (on Cluster) one
    per team run's slot, a few kept open. Every link checks the server's eviction policy on
    each new connection (`redis_policy.py`)."""

    def __init__(self, settings: ProxySettings) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.check = EvictionPolicyCheck(accept_risk=settings.accept_eviction_risk)
        self.agent = self._link(agent_key(settings.namespace, settings.agent, "ledger"))
        self._runs: OrderedDict[str, RedisLink] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def _link(self, slot_key: str) -> RedisLink:
        assert self.settings.redis_url is not None
        return self.settings.redis_link(
            slot_key=slot_key,
            connect_timeout=2.0,
            command_timeout=5.0,
            on_connect=self.check,
        )

    def for_run(self, run: str) -> RedisLink:
        """The link to the node holding `run`'s ledger (the agent's link, unless Cluster)."""
        if not self.settings.redis_cluster:
            return self.agent
        link = self._runs.get(run)
        if link is None:
            link = self._link(BudgetLedger.run_prefix(self.settings.namespace, run))
            self._runs[run] = link
            if len(self._runs) > RUN_LINK_CACHE:
                _, oldest = self._runs.popitem(last=False)
                task = asyncio.get_running_loop().create_task(oldest.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        else:
            self._runs.move_to_end(run)
        return link

    async def aclose(self) -> None:
        for link in (self.agent, *self._runs.values()):
            await link.aclose()


def build_parts(
    settings: ProxySettings,
    *,
    upstream: Upstream,
    links: RedisLinks | None,
    metrics: ProxyMetrics,
    tracer: trace.Tracer | None,
) -> ProxyParts:
    """Every collaborator of the handlers, from the settings and the clients."""
    redis = links.agent if links is not None else None
    lease = settings.request_timeout_seconds + settings.reservation_grace_seconds
    prices = PriceTable.with_overrides(settings.prices)
    server_tools = ServerTools(settings.allowed_server_tools)
    agent_scope = (
        Scope(
            name="agent",
            token_limit=settings.budget_tokens_per_day,
            usd_nanos_limit=(
                int(settings.budget_usd_per_day * NANOS_PER_USD)
                if settings.budget_usd_per_day is not None
                else None
            ),
        )
        if settings.budgets_enabled
        else None
    )
    ledger = None
    run_links: Callable[[str], RedisLink] | None = None
    if links is not None:
        ledger = BudgetLedger.for_agent(
            links.agent,
            namespace=settings.namespace,
            agent=settings.agent,
            durable_replicas=settings.durable_replicas,
            durable_timeout_ms=settings.durable_timeout_ms,
        )
        run_links = links.for_run
    accountant = Accountant(
        ledger if settings.budgets_enabled else None,
        agent=settings.agent,
        namespace=settings.namespace,
        agent_scope=agent_scope,
        run_links=run_links,
        reservation_ttl_seconds=lease,
        fail_open=settings.budget_fail_open,
        metrics=metrics,
        durable_replicas=settings.durable_replicas,
        durable_timeout_ms=settings.durable_timeout_ms,
    )
    recorder = CallRecorder(
        metrics, agent=settings.agent, allowed_models=frozenset(settings.allowed_models)
    )
    planner = CallPlanner(
        settings,
        upstream=upstream,
        prices=prices,
        options=RequestOptions(
            allowed_betas=settings.allowed_betas,
            geo_multipliers=settings.inference_geo_multipliers,
        ),
        server_tools=server_tools,
    )
    return ProxyParts(
        planner=planner,
        upstream=upstream,
        pod_concurrency=PodConcurrency(
            settings.max_concurrent_calls, settings.concurrency_wait_seconds
        ),
        agent_concurrency=(
            AgentConcurrency(
                redis,
                namespace=settings.namespace,
                agent=settings.agent,
                limit=settings.max_concurrent_calls_per_agent,
                wait_seconds=settings.concurrency_wait_seconds,
                lease_seconds=lease,
            )
            if settings.max_concurrent_calls_per_agent is not None and redis is not None
            else None
        ),
        rate=(
            RequestRate(
                redis,
                namespace=settings.namespace,
                agent=settings.agent,
                limit=settings.requests_per_minute,
            )
            if settings.requests_per_minute is not None and redis is not None
            else None
        ),
        accountant=accountant,
        relay=Relay(
            upstream=upstream,
            accountant=accountant,
            pricing=CallPricing(server_tools),
            recorder=recorder,
            metrics=metrics,
            request_timeout_seconds=settings.request_timeout_seconds,
        ),
        recorder=recorder,
        admin=Admin(
            agent=settings.agent,
            namespace=settings.namespace,
            redis=redis,
            accountant=accountant,
            metrics=metrics,
        ),
        metrics=metrics,
        tracer=tracer,
        request_timeout_seconds=settings.request_timeout_seconds,
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
    links = RedisLinks(settings) if settings.redis_url is not None else None
    tracer = build_tracer("kubeagents-proxy", "kubeagents.proxy") if tracing_requested() else None
    parts = build_parts(
        settings, upstream=upstream, links=links, metrics=ProxyMetrics(), tracer=tracer
    )
    apps = create_proxy(settings.max_body_bytes, parts)
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
        if links is not None:
            with contextlib.suppress(Exception):  # at start: log the eviction check's verdict
                await links.agent.ping()
        await stop.wait()
    finally:
        await runners[0].cleanup()  # stops taking calls, lets running ones finish
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_GRACE_SECONDS):
                await parts.accountant.drain()
        await runners[1].cleanup()
        await upstream.close()
        if links is not None:
            await links.aclose()
    return 0


def serve_proxy(settings: ProxySettings) -> int:
    """Serve until SIGTERM; JSON log lines (one per call) go to stderr."""
    return run(serve(settings))
