"""Fixtures of the probe tests: probes as real processes next to a real proxy and redis-server,
in front of the fake upstream (which answers READY unless a test scripts otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.probe import ProbeProcess, StartProbe, start_probe
from harness.processes import HarnessError
from harness.proxy import ProxyProcess, StartProxy
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply


@pytest.fixture
def ready_fake(fake_anthropic: FakeAnthropicControl) -> FakeAnthropicControl:
    """The fake, answering every unscripted call with the default validator's expected reply."""
    fake_anthropic.set_default(Reply.with_text("READY", input_tokens=30, output_tokens=2))
    return fake_anthropic


@pytest.fixture
def proxy(
    start_proxies: StartProxy, redis_url: str, ready_fake: FakeAnthropicControl
) -> ProxyProcess:
    """The pod's proxy, with a large budget on the test's Redis."""
    return start_proxies(redis_url=redis_url, budget_tokens_per_day=10_000_000)


@pytest.fixture
def start_probes(
    tmp_path_factory: pytest.TempPathFactory, proxy: ProxyProcess, redis_url: str
) -> Iterator[StartProbe]:
    """Start probes (`start(name=..., **settings)`) next to `proxy`; stopped after the test.
    Defaults: shared verdict in the test's Redis, 1 s path checks, no jitter."""
    started: list[ProbeProcess] = []

    def start(name: str = "probe", **settings: Any) -> ProbeProcess:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "path_interval_seconds": 0.5,
            "interval_seconds": 2,
            "timeout_seconds": 5,
            **settings,
        }
        proxy_urls = {
            "proxy_url": values.pop("proxy_url", proxy.url),
            "proxy_admin_url": values.pop("proxy_admin_url", proxy.admin_url),
        }
        try:
            probe = start_probe(
                tmp_path_factory.mktemp(name), **proxy_urls, settings=values, name=name
            )
        except HarnessError as error:
            pytest.fail(f"the probe did not start: {error}", pytrace=False)
        started.append(probe)
        return probe

    yield start
    for probe in started:
        probe.stop()


@pytest.fixture
def runtime_defaults() -> dict[str, Any]:
    """`start_runtimes` (tests/conftest.py) starts runtimes whose `/status` the probe's `mcp`
    check reads; they list their MCP servers' tools every 0.3 s, so a dead server shows soon."""
    return {"mcp_check_seconds": 0.3}
