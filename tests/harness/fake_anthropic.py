"""`kubeagents fake-anthropic` as a real process, with the client of its control API."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.processes import ManagedProcess
from kubeagents.fake_anthropic import FakeAnthropicControl

KUBEAGENTS = Path(sys.executable).parent / "kubeagents"


def start_fake_anthropic(
    log_dir: Path, *options: str
) -> tuple[ManagedProcess, FakeAnthropicControl]:
    """Start the fake on a free port with extra command-line `options`."""
    process = ManagedProcess(
        "fake-anthropic",
        [str(KUBEAGENTS), "fake-anthropic", "--port", "0", *options],
        log_dir / "fake-anthropic.log",
    )
    match = process.wait_for_log(r"listening on (http://\S+)", timeout=30)
    return process, FakeAnthropicControl(match.group(1))
