"""`kubeagents probe` as a real process, configured through its environment like in the pod."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.processes import ManagedProcess, settings_env

KUBEAGENTS = Path(sys.executable).parent / "kubeagents"
VALIDATOR_MODEL = "claude-haiku-4-5"


@dataclass
class ProbeProcess:
    """A running probe and its endpoints."""

    process: ManagedProcess
    url: str

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        """GET an endpoint; its status and JSON body (503 answers included)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def readiness(self) -> dict[str, Any]:
        return self.get("/readyz")[1]

    def failing_reasons(self) -> dict[str, str]:
        """check -> reason of every failing check (empty when ready)."""
        return {f["check"]: f["reason"] for f in self.readiness()["failing"]}

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:  # noqa: S310
            text: str = response.read().decode()
            return text

    def stop(self) -> None:
        self.process.stop()


StartProbe = Callable[..., ProbeProcess]  # start(name="probe", **settings) -> ProbeProcess


def start_probe(
    workdir: Path,
    *,
    proxy_url: str,
    proxy_admin_url: str,
    settings: Mapping[str, Any],
    name: str = "probe",
) -> ProbeProcess:
    """Start a probe with `settings` (field -> value; lists/maps become JSON) on a free port."""
    workdir.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "agent": "research",
        "namespace": "tests",
        "pod_name": name,
        "host": "127.0.0.1",
        "port": 0,
        "proxy_url": proxy_url,
        "proxy_admin_url": proxy_admin_url,
        "model": VALIDATOR_MODEL,
        "jitter_ratio": 0,
        **settings,
    }
    env = settings_env("KUBEAGENTS_PROBE_", values)
    process = ManagedProcess(name, [str(KUBEAGENTS), "probe"], workdir / f"{name}.log", env=env)
    match = process.wait_for_log(r"listening on (http://\S+)", timeout=30)
    return ProbeProcess(process, match.group(1))
