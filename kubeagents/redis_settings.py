"""`RedisSettings`: the Redis settings of every process, and the one place they are checked.

Each settings class with a Redis (the proxy, the probe, the runtime, the operator, the `task`
commands) inherits it, so each has the same fields under its own prefix:

- `<PREFIX>REDIS_URL`: `redis://`, `rediss://` (TLS), or `redis[s]+sentinel://` (Sentinel); each
  process states whether it is required and its default by redeclaring the field;
- `<PREFIX>REDIS_CLUSTER`: the URL points at a Redis Cluster (which has no database number);
- `<PREFIX>REDIS_SENTINEL_PASSWORD`: the Sentinels' own password (`requirepass` in
  sentinel.conf), apart from the master's, which the URL carries;
- `<PREFIX>REDIS_TLS_CA_FILE`: a PEM bundle of the CAs that sign the server's certificate, for a
  TLS URL (unset: the system's CAs).

An empty value of the last two is unset. A combination that cannot work is an invalid
configuration, named before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from kubeagents.agent import RedisUrl
from kubeagents.redis_link import Endpoint, RedisLink


class RedisSettings(BaseSettings):
    """The Redis fields of a process's settings (its own prefix comes from the subclass)."""

    redis_url: RedisUrl | None = Field(default=None, description="The Redis to use.")
    redis_cluster: bool = Field(default=False, description="Redis URL points at a Redis Cluster.")
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        description="Password of the Redis Sentinels (their requirepass), for a "
        "redis+sentinel:// URL; the master's password goes in the URL.",
    )
    redis_tls_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CAs that sign the Redis server's TLS certificate, for a "
        "rediss:// URL (unset: the system's CAs).",
    )

    @field_validator("redis_sentinel_password", "redis_tls_ca_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value  # an empty variable (a chart's default) is unset

    @model_validator(mode="after")
    def _redis_settings_fit_together(self) -> Self:
        if self.redis_url is None:
            extra = [
                name
                for name in ("redis_sentinel_password", "redis_tls_ca_file")
                if getattr(self, name) is not None
            ]
            if extra:
                raise ValueError(f"{', '.join(extra)} set, but no redis_url")
            return self
        endpoint = Endpoint.from_url(self.redis_url)
        if self.redis_cluster and endpoint.sentinels:
            raise ValueError("redis_url: a Sentinel URL names no Redis Cluster; drop redis_cluster")
        if self.redis_cluster and endpoint.db:
            raise ValueError("redis_url: a Redis Cluster has no databases; drop the /<db> part")
        if self.redis_sentinel_password is not None and not endpoint.sentinels:
            raise ValueError("redis_sentinel_password needs a redis+sentinel:// URL")
        if self.redis_tls_ca_file is not None:
            if not endpoint.tls:
                raise ValueError(
                    "redis_tls_ca_file needs a TLS URL (rediss:// or rediss+sentinel://)"
                )
            if not self.redis_tls_ca_file.is_file():
                raise ValueError(f"redis_tls_ca_file: {self.redis_tls_ca_file} is not a file")
        return self

    def redis_link(self, *, slot_key: str = "", **options: Any) -> RedisLink:
        """A `RedisLink` to this Redis for the keys of `slot_key`'s slot (`options`: timeouts,
        `on_connect`)."""
        if self.redis_url is None:
            raise ValueError("redis_url is not set")
        password = self.redis_sentinel_password
        return RedisLink(
            self.redis_url,
            cluster=self.redis_cluster,
            slot_key=slot_key,
            sentinel_password=None if password is None else password.get_secret_value(),
            tls_ca_file=None if self.redis_tls_ca_file is None else str(self.redis_tls_ca_file),
            **options,
        )
