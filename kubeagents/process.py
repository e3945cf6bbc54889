"""What every long-running `kubeagents` process does the same way: an event loop (uvloop when
installed), SIGTERM/SIGINT as a stop event, JSON log lines on stderr (`kubeagents.logs`), and the
one "listening on …" line on stdout that tests and operators read the port from."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from kubeagents.errors import InvalidLogLevel
from kubeagents.logs import configure_logging, configured_level

EXIT_INVALID_CONFIGURATION = 2


def run(main: Coroutine[Any, Any, int], *, default_log_level: int = logging.INFO) -> int:
    """Run `main` to completion on a fresh event loop; its result is the exit status. The log
    level is `KUBEAGENTS_LOG_LEVEL`, or `default_log_level` when that is unset."""
    try:
        level = configured_level(default_log_level)
    except InvalidLogLevel as error:
        main.close()
        sys.stderr.write(f"kubeagents: invalid configuration: {error}\n")
        return EXIT_INVALID_CONFIGURATION
    configure_logging(level)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with contextlib.suppress(ImportError):
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def announce(line: str) -> None:
    """The process's one line on stdout, flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
