"""`McpServer`: one configured MCP server.

One `McpServer` per server; camelCase keys are accepted, as in Helm values::

    name: search                    # [a-z0-9-]{1,63}
    transport: http                 # "http" (streamable HTTP) or "stdio"
    url: https://search.example/mcp # http only
    headers: {X-Team: research}     # http only: fixed request headers
    headerFiles:                    # http only: header -> file whose stripped content is the
      Authorization: /var/run/secrets/search/authorization   # value, read at every connect
    command: [search-mcp, --stdio]  # stdio only: argv of the server process
    env: {SEARCH_INDEX: docs}       # stdio only: added to a minimal environment (PATH, HOME, ...)
    tools: [search, fetch]          # optional allow-list; omitted or null = every tool
    timeoutSeconds: 10              # bounds connecting (+ listing tools) and each request
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

__all__ = ["McpServer"]

# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class McpServer(BaseModel):
    """One configured MCP server (see the module docstring)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel
    )

    name: str = Field(pattern=r"^[a-z0-9-]{1,63}$")
    transport: Literal["http", "stdio"]
    url: str | None = None
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    header_files: dict[str, Path] = Field(default_factory=dict)
    tools: list[str] | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {url!r}")
        return url

    @field_validator("command")
    @classmethod
    def _argv(cls, command: list[str] | None) -> list[str] | None:
        if command is not None and (not command or not command[0]):
            raise ValueError("must name the program to run, e.g. [my-mcp-server, --stdio]")
        return command

    @field_validator("headers", "header_files")
    @classmethod
    def _header_names(cls, headers: dict[str, Any]) -> dict[str, Any]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if isinstance(value, str) and ("\n" in value or "\r" in value):
                raise ValueError(f"the value of header {name!r} contains a line break")
        return headers

    @model_validator(mode="after")
    def _fits_transport(self) -> McpServer:
        if self.url is not None and self.command is not None:
            raise ValueError(
                "url and command are both set: use url (transport http) or command (stdio)"
            )
        if self.transport == "http":
            if self.url is None:
                raise ValueError("url is required when transport is 'http'")
            if self.command is not None or self.env:
                raise ValueError("command and env apply only to transport 'stdio'")
            both = {h.lower() for h in self.headers} & {h.lower() for h in self.header_files}
            if both:
                raise ValueError(f"headers and headerFiles both set {sorted(both)}")
        else:
            if self.command is None:
                raise ValueError("command is required when transport is 'stdio'")
            if self.url is not None:
                raise ValueError("url applies only to transport 'http'")
            if self.headers or self.header_files:
                raise ValueError("headers and headerFiles apply only to transport 'http'")
        return self

    def allows_tool(self, name: str) -> bool:
        """Whether the allow-list (`tools`) lets `name` through; no allow-list allows all."""
        return self.tools is None or name in self.tools
