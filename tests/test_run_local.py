"""`make run` on a machine that cannot run a real node: it stops at once, with the reason."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness import node
from harness.binaries import REPO


def test_a_machine_without_root_gets_the_reason_and_what_still_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    problems = node.unmet_requirements()
    assert problems[0].startswith("not root: containerd, the kubelet")


def test_make_run_stops_before_building_anything_when_the_node_cannot_run() -> None:
    """The check runs as another user's process would see it: `--check` with root faked away."""
    script = (
        "import os, sys; os.geteuid = lambda: 1000; "
        "sys.argv = ['run_local', '--check']; "
        "from harness import run_local; sys.exit(run_local.main())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO / "tests",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "make run needs a real node, and this machine cannot run one:" in result.stderr
    assert "- not root" in result.stderr
    assert "`make cluster-up` (kwok nodes only) and `make test` still work." in result.stderr


def test_on_this_machine_the_check_passes() -> None:
    """CI runs as root on a VM with cgroups: the real-node tests depend on it."""
    result = subprocess.run(
        [sys.executable, "-m", "harness.run_local", "--check"],
        cwd=REPO / "tests",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
