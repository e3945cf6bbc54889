"""Whole agents as real processes: a proxy and a runtime each, sharing one Redis."""

from __future__ import annotations

from collections.abc import Callable

from harness.proxy import ProxyProcess
from harness.runtime import RuntimeProcess

AGENTS = ("research", "summarizer")  # the two agents of the example team

Agents = dict[str, tuple[ProxyProcess, RuntimeProcess]]
StartAgents = Callable[[str], Agents]  # start(namespace) -> agent -> (proxy, runtime)
