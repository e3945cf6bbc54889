"""Fixtures of the proxy tests: proxies as real processes in front of the fake upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.processes import HarnessError
from harness.proxy import ProxyProcess, StartProxy, start_proxy
from kubeagents.fake_anthropic import FakeAnthropicControl


@pytest.fixture
def start_proxies(
    tmp_path_factory: pytest.TempPathFactory, fake_anthropic: FakeAnthropicControl
) -> Iterator[StartProxy]:
    """Start proxies (`start(**settings)`) in front of the fake; all stopped after the test."""
    started: list[ProxyProcess] = []

    def start(
        name: str = "proxy", extra_env: dict[str, str] | None = None, **settings: Any
    ) -> ProxyProcess:
        try:
            proxy = start_proxy(
                tmp_path_factory.mktemp(name),
                upstream_url=fake_anthropic.base_url,
                settings=settings,
                name=name,
                extra_env=extra_env,
            )
        except HarnessError as error:
            pytest.fail(f"the proxy did not start: {error}", pytrace=False)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
