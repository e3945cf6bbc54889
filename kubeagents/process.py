"""What every long-running `kubeagents` process does the same way: an event loop (uvloop when
installed), SIGTERM/SIGINT as a stop event, plain-text log lines on stderr, and the one
"listening on …" line on stdout that tests and operators read the port from."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

QUIET_LOGGERS = ("httpx", "httpx2")  # HTTP client libraries log every request at INFO


def run(main: Coroutine[Any, Any, int], *, log_level: int = logging.INFO) -> int:
    """Run `main` to completion on a fresh event loop; its result is the exit status."""
    logging.basicConfig(level=log_level, format="%(message)s", stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
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
