"""Clients of the fake Anthropic API (started by the shared `fake_anthropic` fixture)."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest

from kubeagents.fake_anthropic import FakeAnthropicControl


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
