"""`kubeagents fake-anthropic`: the fake Anthropic API as a process (settings and entry point)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from kubeagents.fake_anthropic.server import create_app
from kubeagents.fake_anthropic.settings import FakeAnthropicSettings
from kubeagents.fake_anthropic.state import FakeState

LISTENING_LINE = "kubeagents fake-anthropic listening on {url}"


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
