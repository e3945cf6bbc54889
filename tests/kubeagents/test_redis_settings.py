"""Every process checks its Redis settings the same way (kubeagents.redis_settings)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from harness.processes import run_command
from kubeagents.redis_settings import RedisSettings
from kubeagents.task_command import TaskGetSettings
from kubeagents_operator.settings import OperatorSettings
from kubeagents_probe.settings import ProbeSettings
from kubeagents_proxy.settings import ProxySettings
from kubeagents_runtime.settings import RuntimeSettings

KUBEAGENTS = Path(sys.executable).parent / "kubeagents"

# The settings each process needs besides Redis, so that only the Redis check can fail.
PROCESSES: dict[type[BaseSettings], dict[str, Any]] = {
    ProxySettings: {"agent": "a", "allowed_models": ["claude-sonnet-4-6"], "api_key": "k"},
    ProbeSettings: {"agent": "a", "model": "claude-haiku-4-5"},
    RuntimeSettings: {"agent": "a", "model": "claude-sonnet-4-6"},
    OperatorSettings: {},
    TaskGetSettings: {"agent": "a", "id": "t-1"},
}


def test_every_process_with_a_redis_uses_the_one_mixin() -> None:
    assert all(issubclass(settings, RedisSettings) for settings in PROCESSES)


@pytest.mark.parametrize("settings", list(PROCESSES), ids=lambda s: s.__name__)
@pytest.mark.parametrize(
    ("redis", "problem"),
    [
        (
            {"redis_url": "redis://127.0.0.1:6379/3", "redis_cluster": True},
            "a Redis Cluster has no databases",
        ),
        (
            {"redis_url": "redis+sentinel://127.0.0.1:26379/main", "redis_cluster": True},
            "a Sentinel URL names no Redis Cluster",
        ),
        (
            {"redis_url": "redis://127.0.0.1:6379/0", "redis_sentinel_password": "s"},
            "redis_sentinel_password needs a redis+sentinel:// URL",
        ),
        (
            {"redis_url": "redis://127.0.0.1:6379/0", "redis_tls_ca_file": "/etc/hostname"},
            "redis_tls_ca_file needs a TLS URL",
        ),
        (
            {"redis_url": "rediss://127.0.0.1:6379/0", "redis_tls_ca_file": "/nonexistent.pem"},
            "redis_tls_ca_file: /nonexistent.pem is not a file",
        ),
        ({"redis_url": "http://127.0.0.1:6379"}, "redis URL must start with redis://"),
    ],
)
def test_a_redis_setting_that_cannot_work_is_named(
    settings: type[BaseSettings], redis: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(problem)):
        settings(**PROCESSES[settings], **redis)


@pytest.mark.parametrize("settings", list(PROCESSES), ids=lambda s: s.__name__)
def test_a_sentinel_password_and_a_ca_file_fit_their_urls(
    settings: type[BaseSettings], tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    sentinel = settings(
        **PROCESSES[settings],
        redis_url="rediss+sentinel://:pw@127.0.0.1:26379/main",
        redis_sentinel_password="s",
        redis_tls_ca_file=str(ca),
    )
    assert isinstance(sentinel, RedisSettings)
    assert sentinel.redis_sentinel_password is not None
    assert sentinel.redis_sentinel_password.get_secret_value() == "s"
    assert "'s'" not in repr(sentinel)  # a secret is not shown


def test_the_runtime_refuses_a_cluster_url_with_a_database_before_it_starts() -> None:
    """The runtime's own copy of the settings had lost this check."""
    env = {
        "KUBEAGENTS_RUNTIME_AGENT": "a",
        "KUBEAGENTS_RUNTIME_MODEL": "claude-sonnet-4-6",
        "KUBEAGENTS_RUNTIME_REDIS_URL": "redis://127.0.0.1:1/2",
        "KUBEAGENTS_RUNTIME_REDIS_CLUSTER": "true",
    }
    result = run_command([str(KUBEAGENTS), "runtime"], env=env)
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr
    assert "a Redis Cluster has no databases" in result.stderr
    assert "listening" not in result.stdout


@pytest.mark.parametrize("settings", list(PROCESSES), ids=lambda s: s.__name__)
def test_an_empty_sentinel_password_or_ca_file_is_unset(settings: type[BaseSettings]) -> None:
    """A chart sets every variable; an empty one means the setting is not used."""
    parsed = settings(
        **PROCESSES[settings],
        redis_url="redis://127.0.0.1:6379/0",
        redis_sentinel_password="",
        redis_tls_ca_file="",
    )
    assert isinstance(parsed, RedisSettings)
    assert (parsed.redis_sentinel_password, parsed.redis_tls_ca_file) == (None, None)
