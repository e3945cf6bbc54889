"""Fixtures of the operator tests: the two example agents and the operator as real
processes, next to a real control plane."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.agents import AGENTS, Agents, StartAgents
from harness.controlplane import ControlPlane
from harness.processes import HarnessError, ManagedProcess
from harness.proxy import StartProxy
from harness.runtime import RuntimeProcess, start_runtime
from harness.teams import StartOperator, install_operator_crds, start_operator_process


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


@pytest.fixture
def start_operator(
    cluster: ControlPlane, namespace: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartOperator]:
    """`start(ready_log=..., extra_env=..., **settings)`: a `kubeagents operator` process
    watching the test's namespace (the CRDs installed first), started once `ready_log` is in
    its log; every one started is stopped after the test."""
    install_operator_crds(cluster)
    started: list[ManagedProcess] = []

    def start(
        ready_log: str = r"kubeagents operator watching",
        extra_env: dict[str, str] | None = None,
        **settings: Any,
    ) -> ManagedProcess:
        try:
            process = start_operator_process(
                tmp_path_factory.mktemp("operator"), cluster, namespace=namespace,
                redis_url=redis_url, ready_log=ready_log, extra_env=extra_env, settings=settings,
            )  # fmt: skip
        except HarnessError as error:
            pytest.fail(f"the operator did not start: {error}", pytrace=False)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def operator(start_operator: StartOperator) -> ManagedProcess:
    return start_operator()
