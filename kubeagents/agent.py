"""Who an agent is, for every process of its pod: its name and namespace, and the Redis key
prefix they give every key of the agent.

`AgentSettings` is the base of each pod process's settings class (`kubeagents proxy`, `probe`,
`runtime`), so the same two variables (`<PREFIX>AGENT`, `<PREFIX>NAMESPACE`) name the agent
everywhere. `agent_key` builds every Redis key of the agent: the `{<namespace>/<agent>}` part is
one Redis Cluster hash tag, so all of an agent's keys live in one slot (docs/architecture.md).
`HttpBaseUrl` and `RedisUrl` are the checked URL types of their settings.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings

from kubeagents.redis_link import Endpoint

AGENT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"  # a Helm release name
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # a Kubernetes namespace


def agent_key(namespace: str, agent: str, name: str) -> str:
    """The Redis key `name` of the agent: `kubeagents:{<namespace>/<agent>}:<name>`."""
    return f"kubeagents:{{{namespace}/{agent}}}:{name}"


class AgentSettings(BaseSettings):
    """The agent a pod process serves (the first two settings of every pod process)."""

    agent: str = Field(
        pattern=AGENT_NAME_PATTERN,
        description="The agent's name (its Helm release); names its keys in Redis.",
    )
    namespace: str = Field(
        default="default",
        pattern=NAMESPACE_PATTERN,
        description="The agent's Kubernetes namespace; with the name it identifies the agent.",
    )


def _http_base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url.rstrip("/")


def _redis_url(url: str) -> str:
    Endpoint.from_url(url)  # ValueError names what is wrong
    return url


HttpBaseUrl = Annotated[str, AfterValidator(_http_base_url)]  # http(s)://…, no trailing slash
RedisUrl = Annotated[
    str, AfterValidator(_redis_url)
]  # redis[s]://[[user]:password@]host[:port][/db]
