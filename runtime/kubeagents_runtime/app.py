"""The runtime's HTTP endpoints (one port):

- `GET /livez`: 200 while the process runs;
- `GET /readyz`: 200 when Redis answers (the body also shows the probe gate and each MCP
  server); 503 otherwise;
- `GET /status`: 200 with each configured MCP server's state, as the runtime's keeper sees it
  (the probe's `mcp` check reads this over loopback):
  `{"agent", "pod", "mcp_servers": {name: {"up", "reason", "detail", "tools",
  "protocol_version", "since", "last_failure": {"reason", "detail", "at"} | null}}}`
  (`reason`/`detail`: why it is down, "" while up; `reason` is "connecting" before the first
  attempt ended; `tools`: the tools the allow-list lets through and `protocol_version` the
  negotiated revision, while up; `since`: when the server last went up or down; `at`: when it
  last failed; both RFC 3339 UTC);
- `GET /metrics`: Prometheus text;
- with `task_api` on: `POST /v1/tasks` with `{"input": {"prompt": …}, "id": optional}` → 202
  `{"id", "status"}` (200 with the existing status when the id is known; 400 naming the problem
  for bad input, which writes nothing), and `GET /v1/tasks/{id}` → the result, or 404.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from kubeagents.errors import HttpProblem
from kubeagents.http_errors import error_middleware
from kubeagents.metrics_endpoint import metrics_handler
from kubeagents.tasks import MAX_INPUT_BYTES, TaskQueue
from kubeagents_runtime.errors import http_problem
from kubeagents_runtime.metrics import RuntimeMetrics
from kubeagents_runtime.toolbox import ServerStatus, Toolbox
from kubeagents_runtime.worker import Worker


def _time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def server_status(status: ServerStatus) -> dict[str, Any]:
    """One MCP server's entry in `GET /status` (the contract is in the module docstring)."""
    failure = status.last_failure
    return {
        "up": status.up,
        "reason": status.reason,
        "detail": status.detail,
        "tools": status.tools,
        "protocol_version": status.protocol_version,
        "since": _time(status.since),
        "last_failure": None
        if failure is None
        else {"reason": failure.reason, "detail": failure.detail, "at": _time(failure.at)},
    }


def create_app(
    worker: Worker, queue: TaskQueue, toolbox: Toolbox, metrics: RuntimeMetrics, *, task_api: bool
) -> web.Application:
    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        try:
            redis = "ok" if await worker.link.execute("PING") == b"PONG" else "unexpected answer"
        except (RedisError, OSError) as error:
            redis = f"unreachable: {error}"
        mcp = {
            name: {"up": status.up, "reason": status.reason}
            for name, status in toolbox.status().items()
        }
        body = {
            "ready": redis == "ok",
            "redis": redis,
            "probe_gate": "open" if worker.ready else "closed",
            "mcp_servers": mcp,
        }
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def status(request: web.Request) -> web.Response:
        servers = toolbox.status()
        return web.json_response(
            {
                "agent": worker.settings.agent,
                "pod": worker.settings.pod_name,
                "mcp_servers": {name: server_status(state) for name, state in servers.items()},
            }
        )

    async def refresh_mcp_gauges() -> None:
        for name, status in toolbox.status().items():
            metrics.mcp_server_up.labels(name).set(1 if status.up else 0)

    async def submit(request: web.Request) -> web.Response:
        try:
            body: Any = json.loads(await request.read())
        except ValueError as error:
            raise HttpProblem(400, f"body is not JSON ({error})") from None
        except web.HTTPRequestEntityTooLarge:
            raise HttpProblem(413, f"body exceeds {MAX_INPUT_BYTES + 4096:,} bytes") from None
        if not isinstance(body, dict) or "input" not in body:
            raise HttpProblem(400, 'body must be {"input": {"prompt": ...}, "id": optional}')
        unknown = set(body) - {"input", "id"}
        if unknown:
            raise HttpProblem(400, f"unknown fields {sorted(unknown)} (allowed: input, id)")
        submitted = await queue.submit(
            body["input"] if isinstance(body["input"], dict) else json.dumps(body["input"]),
            task_id=body.get("id"),
            traceparent=request.headers.get("traceparent", ""),
        )
        status = 202 if submitted.created else 200
        return web.json_response(
            {"id": submitted.task_id, "status": submitted.status}, status=status
        )

    async def get_task(request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        result = await queue.result(task_id)
        if result is None:
            raise HttpProblem(404, f"no task {task_id} for agent {worker.settings.agent}")
        return web.json_response(result)

    app = web.Application(
        client_max_size=MAX_INPUT_BYTES + 4096, middlewares=[error_middleware(http_problem)]
    )
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics_handler(metrics.registry, refresh=refresh_mcp_gauges))
    if task_api:
        app.router.add_post("/v1/tasks", submit)
        app.router.add_get("/v1/tasks/{task_id}", get_task)
    return app
