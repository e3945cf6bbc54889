"""The one place a process's HTTP server turns exceptions into responses (aiohttp middleware).

Handlers raise; they do not build error responses. `error_middleware(translate)` answers:

- `HttpProblem(status, message)` with that status and `{"error": message}`;
- any other exception that `translate` maps to an `HttpProblem` (the process's own errors:
  an invalid task is 400, Redis unreachable is 503, …) the same way;
- aiohttp's own HTTP exceptions (404 of an unknown path, 405, 413) unchanged;
- anything else with 500 `{"error": "internal error"}`, its traceback logged once.

The proxy answers in Anthropic's error shape instead and has its own middleware
(`kubeagents_proxy.app.refusal_middleware`), built the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from kubeagents.errors import HttpProblem

log = logging.getLogger("kubeagents.http")

Translate = Callable[[Exception], HttpProblem | None]


def error_middleware(translate: Translate | None = None) -> Middleware:
    @web.middleware
    async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except HttpProblem as problem:
            return problem_response(problem)
        except Exception as error:
            translated = translate(error) if translate is not None else None
            if translated is not None:
                return problem_response(translated)
            log.exception("%s %s failed", request.method, request.path)
            return problem_response(HttpProblem(500, "internal error"))

    return answer_errors


def problem_response(problem: HttpProblem) -> web.Response:
    return web.json_response({"error": problem.message}, status=problem.status)
