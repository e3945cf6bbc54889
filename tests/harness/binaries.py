"""Paths of the real binaries the suite drives: helm and kubectl from the tools folder."""

from __future__ import annotations

import os
from pathlib import Path

from harness.processes import HarnessError

REPO = Path(__file__).resolve().parents[2]


def tools_dir() -> Path:
    """The git-ignored folder `make tools` fills; KUBEAGENTS_TOOLS_DIR overrides it."""
    return Path(os.environ.get("KUBEAGENTS_TOOLS_DIR", REPO / ".tools" / "bin"))


def tool(name: str) -> Path:
    path = tools_dir() / name
    if not os.access(path, os.X_OK):
        raise HarnessError(f"{name} not found at {path}. Run `make tools` (part of `make test`).")
    return path
