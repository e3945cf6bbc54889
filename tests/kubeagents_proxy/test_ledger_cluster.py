"""The rolling budget ledger (kubeagents_proxy.ledger) on a real 3-node Redis Cluster."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio.cluster

from harness.processes import poll
from harness.redis_servers import RedisClusterNodes
from kubeagents.agent import agent_key
from kubeagents.redis_link import RedisLink
from kubeagents_proxy.ledger import (
    BudgetExceeded,
    BudgetLedger,
    Scope,
    SettleOutcome,
)

T = TypeVar("T")


def run_on(
    nodes: RedisClusterNodes,
    factory: Callable[[redis.asyncio.cluster.RedisCluster], Coroutine[Any, Any, T]],
) -> T:
    """Run `factory(client)` in a fresh event loop with a fresh async cluster client."""

    async def main() -> T:
        client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=nodes.ports[0])
        try:
            return await factory(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def agents_on_different_nodes(nodes: RedisClusterNodes) -> tuple[str, str]:
    """Two agent names of namespace `ns` whose hash tags are served by different nodes."""
    with nodes.cluster_client() as client:

        def node_of(agent: str) -> str:
            node = client.get_node_from_key(f"{{ns/{agent}}}")
            assert node is not None
            return str(node.name)

        first = "writer-0"
        for i in range(1, 200):
            other = f"writer-{i}"
            if node_of(other) != node_of(first):
                return first, other
    pytest.fail("no two agent names on different nodes among 200")


def test_cluster_every_key_of_an_agent_is_in_the_slot_of_its_hash_tag(
    redis_cluster: RedisClusterNodes,
) -> None:
    scopes = [
        Scope("agent", token_limit=1_000, usd_nanos_limit=None),
        Scope("run:0f3a-b.c/d", token_limit=None, usd_nanos_limit=5_000),
    ]

    async def scenario(client: redis.asyncio.cluster.RedisCluster) -> list[str]:
        ledger = BudgetLedger(client, namespace="team-a", agent="writer")
        spent = await ledger.reserve(scopes, tokens=10, usd_nanos=1, ttl_seconds=30)
        await ledger.settle(spent, tokens=10, usd_nanos=1)
        await ledger.reserve(scopes, tokens=10, usd_nanos=1, ttl_seconds=30)
        return ledger.keys("agent") + ledger.keys("run:0f3a-b.c/d")

    keys = run_on(redis_cluster, scenario)
    node_clients = redis_cluster.node_clients()
    try:
        tag_slot = node_clients[0].cluster("KEYSLOT", "{team-a/writer}")
        slots = {node_clients[0].cluster("KEYSLOT", key) for key in keys}
        assert slots == {tag_slot}
        # and they are really stored there: all on one node, none anywhere else
        stored = [
            {key.decode() for key in node.scan_iter(match="kubeagents:*")} for node in node_clients
        ]
        holders = [found for found in stored if found]
        assert holders == [set(keys)]
    finally:
        for node in node_clients:
            node.close()


def test_cluster_reserve_refuse_settle_and_expiry(redis_cluster: RedisClusterNodes) -> None:
    scope = Scope("agent", token_limit=1_000, usd_nanos_limit=1_000_000)
    run_scope = Scope("run:r1", token_limit=600, usd_nanos_limit=None)

    async def scenario(client: redis.asyncio.cluster.RedisCluster) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
        kept = await ledger.reserve([scope, run_scope], tokens=400, usd_nanos=10, ttl_seconds=30)
        lost = await ledger.reserve([scope, run_scope], tokens=100, usd_nanos=20, ttl_seconds=0.2)
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([scope, run_scope], tokens=200, usd_nanos=0, ttl_seconds=30)
        # `lost` may have expired (and been charged) already: either way 500 count
        assert refusal.value.scope == "run:r1"
        assert refusal.value.used + refusal.value.reserved == 500
        assert await ledger.settle(kept, tokens=300, usd_nanos=5) is SettleOutcome.SETTLED
        assert await ledger.settle(kept, tokens=300, usd_nanos=5) is (
            SettleOutcome.ALREADY_SETTLED_OR_EXPIRED
        )

        async def lost_is_charged() -> bool:
            states = await ledger.snapshot([scope, run_scope])
            return all(
                (s.tokens.used, s.tokens.reserved, s.usd_nanos.used) == (400, 0, 25) for s in states
            )

        await poll(lost_is_charged, within=10, what="the expired reservation to be charged")
        assert await ledger.settle(lost, tokens=1, usd_nanos=1) is (
            SettleOutcome.ALREADY_SETTLED_OR_EXPIRED
        )

    run_on(redis_cluster, scenario)


def test_cluster_concurrent_reserve_and_settle_never_overshoot_for_two_agents_on_two_nodes(
    redis_cluster: RedisClusterNodes,
) -> None:
    agents = agents_on_different_nodes(redis_cluster)
    scopes = [
        Scope("agent", token_limit=40_000, usd_nanos_limit=2_000_000_000),
        Scope("run:burst", token_limit=30_000, usd_nanos_limit=None),
    ]
    rng = random.Random(7)  # noqa: S311 - request sizes, not secrets

    async def main() -> None:
        # what the proxies use: one RedisLink per proxy, each seeded with another node
        links = {
            agent: [
                RedisLink(
                    f"redis://127.0.0.1:{port}",
                    cluster=True,
                    slot_key=agent_key("ns", agent, "ledger"),
                )
                for port in redis_cluster.ports
            ]
            for agent in agents
        }
        try:
            ledgers = {
                agent: [BudgetLedger(link, namespace="ns", agent=agent) for link in links[agent]]
                for agent in agents
            }
            settled: dict[str, list[tuple[int, int]]] = {agent: [] for agent in agents}
            refused: dict[str, list[BudgetExceeded]] = {agent: [] for agent in agents}

            async def one(i: int) -> None:
                agent = agents[i % 2]
                ledger = ledgers[agent][i % 3]
                tokens = rng.randint(100, 1_000)
                usd = rng.randint(1_000_000, 40_000_000)
                try:
                    reservation = await ledger.reserve(
                        scopes, tokens=tokens, usd_nanos=usd, ttl_seconds=60
                    )
                except BudgetExceeded as error:
                    refused[agent].append(error)
                    return
                await asyncio.sleep(0)
                actual = (rng.randint(0, tokens), rng.randint(0, usd))
                outcome = await ledger.settle(reservation, tokens=actual[0], usd_nanos=actual[1])
                assert outcome is SettleOutcome.SETTLED
                settled[agent].append(actual)

            await asyncio.gather(*(one(i) for i in range(500)))

            for agent in agents:
                assert refused[agent], f"{agent}: every request fit, the test proves nothing"
                for error in refused[agent]:
                    assert error.used + error.reserved + error.requested > error.limit
                charged_tokens = sum(t for t, _ in settled[agent])
                charged_usd = sum(u for _, u in settled[agent])
                assert charged_tokens <= 30_000
                assert charged_usd <= 2_000_000_000
                for state in await ledgers[agent][0].snapshot(scopes):
                    assert state.tokens.reserved == state.usd_nanos.reserved == 0
                    assert (state.tokens.used, state.usd_nanos.used) == (
                        charged_tokens,
                        charged_usd,
                    )
        finally:
            for agent_links in links.values():
                for link in agent_links:
                    await link.aclose()

    asyncio.run(main())
