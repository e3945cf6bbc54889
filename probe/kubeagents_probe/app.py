"""The probe's HTTP endpoints, all answered from memory (the kubelet may poll them often).

- `GET /readyz`: 200 `{"ready": true, …}` or 503 with `failing`: `[{check, reason, detail}]`;
- `GET /livez`: 200 while the probe process runs;
- `GET /status`: the readiness body plus `history`, the last results (newest first): time,
  check, passed, reason, detail, latency, tokens, an excerpt of the reply, the pod that ran it;
- `GET /metrics`: Prometheus text.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from aiohttp import web

from kubeagents.http_errors import error_middleware
from kubeagents.metrics_endpoint import metrics_handler
from kubeagents_probe.probe import Probe


def create_app(probe: Probe) -> web.Application:
    async def readyz(request: web.Request) -> web.Response:
        body = probe.readiness()
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def status(request: web.Request) -> web.Response:
        body = probe.readiness()
        body["history"] = [
            {**asdict(result), "time": datetime.fromtimestamp(result.at, UTC).isoformat()}
            for result in reversed(probe.history)
        ]
        return web.json_response(body)

    async def refresh_readiness_gauges() -> None:
        probe.readiness()  # sets the ready and verdict-age gauges

    app = web.Application(middlewares=[error_middleware()])
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/livez", livez)
    app.router.add_get("/status", status)
    app.router.add_get(
        "/metrics", metrics_handler(probe.metrics.registry, refresh=refresh_readiness_gauges)
    )
    return app
