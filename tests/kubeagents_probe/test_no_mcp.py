"""The probe has no MCP code of its own: it reads its MCP servers' state from the runtime."""

from __future__ import annotations

import subprocess
import sys


def test_the_probe_imports_neither_the_mcp_sdk_nor_the_projects_mcp_client() -> None:
    code = (
        "import sys, pkgutil, importlib, kubeagents_probe; "
        "[importlib.import_module(f'kubeagents_probe.{m.name}') "
        " for m in pkgutil.iter_modules(kubeagents_probe.__path__)]; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types', 'httpx2')"
        " or m.startswith('kubeagents.mcp')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
