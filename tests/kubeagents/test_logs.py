"""Every process logs JSON lines with the same fields, at the level KUBEAGENTS_LOG_LEVEL names."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from harness.processes import ManagedProcess, log_records, run_command
from kubeagents.errors import InvalidLogLevel
from kubeagents.logs import (
    JsonLines,
    configure_logging,
    configured_level,
    log_event,
)

KUBEAGENTS = Path(sys.executable).parent / "kubeagents"


def test_a_record_is_one_json_line_with_time_level_logger_and_message() -> None:
    record = logging.LogRecord("kubeagents.proxy", logging.WARNING, "", 0, "%s down", ("x",), None)
    record.created = 1_795_000_000.25
    line = JsonLines().format(record)
    assert json.loads(line) == {
        "time": "2026-11-18T11:06:40.250Z",
        "level": "warning",
        "logger": "kubeagents.proxy",
        "message": "x down",
    }
    assert "\n" not in line


def test_an_exception_is_kept_in_the_same_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, "", 0, "failed", (), sys.exc_info())
    document = json.loads(JsonLines().format(record))
    assert document["message"] == "failed"
    assert "RuntimeError: boom" in document["exception"]


def test_an_event_has_its_fields_at_the_top_level_and_honours_the_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = logging.getLogger("kubeagents.test-events")
    logger.setLevel(logging.INFO)
    log_event(logger, "call", {"agent": "a", "tokens": 12})
    logger.setLevel(logging.WARNING)
    log_event(logger, "call", {"agent": "b", "tokens": 1})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    document = json.loads(lines[0])
    assert document["event"] == document["message"] == "call"
    assert (document["level"], document["logger"]) == ("info", "kubeagents.test-events")
    assert (document["agent"], document["tokens"]) == ("a", 12)


@pytest.mark.parametrize(
    ("raw", "level"),
    [("", logging.INFO), ("debug", logging.DEBUG), (" WARNING ", logging.WARNING)],
)
def test_the_level_comes_from_kubeagents_log_level(raw: str, level: int) -> None:
    assert configured_level(environ={"KUBEAGENTS_LOG_LEVEL": raw}) == level


def test_an_unknown_level_is_named_in_the_error() -> None:
    with pytest.raises(InvalidLogLevel, match=r"KUBEAGENTS_LOG_LEVEL='loud': expected one of"):
        configured_level(environ={"KUBEAGENTS_LOG_LEVEL": "loud"})


def test_configure_logging_sends_library_records_through_the_same_formatter() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(logging.INFO, stream)
        logging.getLogger("aiohttp.access").info("GET / 200")
        logging.getLogger("kubeagents.x").debug("hidden")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["GET / 200"]


def test_a_process_with_an_unknown_level_exits_2_and_says_why() -> None:
    result = run_command(
        [str(KUBEAGENTS), "fake-anthropic", "--port", "0"], env={"KUBEAGENTS_LOG_LEVEL": "loud"}
    )
    assert result.returncode == 2
    assert "invalid configuration: KUBEAGENTS_LOG_LEVEL='loud'" in result.stderr
    assert "listening" not in result.stdout


def test_a_process_writes_only_json_lines_on_stderr(tmp_path: Path) -> None:
    process = ManagedProcess(
        "fake-anthropic (access log)",
        [str(KUBEAGENTS), "fake-anthropic", "--port", "0", "--access-log", "true"],
        tmp_path / "fake.log",
        env={**os.environ, "KUBEAGENTS_LOG_LEVEL": "info"},
    )
    try:
        base_url = process.wait_for_log(r"listening on (http://\S+)", timeout=30).group(1)
        assert httpx.get(f"{base_url}/_fake/health").json() == {"status": "ok"}
        process.wait_for_log(r"_fake/health", timeout=30)
        os.kill(process.pid, signal.SIGTERM)
        assert process.popen.wait(timeout=10) == 0
        lines = [line for line in process.log_text().splitlines() if "listening on" not in line]
        records = log_records(process.log_text())
        assert lines
        assert len(records) == len(lines), lines
        assert any("_fake/health" in r["message"] for r in records)
        assert {r["logger"] for r in records} == {"aiohttp.access"}
    finally:
        process.stop()
