"""The rolling budget ledger (kubeagents_proxy.ledger) on a real 3-node Redis Cluster, reached
through `RedisLink`s in cluster mode as the proxy reaches it: one link per hash tag."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from harness.processes import poll
from harness.redis_servers import RedisClusterNodes
from kubeagents.redis_link import RedisLink
from kubeagents_proxy.errors import BudgetExceeded, LedgerUnavailable, LimitMismatch
from kubeagents_proxy.ledger import RUN_SCOPE, BudgetLedger, Reservation, Scope, SettleOutcome

T = TypeVar("T")


def link_to(nodes: RedisClusterNodes, prefix: str, seed: int = 0) -> RedisLink:
    """What a proxy uses: a cluster link to the node of `prefix`'s slot, seeded with one node."""
    return RedisLink(f"redis://127.0.0.1:{nodes.ports[seed]}", cluster=True, slot_key=prefix)


def run_on(
    nodes: RedisClusterNodes,
    prefix: str,
    factory: Callable[[RedisLink], Coroutine[Any, Any, T]],
) -> T:
    """Run `factory(link)` in a fresh event loop with a fresh link to `prefix`'s node."""

    async def main() -> T:
        link = link_to(nodes, prefix)
        try:
            return await factory(link)
        finally:
            await link.aclose()

    return asyncio.run(main())


def node_of(nodes: RedisClusterNodes, prefix: str) -> str:
    with nodes.cluster_client() as client:
        node = client.get_node_from_key(prefix)
        assert node is not None
        return str(node.name)


def agents_on_different_nodes(nodes: RedisClusterNodes) -> tuple[str, str]:
    """Two agent names of namespace `ns` whose hash tags are served by different nodes."""
    first = "writer-0"
    for i in range(1, 200):
        other = f"writer-{i}"
        if node_of(nodes, BudgetLedger.agent_prefix("ns", other)) != node_of(
            nodes, BudgetLedger.agent_prefix("ns", first)
        ):
            return first, other
    pytest.fail("no two agent names on different nodes among 200")


def run_on_another_node(nodes: RedisClusterNodes, agent: str) -> str:
    """A run id of namespace `ns` whose ledger is served by another node than `agent`'s."""
    agent_node = node_of(nodes, BudgetLedger.agent_prefix("ns", agent))
    for i in range(200):
        run = f"team/r-{i}"
        if node_of(nodes, BudgetLedger.run_prefix("ns", run)) != agent_node:
            return run
    pytest.fail("no run id on another node than the agent among 200")


def stored_keys(nodes: RedisClusterNodes) -> list[set[str]]:
    """The ledger keys stored on each node."""
    node_clients = nodes.node_clients()
    try:
        return [
            {key.decode() for key in node.scan_iter(match="kubeagents:*")} for node in node_clients
        ]
    finally:
        for node in node_clients:
            node.close()


def run_scope(tokens: int | None = None, usd_nanos: int | None = None) -> Scope:
    return Scope(RUN_SCOPE, token_limit=tokens, usd_nanos_limit=usd_nanos, fixed_limits=True)


def test_cluster_every_key_of_a_ledger_is_in_the_slot_of_its_hash_tag(
    redis_cluster: RedisClusterNodes,
) -> None:
    scopes = [
        Scope("agent", token_limit=1_000, usd_nanos_limit=None),
        Scope("run:0f3a-b.c/d", token_limit=None, usd_nanos_limit=5_000),
    ]
    prefix = BudgetLedger.agent_prefix("team-a", "writer")

    async def scenario(link: RedisLink) -> list[str]:
        ledger = BudgetLedger.for_agent(link, namespace="team-a", agent="writer")
        spent = await ledger.reserve(scopes, tokens=10, usd_nanos=1, ttl_seconds=30)
        await ledger.settle(spent, tokens=10, usd_nanos=1)
        await ledger.reserve(scopes, tokens=10, usd_nanos=1, ttl_seconds=30)
        return ledger.keys("agent") + ledger.keys("run:0f3a-b.c/d")

    keys = run_on(redis_cluster, prefix, scenario)
    node_clients = redis_cluster.node_clients()
    try:
        tag_slot = node_clients[0].cluster("KEYSLOT", "{team-a/writer}")
        slots = {node_clients[0].cluster("KEYSLOT", key) for key in keys}
        assert slots == {tag_slot}
    finally:
        for node in node_clients:
            node.close()
    # and they are really stored there: all on one node, none anywhere else
    holders = [found for found in stored_keys(redis_cluster) if found]
    assert holders == [set(keys)]


def test_cluster_reserve_refuse_settle_and_expiry(redis_cluster: RedisClusterNodes) -> None:
    scope = Scope("agent", token_limit=1_000, usd_nanos_limit=1_000_000)
    run_scope = Scope("run:r1", token_limit=600, usd_nanos_limit=None)

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        kept = await ledger.reserve([scope, run_scope], tokens=400, usd_nanos=10, ttl_seconds=30)
        lost = await ledger.reserve([scope, run_scope], tokens=100, usd_nanos=20, ttl_seconds=0.2)
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([scope, run_scope], tokens=200, usd_nanos=0, ttl_seconds=30)
        # `lost` may have expired (and been charged) already: either way 500 count
        assert refusal.value.scope == "run:r1"
        assert refusal.value.used + refusal.value.reserved == 500
        assert await ledger.settle(kept, tokens=300, usd_nanos=5) is SettleOutcome.SETTLED
        assert await ledger.settle(kept, tokens=300, usd_nanos=5) is (SettleOutcome.ALREADY_SETTLED)

        async def lost_is_charged() -> bool:
            states = await ledger.snapshot([scope, run_scope])
            return all(
                (s.tokens.used, s.tokens.reserved, s.usd_nanos.used) == (400, 0, 25) for s in states
            )

        await poll(lost_is_charged, within=10, what="the expired reservation to be charged")
        assert await ledger.settle(lost, tokens=1, usd_nanos=1) is SettleOutcome.ALREADY_SETTLED

    run_on(redis_cluster, BudgetLedger.agent_prefix("ns", "writer"), scenario)


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
                link_to(redis_cluster, BudgetLedger.agent_prefix("ns", agent), seed)
                for seed in range(len(redis_cluster.ports))
            ]
            for agent in agents
        }
        try:
            ledgers = {
                agent: [
                    BudgetLedger.for_agent(link, namespace="ns", agent=agent)
                    for link in links[agent]
                ]
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


def test_cluster_a_run_ledger_on_another_node_than_the_agents_works_through_its_own_link(
    redis_cluster: RedisClusterNodes,
) -> None:
    """Two proxies (of two agents) each reserve in their agent's ledger and in the shared run
    ledger, which lives on another node: four links, each to the node of its hash tag."""
    agents = agents_on_different_nodes(redis_cluster)
    run = run_on_another_node(redis_cluster, agents[0])
    run_prefix = BudgetLedger.run_prefix("ns", run)

    async def main() -> None:
        agent_links = [
            link_to(redis_cluster, BudgetLedger.agent_prefix("ns", agent), seed)
            for seed, agent in enumerate(agents)
        ]
        run_links = [link_to(redis_cluster, run_prefix, seed) for seed in (1, 2)]
        try:
            agent_ledgers = [
                BudgetLedger.for_agent(link, namespace="ns", agent=agent)
                for link, agent in zip(agent_links, agents, strict=True)
            ]
            run_ledgers = [
                BudgetLedger.for_run(link, namespace="ns", run=run) for link in run_links
            ]
            agent_scope = Scope("agent", token_limit=10_000, usd_nanos_limit=None)

            async def call(proxy: int, tokens: int, run_limit: Scope) -> list[Reservation]:
                held = [
                    await agent_ledgers[proxy].reserve(
                        [agent_scope], tokens=tokens, usd_nanos=0, ttl_seconds=30
                    )
                ]
                try:
                    held.append(
                        await run_ledgers[proxy].reserve(
                            [run_limit], tokens=tokens, usd_nanos=0, ttl_seconds=30
                        )
                    )
                except Exception:
                    await agent_ledgers[proxy].settle(held[0], tokens=0, usd_nanos=0)
                    raise
                return held

            # the first call fixes the run's limit; the other agent's proxy names none
            first = await call(0, 600, run_scope(tokens=1_000))
            second = await call(1, 300, run_scope())
            with pytest.raises(BudgetExceeded) as refusal:
                await call(1, 200, run_scope())
            assert (refusal.value.scope, refusal.value.limit, refusal.value.reserved) == (
                RUN_SCOPE,
                1_000,
                900,
            )
            with pytest.raises(LimitMismatch) as mismatch:
                await call(0, 1, run_scope(tokens=5_000))
            assert mismatch.value.stored_token_limit == 1_000
            for proxy, held in ((0, first), (1, second)):
                agent_reservation, run_reservation = held
                assert (
                    await agent_ledgers[proxy].settle(agent_reservation, tokens=100, usd_nanos=0)
                    is SettleOutcome.SETTLED
                )
                assert (
                    await run_ledgers[proxy].settle(run_reservation, tokens=100, usd_nanos=0)
                    is SettleOutcome.SETTLED
                )
            (state,) = await run_ledgers[1].snapshot([run_scope()])
            assert (state.tokens.limit, state.tokens.used, state.tokens.reserved) == (1_000, 200, 0)
            for ledger in agent_ledgers:
                (state,) = await ledger.snapshot([agent_scope])
                assert (state.tokens.used, state.tokens.reserved) == (100, 0)
        finally:
            for link in agent_links + run_links:
                await link.aclose()

    asyncio.run(main())
    # the run's keys are all on one node, and it is not the node of agent 0's keys
    holders = [found for found in stored_keys(redis_cluster) if any(run_prefix in k for k in found)]
    assert len(holders) == 1
    assert all(key.startswith(run_prefix) or "{ns/writer-" in key for key in holders[0])
    assert not any(key.startswith(BudgetLedger.agent_prefix("ns", agents[0])) for key in holders[0])


def test_cluster_a_lost_reservation_is_recorded_and_tombstoned(
    redis_cluster: RedisClusterNodes,
) -> None:
    """The node holding a run's ledger lost it (restarted empty, failed over): the settle of a
    call in flight still records its usage, once, and its id cannot be reserved again."""
    prefix = BudgetLedger.run_prefix("ns", "team/lost")

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_run(link, namespace="ns", run="team/lost")
        reservation = await ledger.reserve(
            [run_scope(tokens=10_000)], tokens=3_000, usd_nanos=40, ttl_seconds=30
        )
        for key in ledger.keys(RUN_SCOPE):
            await link.execute("DEL", key)
        outcome = await ledger.settle(reservation, tokens=2_500, usd_nanos=30)
        assert outcome is SettleOutcome.RECORDED_WITHOUT_RESERVATION
        assert await ledger.settle(reservation, tokens=2_500, usd_nanos=30) is (
            SettleOutcome.ALREADY_SETTLED
        )
        (state,) = await ledger.snapshot([run_scope()])
        assert (state.tokens.used, state.usd_nanos.used, state.tokens.reserved) == (2_500, 30, 0)
        with pytest.raises(LedgerUnavailable, match="settled already"):
            await ledger.reserve(
                [run_scope()],
                tokens=3_000,
                usd_nanos=40,
                ttl_seconds=30,
                reservation_id=reservation.id,
            )
        # the limits went with the keys: the next call that names one fixes them again
        await ledger.reserve([run_scope(tokens=2_600)], tokens=100, usd_nanos=0, ttl_seconds=30)
        with pytest.raises(BudgetExceeded):
            await ledger.reserve([run_scope()], tokens=1, usd_nanos=0, ttl_seconds=30)

    run_on(redis_cluster, prefix, scenario)


def test_cluster_fixed_limits_and_tombstones_survive_a_link_per_proxy(
    redis_cluster: RedisClusterNodes,
) -> None:
    """Three proxies, each seeded with another node, share one run ledger: the limit stored by
    one holds for all, and a settle by one is final for all."""
    prefix = BudgetLedger.run_prefix("ns", "team/shared")

    async def main() -> None:
        links = [link_to(redis_cluster, prefix, seed) for seed in range(3)]
        try:
            ledgers = [
                BudgetLedger.for_run(link, namespace="ns", run="team/shared") for link in links
            ]
            held = await ledgers[0].reserve(
                [run_scope(usd_nanos=1_000)], tokens=0, usd_nanos=400, ttl_seconds=30
            )
            with pytest.raises(LimitMismatch) as mismatch:
                await ledgers[1].reserve(
                    [run_scope(usd_nanos=2_000)], tokens=0, usd_nanos=1, ttl_seconds=30
                )
            assert (mismatch.value.stored_token_limit, mismatch.value.stored_usd_nanos_limit) == (
                None,
                1_000,
            )
            with pytest.raises(BudgetExceeded):
                await ledgers[2].reserve([run_scope()], tokens=0, usd_nanos=601, ttl_seconds=30)
            assert await ledgers[1].settle(held, tokens=0, usd_nanos=100) is SettleOutcome.SETTLED
            assert await ledgers[2].settle(held, tokens=0, usd_nanos=100) is (
                SettleOutcome.ALREADY_SETTLED
            )
            (state,) = await ledgers[0].snapshot([run_scope()])
            assert (state.usd_nanos.limit, state.usd_nanos.used, state.usd_nanos.remaining) == (
                1_000,
                100,
                900,
            )
        finally:
            for link in links:
                await link.aclose()

    asyncio.run(main())
