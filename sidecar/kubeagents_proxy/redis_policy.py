"""Refuse to meter on a Redis that may evict the budget ledger's keys.

The ledger's keys carry TTLs (so an idle agent's ledger disappears by itself). Under a
`volatile-*` or `allkeys-*` `maxmemory-policy` Redis may evict them first when it runs short of
memory (ElastiCache defaults to `volatile-lru`): a lost `totals` or reservation under-counts the
spend, and the next call could overshoot. So on every new connection (at start and on each
reconnect) the proxy reads the policy with `CONFIG GET maxmemory-policy`:

- `noeviction`: metered as usual;
- anything else, or a server that refuses `CONFIG GET` (managed services often do): the
  connection is refused, so calls get 503 and `/readyz` fails with the reason, unless
  `accept_eviction_risk` is set, in which case a warning is logged once and metering goes on.
"""

from __future__ import annotations

import logging

from redis.exceptions import ConnectionError, ResponseError

from kubeagents.redis_link import SendCommand

log = logging.getLogger("kubeagents.proxy")
SAFE_POLICY = "noeviction"


class EvictionPolicyCheck:
    """The `on_connect` check of the proxy's Redis links."""

    def __init__(self, *, accept_risk: bool) -> None:
        self.accept_risk = accept_risk
        self._last_problem: str | None = None

    async def __call__(self, send: SendCommand) -> None:
        reply = await send("CONFIG", "GET", "maxmemory-policy")
        if isinstance(reply, ResponseError):
            problem = f"cannot read its maxmemory-policy (CONFIG GET answered: {reply})"
        else:
            values = dict(zip(reply[::2], reply[1::2], strict=True)) if reply else {}
            policy = values.get(b"maxmemory-policy", b"").decode() or "unknown"
            if policy == SAFE_POLICY:
                self._last_problem = None
                return
            problem = f"its maxmemory-policy is {policy}, which can evict the budget ledger's keys"
        if self.accept_risk:
            if problem != self._last_problem:
                log.warning("Redis %s; metering anyway (accept_eviction_risk is set)", problem)
            self._last_problem = problem
            return
        message = (
            f"Redis refused for metering: {problem}; set maxmemory-policy noeviction "
            "(or accept the risk with acceptEvictionRisk)"
        )
        if problem != self._last_problem:
            log.error("%s", message)
        self._last_problem = problem
        raise ConnectionError(message)
