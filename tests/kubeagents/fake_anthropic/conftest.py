"""Clients of the fake Anthropic API (started by the shared `fake_anthropic` fixture), and
`start_fake` for tests that need a fake process with settings of their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anthropic
import httpx
import pytest

from harness.fake_anthropic import start_fake_anthropic
from harness.processes import ManagedProcess
from kubeagents.fake_anthropic import FakeAnthropicControl

StartFake = Callable[..., FakeAnthropicControl]


@pytest.fixture
def client(fake_anthropic: FakeAnthropicControl) -> Iterator[anthropic.Anthropic]:
    """The official SDK pointed at the fake, without retries (tests stay fast)."""
    with anthropic.Anthropic(
        api_key="test-key", base_url=fake_anthropic.base_url, max_retries=0
    ) as sdk:
        yield sdk


@pytest.fixture
def http(fake_anthropic: FakeAnthropicControl) -> Iterator[httpx.Client]:
    """A raw HTTP client for what the SDK hides (no default API headers)."""
    with httpx.Client(base_url=fake_anthropic.base_url, timeout=10) as raw:
        yield raw


@pytest.fixture(scope="session")
def start_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartFake]:
    """`start_fake(*options)`: another fake process on a free port with extra command-line
    options; its control client. Every fake started is stopped at the end of the session."""
    started: list[tuple[ManagedProcess, FakeAnthropicControl]] = []

    def start(*options: str) -> FakeAnthropicControl:
        log_dir = tmp_path_factory.mktemp("fake-anthropic-own-settings")
        process, control = start_fake_anthropic(log_dir, *options)
        started.append((process, control))
        return control

    yield start
    for process, control in started:
        control.close()
        process.stop()
