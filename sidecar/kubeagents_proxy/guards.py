"""Admission guards in front of every call: per-pod and per-agent concurrency, requests/minute.

- `PodConcurrency`: an asyncio semaphore with a bounded wait (then 429).
- `AgentConcurrency`: a semaphore across replicas in Redis, made of leases (a sorted set of
  lease id -> expiry), so the slots of a crashed pod free themselves when its leases expire.
- `RequestRate`: a sliding one-minute window of call ids in a Redis sorted set.

Redis keys share the agent's hash tag with the budget ledger:
`kubeagents:{<namespace>/<agent>}:concurrency` and `kubeagents:{<namespace>/<agent>}:rate`.
Time is Redis's, so replicas with skewed clocks agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from kubeagents.agent import agent_key
from kubeagents.redis_link import RedisLink
from kubeagents_proxy.errors import LedgerDown, RateLimited

AGENT_POLL_SECONDS = 0.05

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return {1, 0}
"""


class PodConcurrency:
    """At most `limit` calls at once in this process; waiting at most `wait_seconds`."""

    def __init__(self, limit: int, wait_seconds: float) -> None:
        self.limit = limit
        self.wait_seconds = wait_seconds
        self._semaphore = asyncio.Semaphore(limit)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            if self._semaphore.locked():  # only a call that has to wait pays for a timer
                async with asyncio.timeout(self.wait_seconds):
                    await self._semaphore.acquire()
            else:
                await self._semaphore.acquire()
        except TimeoutError:
            raise RateLimited(
                f"concurrency cap of this pod reached: {self.limit} calls in flight; "
                f"no slot freed within {self.wait_seconds:g}s",
                reason="concurrency_pod",
                retry_after=1,
            ) from None
        try:
            yield
        finally:
            self._semaphore.release()


class AgentConcurrency:
    """At most `limit` calls at once across every replica of the agent (Redis leases)."""

    def __init__(
        self,
        redis: RedisLink,
        *,
        namespace: str,
        agent: str,
        limit: int,
        wait_seconds: float,
        lease_seconds: float,
    ) -> None:
        self.limit = limit
        self.agent = agent
        self.wait_seconds = wait_seconds
        self.lease_ms = int(lease_seconds * 1000)
        self.key = agent_key(namespace, agent, "concurrency")
        self._redis = redis
        self._acquire = redis.register_script(_ACQUIRE)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        lease = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                granted, _ = await self._acquire(
                    keys=[self.key], args=[self.limit, lease, self.lease_ms]
                )
            except (RedisError, OSError) as error:
                raise LedgerDown(
                    f"budget ledger unavailable (per-agent concurrency): {error}"
                ) from None
            if granted:
                break
            if time.monotonic() + AGENT_POLL_SECONDS > deadline:
                raise RateLimited(
                    f"concurrency cap of agent {self.agent} reached: {self.limit} calls in "
                    f"flight across all replicas; no slot freed within {self.wait_seconds:g}s",
                    reason="concurrency_agent",
                    retry_after=1,
                )
            await asyncio.sleep(AGENT_POLL_SECONDS)
        try:
            yield
        finally:
            with contextlib.suppress(RedisError, OSError):  # else the lease expires by itself
                await self._redis.zrem(self.key, lease)


_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) + 60000 - now}
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 61000)
return {1, 0}
"""


class RequestRate:
    """At most `limit` calls in any 60-second window, per agent, across replicas."""

    def __init__(self, redis: RedisLink, *, namespace: str, agent: str, limit: int) -> None:
        self.limit = limit
        self.agent = agent
        self.key = agent_key(namespace, agent, "rate")
        self._admit = redis.register_script(_RATE)

    async def admit(self) -> None:
        try:
            admitted, wait_ms = await self._admit(
                keys=[self.key], args=[self.limit, uuid.uuid4().hex]
            )
        except (RedisError, OSError) as error:
            raise LedgerDown(f"budget ledger unavailable (request rate): {error}") from None
        if not admitted:
            raise RateLimited(
                f"request rate of agent {self.agent} exhausted: {self.limit} calls in the last "
                f"60s; next call possible in {max(1, -(-int(wait_ms) // 1000))}s",
                reason="requests_per_minute",
                retry_after=max(1.0, wait_ms / 1000),
            )
