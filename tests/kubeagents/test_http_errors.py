"""Handlers raise; the error middleware alone turns errors into responses."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kubeagents.errors import HttpProblem, InvalidTask
from kubeagents.http_errors import error_middleware


def translate(error: Exception) -> HttpProblem | None:
    return HttpProblem(400, str(error)) if isinstance(error, InvalidTask) else None


async def fetch(path: str) -> tuple[int, object]:
    async def problem(request: web.Request) -> web.Response:
        raise HttpProblem(404, "no task t-1")

    async def invalid(request: web.Request) -> web.Response:
        raise InvalidTask("prompt is empty")

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app = web.Application(middlewares=[error_middleware(translate)])
    app.router.add_get("/problem", problem)
    app.router.add_get("/invalid", invalid)
    app.router.add_get("/broken", broken)
    async with TestClient(TestServer(app)) as client:
        response = await client.get(path)
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/problem", 404, {"error": "no task t-1"}),
        ("/invalid", 400, {"error": "prompt is empty"}),
        ("/broken", 500, {"error": "internal error"}),
        ("/nowhere", 404, None),  # aiohttp's own answer, unchanged
    ],
)
def test_each_error_becomes_its_response(path: str, status: int, body: object) -> None:
    assert asyncio.run(fetch(path)) == (status, body)


def test_an_unexpected_error_is_logged_with_its_traceback_and_not_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="kubeagents.http"):
        status, body = asyncio.run(fetch("/broken"))
    assert status == 500
    assert "secret internals" not in str(body)
    (record,) = [r for r in caplog.records if r.name == "kubeagents.http"]
    assert record.getMessage() == "GET /broken failed"
    assert record.exc_info is not None
