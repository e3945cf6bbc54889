"""Local processes started by PID, stopped by PID, with their logs kept for failure reports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class HarnessError(RuntimeError):
    """A real part of the test harness could not be started or did not become ready."""


def settings_env(prefix: str, values: Mapping[str, object]) -> dict[str, str]:
    """This process's environment without `prefix`/`OTEL_` variables, plus `values` as a
    `kubeagents` subcommand reads them: `<prefix><FIELD>`, lists and maps as JSON, None left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((prefix, "OTEL_"))}
    for field, value in values.items():
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            env[f"{prefix}{field.upper()}"] = text
    return env


def run_command(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (stdout and stderr as text), with `env` added to ours."""
    return subprocess.run(
        list(argv),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON log lines (`kubeagents.logs`) in a process's output, in order; other lines (the
    listening line, console spans) are left out."""
    records = []
    for line in text.splitlines():
        if not line.startswith('{"time": '):
            continue
        record = json.loads(line)
        if isinstance(record, dict) and {"level", "logger", "message"} <= record.keys():
            records.append(record)
    return records


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> T:
    """Poll `probe` until it returns something other than None or False; fail after `timeout`.

    Exceptions raised by the probe count as "not yet", and the last one is named in the error,
    except HarnessError, which the probe raises to give up at once.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
        except HarnessError:
            raise  # a definitive failure (e.g. the process died): waiting longer cannot help
        except Exception as error:  # noqa: BLE001 - any failure of a probe means "not ready yet"
            last_error, result = error, None
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise HarnessError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


async def poll(probe: Callable[[], Awaitable[T | None]], *, within: float, what: str) -> T:
    """`wait_for` for async probes: await `probe` until it returns something other than
    None/False; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def free_port(*, also_free: Sequence[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that is free now, and whose offsets in `also_free` are free too.

    Redis Cluster needs port+10000 for its bus, hence `also_free=(10000,)`.
    """
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if all(port + offset < 65536 and _port_is_free(port + offset) for offset in also_free):
            return port
    raise HarnessError(f"no free loopback port with free offsets {list(also_free)}")


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ManagedProcess:
    """A child process whose output goes to a log file; stopped by PID with SIGTERM then SIGKILL."""

    registry: list[ManagedProcess] = []  # noqa: RUF012 - every process started in this session

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as error:
                raise HarnessError(f"cannot start {name} ({self.argv[0]}): {error}") from error
        ManagedProcess.registry.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self, start: int = 0) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(start)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_until(self, probe: Callable[[], T | None], *, timeout: float, what: str) -> T:
        """`wait_for(probe)`, but give up at once, with the log's tail, if the process exits."""

        def guarded() -> T | None:
            try:
                result = probe()
            except Exception:
                if not self.alive():
                    raise HarnessError(f"exited with {self.popen.returncode}") from None
                raise
            if (result is None or result is False) and not self.alive():
                raise HarnessError(f"exited with {self.popen.returncode}")
            return result

        try:
            return wait_for(guarded, timeout=timeout, what=what)
        except HarnessError as error:
            raise HarnessError(self.failure_message(str(error))) from None

    def wait_for_log(self, pattern: str, *, timeout: float) -> re.Match[str]:
        """Wait until the log holds a line matching `pattern`."""
        regex = re.compile(pattern, re.MULTILINE)
        return self.wait_until(
            lambda: regex.search(self.log_text()),
            timeout=timeout,
            what=f"{self.name} to log {pattern!r}",
        )

    def failure_message(self, reason: str) -> str:
        tail = "\n".join(self.log_text().splitlines()[-40:])
        return (
            f"{self.name} (pid {self.pid}): {reason}\n--- last lines of {self.log_path} ---\n{tail}"
        )

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL it. Safe to call twice."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self in ManagedProcess.registry:
            ManagedProcess.registry.remove(self)

    def kill(self) -> None:
        """SIGKILL the process group: the crash a real pod can suffer."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
