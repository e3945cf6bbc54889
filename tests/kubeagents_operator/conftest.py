"""Fixtures of the operator tests: the two example agents as real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.agents import AGENTS, Agents, StartAgents
from harness.processes import HarnessError
from harness.proxy import StartProxy
from harness.runtime import RuntimeProcess, start_runtime


@pytest.fixture
def start_agents(
    start_proxies: StartProxy, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartAgents]:
    """`start(namespace)`: a proxy and a runtime for each agent of `AGENTS`, in `namespace`,
    sharing the test's Redis; all stopped after the test."""
    runtimes: list[RuntimeProcess] = []

    def start(namespace: str) -> Agents:
        started: Agents = {}
        try:
            for agent in AGENTS:
                proxy = start_proxies(
                    f"proxy-{agent}",
                    agent=agent,
                    namespace=namespace,
                    redis_url=redis_url,
                    budget_tokens_per_day=10**7,
                )
                runtime = start_runtime(
                    tmp_path_factory.mktemp(agent),
                    proxy_url=proxy.url,
                    redis_url=redis_url,
                    settings={"agent": agent, "namespace": namespace, "max_tokens": 200},
                    name=f"runtime-{agent}",
                )
                runtimes.append(runtime)
                started[agent] = (proxy, runtime)
        except HarnessError as error:
            pytest.fail(f"an agent did not start: {error}", pytrace=False)
        return started

    yield start
    for runtime in runtimes:
        runtime.stop()
