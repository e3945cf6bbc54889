"""Structured logs: one JSON object per line on stderr, the same fields in every process.

Every line has::

    {"time": "2026-11-28T18:44:15.123Z", "level": "info", "logger": "kubeagents.proxy",
     "message": "…"}

A structured event (a proxied call, a task's outcome) also has `"event": "<name>"` and its own
fields at the top level (`"message"` is then the event's name); a logged exception adds
`"exception"` (the formatted traceback). Libraries' records (aiohttp, kopf, the MCP SDK) come out
the same way, through the root logger's one handler.

The level is `KUBEAGENTS_LOG_LEVEL` (`debug`, `info`, `warning`, `error`; default `info`; the
`kubeagents task` commands default to `warning`), the same variable for every process.
`log_event` skips the logging module's machinery: the proxy writes one event per call on its hot
path, where a `LogRecord` and a handler would cost more than the line itself.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from kubeagents.errors import InvalidLogLevel

LEVEL_VARIABLE = "KUBEAGENTS_LOG_LEVEL"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
QUIET_LOGGERS = ("httpx", "httpx2")  # HTTP client libraries log every request at INFO


def configured_level(default: int = logging.INFO, environ: Mapping[str, str] = os.environ) -> int:
    """The level `KUBEAGENTS_LOG_LEVEL` names (`default` when unset or empty)."""
    raw = environ.get(LEVEL_VARIABLE, "").strip().lower()
    if not raw:
        return default
    if raw not in LEVELS:
        raise InvalidLogLevel(f"{LEVEL_VARIABLE}={raw!r}: expected one of {', '.join(LEVELS)}")
    return LEVELS[raw]


def configure_logging(level: int, stream: TextIO | None = None) -> None:
    """Send every record, as a JSON line, to `stream` (stderr), from `level` up."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


class JsonLines(logging.Formatter):
    """A `logging.Formatter` writing the fields above."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"message": record.getMessage()}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return _line(record.created, record.levelname, record.name, fields)


def log_event(logger: logging.Logger, event: str, fields: Mapping[str, Any]) -> None:
    """One structured event at INFO on `logger` (skipped below its level), written at once."""
    if not logger.isEnabledFor(logging.INFO):
        return
    line = _line(time.time(), "INFO", logger.name, {"message": event, "event": event, **fields})
    stream = sys.stderr
    stream.write(line + "\n")
    stream.flush()


def _line(created: float, level: str, logger: str, fields: Mapping[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    millis = int(created % 1 * 1000)
    head = {"time": f"{stamp}.{millis:03d}Z", "level": level.lower(), "logger": logger}
    return json.dumps({**head, **fields}, ensure_ascii=False, default=str)
