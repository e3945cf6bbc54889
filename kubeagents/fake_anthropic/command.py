"""`kubeagents fake-anthropic`: the fake Anthropic API as a process (settings and entry point)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeagents.fake_anthropic.server import create_app
from kubeagents.fake_anthropic.state import FakeState

LISTENING_LINE = "kubeagents fake-anthropic listening on {url}"


class FakeAnthropicSettings(BaseSettings):
    """Configuration of the fake Anthropic Messages API process."""

    model_config = SettingsConfigDict(env_prefix="KUBEAGENTS_FAKE_ANTHROPIC_")

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(
        default=8787,
        ge=0,
        le=65535,
        description="TCP port to listen on; 0 picks a free port (the listening line names it).",
    )
    api_key: str | None = Field(
        default=None,
        description="The only API key accepted (x-api-key or Authorization: Bearer); "
        "unset accepts any non-empty key. Other keys get 401 authentication_error.",
    )
    latency_ms: float = Field(
        default=0,
        ge=0,
        description="Base time to first byte of every /v1/messages reply, in milliseconds "
        "(a script entry can override it).",
    )
    event_delay_ms: float = Field(
        default=0,
        ge=0,
        description="Delay before each stream event after the first, in milliseconds "
        "(a script entry can override it).",
    )
    default_text: str = Field(
        default="Hello from the fake Anthropic API.",
        description="The reply text when nothing is programmed.",
    )
    max_recorded: int = Field(
        default=10_000,
        ge=0,
        description="How many recent requests the fake remembers for GET /_fake/requests "
        "(0 records nothing, for long benchmarks).",
    )
    access_log: bool = Field(
        default=False, description="Log every request to stderr (off: the hot path stays cheap)."
    )

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_unset(cls, value: str | None) -> str | None:
        return value or None


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def _serve(settings: FakeAnthropicSettings) -> int:
    app = create_app(settings, FakeState(settings))
    access_logger: logging.Logger | None = None
    if settings.access_log:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        access_logger = logging.getLogger("aiohttp.access")
    runner = web.AppRunner(
        app,
        access_log=access_logger,
        handler_cancellation=True,
        shutdown_timeout=2.0,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
        try:
            await site.start()
        except OSError as error:
            sys.stderr.write(
                f"kubeagents fake-anthropic: cannot listen on "
                f"{_url(settings.host, settings.port)}: {error}\n"
            )
            return 1
        port = int(runner.addresses[0][1])
        sys.stdout.write(LISTENING_LINE.format(url=_url(settings.host, port)) + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with contextlib.suppress(ImportError):
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def serve_fake_anthropic(settings: FakeAnthropicSettings) -> int:
    """Serve until SIGTERM or SIGINT, then return 0 (1 when the address cannot be bound).

    Once listening, prints exactly one line to stdout, `kubeagents fake-anthropic listening on
    http://HOST:PORT`, with the real port when 0 was asked for.
    """
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(settings))
