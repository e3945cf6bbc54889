"""`kubeagents fake-anthropic`: the fake Anthropic API as a process (settings and entry point)."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from kubeagents.fake_anthropic.server import create_app
from kubeagents.fake_anthropic.settings import FakeAnthropicSettings
from kubeagents.fake_anthropic.state import FakeState
from kubeagents.process import announce, run, stop_on_signals

LISTENING_LINE = "kubeagents fake-anthropic listening on {url}"


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def _serve(settings: FakeAnthropicSettings) -> int:
    app = create_app(settings, FakeState(settings))
    access_logger: logging.Logger | None = None
    if settings.access_log:
        access_logger = logging.getLogger("aiohttp.access")
    runner = web.AppRunner(
        app,
        access_log=access_logger,
        handler_cancellation=True,
        shutdown_timeout=2.0,
    )
    await runner.setup()
    stop = stop_on_signals()
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
        announce(LISTENING_LINE.format(url=_url(settings.host, port)))
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def serve_fake_anthropic(settings: FakeAnthropicSettings) -> int:
    """Serve until SIGTERM or SIGINT, then return 0 (1 when the address cannot be bound).

    Once listening, prints exactly one line to stdout, `kubeagents fake-anthropic listening on
    http://HOST:PORT`, with the real port when 0 was asked for.
    """
    return run(_serve(settings))
