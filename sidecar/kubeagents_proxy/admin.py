"""The admin application: `/livez`, `/readyz`, `/metrics` and `/kubeagents/budget`."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from kubeagents.redis_link import RedisLink
from kubeagents_proxy.accounting import RUN_SCOPE, Accountant, parse_run_budget
from kubeagents_proxy.errors import LedgerUnavailable, ProxyRefusal
from kubeagents_proxy.ledger import BudgetLedger, KindState, Scope
from kubeagents_proxy.metrics import ProxyMetrics

READY_TIMEOUT_SECONDS = 2.0


class Admin:
    """The admin handlers of one proxy."""

    def __init__(
        self,
        *,
        agent: str,
        namespace: str,
        redis: RedisLink | None,
        accountant: Accountant,
        metrics: ProxyMetrics,
    ) -> None:
        self.agent = agent
        self.namespace = namespace
        self.redis = redis
        self.accountant = accountant
        self.metrics = metrics

    async def livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {"config": "ok"}
        if self.redis is not None:
            try:
                async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                    await self.redis.ping()
                checks["redis"] = "ok"
            except Exception as error:  # noqa: BLE001 - any failure means not ready
                checks["redis"] = f"unavailable: {type(error).__name__}: {error}"
        ready = all(value == "ok" for value in checks.values())
        return web.json_response(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status=200 if ready else 503,
        )

    async def budget(self, request: web.Request) -> web.Response:
        scopes: list[tuple[BudgetLedger, Scope]] = []
        accountant = self.accountant
        if accountant.ledger is not None and accountant.agent_scope is not None:
            scopes.append((accountant.ledger, accountant.agent_scope))
        run = request.query.get("run")
        if run:
            try:
                run_id = parse_run_budget(f"run={run}").run
            except ProxyRefusal as refusal:
                return web.json_response({"error": refusal.message}, status=400)
            run_ledger = accountant.run_ledger(run_id)
            if run_ledger is not None:
                scopes.append((run_ledger, Scope(RUN_SCOPE, None, None, fixed_limits=True)))
        if not scopes:
            return web.json_response({"agent": self.agent, "budgets": False, "scopes": []})
        try:
            states = [(await ledger.snapshot([scope]))[0] for ledger, scope in scopes]
        except LedgerUnavailable as error:
            return web.json_response({"error": f"budget ledger unavailable: {error}"}, status=503)
        return web.json_response(
            {
                "agent": self.agent,
                "namespace": self.namespace,
                "budgets": True,
                "window_seconds": 86400,
                "scopes": [
                    {
                        "scope": f"run:{run}" if state.scope == RUN_SCOPE else state.scope,
                        "tokens": _kind_json(state.tokens),
                        "usd": _kind_json(state.usd_nanos, scale=1e-9),
                    }
                    for state in states
                ],
            }
        )

    async def refresh_budget_gauges(self) -> None:
        """Read the agent's budget from the ledger into the gauges (before each scrape)."""
        accountant = self.accountant
        if accountant.ledger is not None and accountant.agent_scope is not None:
            try:
                async with asyncio.timeout(1):
                    (state,) = await accountant.ledger.snapshot([accountant.agent_scope])
                for kind, kind_state, scale in (
                    ("tokens", state.tokens, 1.0),
                    ("usd", state.usd_nanos, 1e-9),
                ):
                    for name in ("limit", "used", "reserved", "remaining"):
                        value = getattr(kind_state, name)
                        if value is not None:
                            self.metrics.budget.labels(kind, name).set(value * scale)
            except (LedgerUnavailable, TimeoutError):
                pass  # the gauges keep their last values


def _kind_json(state: KindState, *, scale: float = 1.0) -> dict[str, Any]:
    def scaled(value: int | None) -> float | int | None:
        if value is None:
            return None
        return value * scale if scale != 1.0 else value

    return {
        "limit": scaled(state.limit),
        "used": scaled(state.used),
        "reserved": scaled(state.reserved),
        "remaining": scaled(state.remaining),
        "seconds_until_free": state.seconds_until_free,
    }
