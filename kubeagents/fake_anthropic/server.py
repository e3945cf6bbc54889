"""The aiohttp application of the fake Anthropic API: `/v1/*` like the real one, `/_fake/*` control.

API endpoints (all need an API key and the `anthropic-version` header, like the real API):

- `POST /v1/messages`: a Message, or an SSE stream with `"stream": true`; answered from the
  script (see `script.py`), after validation.
- `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, the N the body costs (what a message
  call with the same body reports, less any scripted `server_tool_input_tokens`); this honours
  an `input_tokens` override of the script's next entry (peeked, never consumed; error and drop
  entries are ignored).
- `GET /v1/models`, `GET /v1/models/{id}`: the catalogue in `catalog.py`.

Every `/v1/*` response is compressed as `compression.py` says (setting `compression`).

A `Drop` script entry answers `POST /v1/messages` with a closed connection: after the whole
request was read and the entry's latency, the transport is closed before any response byte
(`after="request"`) or right after 200 headers (`after="headers"`); the record says `dropped`.
What each request bills is recorded as `billing.py` says.

Checks, in order: a body over 32 MiB -> 413 `request_too_large`; no `x-api-key` and no
`authorization: Bearer` -> 401; a key other than `api_key` (when set) -> 401; missing or unknown
`anthropic-version` -> 400; unknown path -> 404; wrong method -> 405; body not JSON or invalid
-> 400 `invalid_request_error` naming the field; a model not starting with "claude-" -> 404
`not_found_error` "model: <name>". Requests that fail these checks do not consume the script.

The control endpoints are documented in `control.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubeagents.fake_anthropic.billing import bill_of_outcome, billed_usage
from kubeagents.fake_anthropic.catalog import MODEL_INFO_BY_ID, is_known_model, list_models
from kubeagents.fake_anthropic.compression import VARY, Coding, Compression, StreamEncoder
from kubeagents.fake_anthropic.events import (
    ReplyPlan,
    decide,
    error_body,
    error_event,
    message_body,
    stream_events,
    tool_ids,
)
from kubeagents.fake_anthropic.recording import RequestRecord
from kubeagents.fake_anthropic.script import (
    ScriptEntry,
    default_error_message,
    status_for_error_type,
)
from kubeagents.fake_anthropic.state import DropPlan, FakeState
from kubeagents.fake_anthropic.tokens import estimate_input_tokens
from kubeagents.fake_anthropic.validation import check_messages_body, check_version

if TYPE_CHECKING:
    from kubeagents.fake_anthropic.settings import FakeAnthropicSettings

MAX_BODY_BYTES = 32 * 1024 * 1024
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
MODELS_PATH = "/v1/models"
MODELS_PREFIX = "/v1/models/"
_NOT_PARSED = object()

STATE_KEY = web.AppKey("fake_anthropic_state", FakeState)


def _json_response(status: int, payload: Any) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        headers={"content-type": JSON_TYPE},
    )


class _Api:
    """The `/v1/*` handlers, bound to one state."""

    def __init__(self, settings: FakeAnthropicSettings, state: FakeState) -> None:
        self.state = state
        self.api_key = settings.api_key
        self.ids = state.ids
        self.compression = Compression.of_mode(settings.compression)
        self.crlf_compact = settings.sse_framing == "crlf-compact"

    # --- helpers ------------------------------------------------------------------------------

    def _negotiate(self, request: web.Request, headers: dict[str, str]) -> Coding | None:
        """The response's coding; adds `vary` (and `content-encoding`) to `headers`."""
        compression = self.compression
        if compression is None:
            return None
        headers["vary"] = VARY
        coding = compression.choose(request.headers.get("accept-encoding"))
        if coding is not None:
            headers["content-encoding"] = coding.name
        return coding

    def _respond(
        self,
        request: web.Request,
        record: RequestRecord,
        status: int,
        body: bytes,
        headers: dict[str, str],
    ) -> web.Response:
        record.status = status
        if self.compression is not None:
            coding = self._negotiate(request, headers)
            if coding is not None:
                body = coding.whole(body)
        return web.Response(status=status, body=body, headers=headers)

    def _error(
        self,
        request: web.Request,
        record: RequestRecord,
        status: int,
        error_type: str,
        message: str,
        extra_headers: dict[str, str] | None = None,
    ) -> web.Response:
        request_id = self.ids.request_id()
        headers = {"content-type": JSON_TYPE, "request-id": request_id}
        if extra_headers:
            headers.update(extra_headers)
        body = error_body(error_type, message, request_id)
        return self._respond(request, record, status, body, headers)

    def _ok(self, request: web.Request, record: RequestRecord, body: bytes) -> web.Response:
        headers = {"content-type": JSON_TYPE, "request-id": self.ids.request_id()}
        return self._respond(request, record, 200, body, headers)

    def _auth_problem(self, request: web.Request) -> str | None:
        key = request.headers.get("x-api-key")
        if not key:
            authorization = request.headers.get("authorization", "")
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                key = token.strip()
        if not key:
            return "x-api-key header is required"
        if self.api_key is not None and key != self.api_key:
            return "invalid x-api-key"
        return None

    # --- dispatch -----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            lowered = name.lower()
            headers[lowered] = f"{headers[lowered]}, {value}" if lowered in headers else value
        record = self.state.record(
            request.method, request.path, request.query_string, headers, time.time()
        )
        if request.path == MESSAGES_PATH:
            record.streamed = record.disconnected = record.dropped = False
        try:
            return await self._dispatch(request, record)
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler when the connection is lost),
            # unless the fake closed the connection itself (a Drop).
            if record.disconnected is not None and not record.dropped:
                record.disconnected = True
            raise
        finally:
            record.finished = True

    async def _dispatch(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        parsed: Any = _NOT_PARSED
        if request.body_exists:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._error(
                    request,
                    record,
                    413,
                    "request_too_large",
                    f"Request exceeds the maximum allowed number of bytes ({MAX_BODY_BYTES}).",
                )
            if raw:
                try:
                    parsed = json.loads(raw)
                except ValueError as error:
                    parsed = error
                else:
                    record.body = parsed
        path = request.path
        is_messages = path == MESSAGES_PATH
        if is_messages:
            record.streamed = isinstance(parsed, dict) and parsed.get("stream") is True
        problem = self._auth_problem(request)
        if problem is not None:
            return self._error(request, record, 401, "authentication_error", problem)
        problem = check_version(request.headers.get("anthropic-version"))
        if problem is not None:
            return self._error(request, record, 400, "invalid_request_error", problem)
        method = request.method
        if is_messages or path == COUNT_TOKENS_PATH:
            if method != "POST":
                return self._error(
                    request, record, 405, "invalid_request_error", "Method Not Allowed"
                )
            if parsed is _NOT_PARSED or isinstance(parsed, ValueError):
                detail = "the body is empty" if parsed is _NOT_PARSED else str(parsed)
                return self._error(
                    request,
                    record,
                    400,
                    "invalid_request_error",
                    f"body: not valid JSON ({detail})",
                )
            if is_messages:
                return await self._messages(request, record, parsed)
            return self._count_tokens(request, record, parsed)
        if path == MODELS_PATH or path.startswith(MODELS_PREFIX):
            if method != "GET":
                return self._error(
                    request, record, 405, "invalid_request_error", "Method Not Allowed"
                )
            return self._models(request, record)
        return self._error(request, record, 404, "not_found_error", "Not Found")

    # --- endpoints ----------------------------------------------------------------------------

    def _count_tokens(self, request: web.Request, record: RequestRecord, body: Any) -> web.Response:
        problem = check_messages_body(body, count_tokens=True)
        if problem is not None:
            return self._error(request, record, 400, "invalid_request_error", problem)
        model = body["model"]
        if not is_known_model(model):
            return self._error(request, record, 404, "not_found_error", f"model: {model}")
        plan = self.state.peek(body)
        override = plan.reply.input_tokens if isinstance(plan, ReplyPlan) else None
        tokens = override if override is not None else estimate_input_tokens(body)
        return self._ok(request, record, b'{"input_tokens":%d}' % tokens)

    def _models(self, request: web.Request, record: RequestRecord) -> web.Response:
        path = request.path
        if path != MODELS_PATH:
            model_id = path[len(MODELS_PREFIX) :]
            info = MODEL_INFO_BY_ID.get(model_id)
            if info is None:
                return self._error(request, record, 404, "not_found_error", f"model: {model_id}")
            return self._ok(request, record, json.dumps(info).encode())
        query = request.query
        raw_limit = query.get("limit", "20")
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return self._error(
                request,
                record,
                400,
                "invalid_request_error",
                "limit: Input should be an integer between 1 and 1000",
            )
        page = list_models(
            limit=limit, after_id=query.get("after_id"), before_id=query.get("before_id")
        )
        return self._ok(request, record, json.dumps(page).encode())

    async def _messages(
        self, request: web.Request, record: RequestRecord, body: Any
    ) -> web.StreamResponse:
        problem = check_messages_body(body, count_tokens=False)
        if problem is not None:
            return self._error(request, record, 400, "invalid_request_error", problem)
        model: str = body["model"]
        if not is_known_model(model):
            return self._error(request, record, 404, "not_found_error", f"model: {model}")
        stream = body.get("stream") is True
        speed: str | None = body.get("speed")
        inference_geo: str | None = body.get("inference_geo")
        plan = self.state.take(body)
        if not isinstance(plan, ReplyPlan):
            if plan.billed:
                usage = billed_usage(
                    input_tokens=estimate_input_tokens(body),
                    output_tokens=plan.billed_output_tokens,
                    speed=speed,
                    inference_geo=inference_geo,
                )
                self.state.charge(record, usage)
            if plan.latency > 0:
                await asyncio.sleep(plan.latency)
            if isinstance(plan, DropPlan):
                return await self._drop(request, record, plan, stream=stream)
            return self._error(
                request, record, plan.status, plan.error_type, plan.message, plan.headers
            )
        reply = plan.reply
        input_tokens = (
            reply.input_tokens if reply.input_tokens is not None else estimate_input_tokens(body)
        )
        outcome = decide(
            plan,
            input_tokens=input_tokens,
            max_tokens=body["max_tokens"],
            stop_sequences=body.get("stop_sequences"),
            speed=speed,
            inference_geo=inference_geo,
        )
        stream_error = reply.stream_error
        if stream or stream_error is None:
            # Answered with 200: billed in full now, whether or not the client stays to the end.
            self.state.charge(record, bill_of_outcome(outcome))
        if plan.latency > 0:
            await asyncio.sleep(plan.latency)
        message_id = self.ids.message_id()
        block_ids = tool_ids(outcome, self.ids)
        if not stream:
            if stream_error is not None:
                error_type = stream_error.error_type
                return self._error(
                    request,
                    record,
                    status_for_error_type(error_type),
                    error_type,
                    stream_error.message or default_error_message(error_type),
                )
            body_bytes = message_body(
                outcome, message_id=message_id, model=model, block_ids=block_ids
            )
            return self._ok(request, record, body_bytes)

        events = stream_events(outcome, message_id=message_id, model=model, block_ids=block_ids)
        request_id = self.ids.request_id()
        if stream_error is not None:
            sent = min(stream_error.after_events, len(events) - 1)
            error_type = stream_error.error_type
            message = stream_error.message or default_error_message(error_type)
            events = [*events[:sent], error_event(error_type, message, request_id)]
        if self.crlf_compact:
            events = [_crlf_compact(event) for event in events]
        headers = {"content-type": SSE_TYPE, "cache-control": "no-cache", "request-id": request_id}
        coding = self._negotiate(request, headers)
        response = web.StreamResponse(status=200, headers=headers)
        record.status = 200
        try:
            await response.prepare(request)
            if coding is None:
                await _write_events(response, events, plan.event_delay)
            else:
                await _write_events_encoded(response, events, plan.event_delay, coding.stream())
            await response.write_eof()
        except ConnectionResetError:
            record.disconnected = True
        return response

    async def _drop(
        self, request: web.Request, record: RequestRecord, plan: DropPlan, *, stream: bool
    ) -> web.StreamResponse:
        """Close the connection (after 200 headers when the plan says so): no HTTP answer."""
        record.dropped = True
        transport = request.transport
        if plan.after == "headers" and transport is not None and not transport.is_closing():
            headers = {"content-type": SSE_TYPE if stream else JSON_TYPE}
            if stream:
                headers["cache-control"] = "no-cache"
            headers["request-id"] = self.ids.request_id()
            self._negotiate(request, headers)
            response = web.StreamResponse(status=200, headers=headers)
            record.status = 200
            await response.prepare(request)  # a StreamResponse sends its headers right away
            transport.close()  # flushes the headers, then closes: the body never comes
            return response
        if transport is not None:
            transport.close()
        # Never sent: aiohttp's attempt to write it fails on the closed transport, quietly.
        return web.Response(status=200)


def _crlf_compact(event: bytes) -> bytes:
    """The same event framed with CRLF and no space after the field's colon."""
    return (
        event.replace(b"event: ", b"event:")
        .replace(b"\ndata: ", b"\ndata:")
        .replace(b"\n", b"\r\n")
    )


async def _write_events(response: web.StreamResponse, events: list[bytes], delay: float) -> None:
    for position, event in enumerate(events):
        if delay > 0 and position:
            await asyncio.sleep(delay)
        await response.write(event)


async def _write_events_encoded(
    response: web.StreamResponse, events: list[bytes], delay: float, encoder: StreamEncoder
) -> None:
    """Each event compressed and flushed on its own, so the client can decode it on arrival."""
    chunk = encoder.chunk
    for position, event in enumerate(events):
        if delay > 0 and position:
            await asyncio.sleep(delay)
        await response.write(chunk(event))
    await response.write(encoder.finish())


# --- control API ----------------------------------------------------------------------------


class _EnqueueBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replies: list[ScriptEntry] = Field(min_length=1)


class _DefaultBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reply: ScriptEntry


def _control_error(message: str) -> web.Response:
    return _json_response(400, {"error": {"type": "invalid_request_error", "message": message}})


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'body'}: {item['msg']}"
        for item in error.errors()
    )


async def _control_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw) if raw else None
    except ValueError as error:
        raise _BadControlInput(f"body: not valid JSON ({error})") from None


class _BadControlInput(Exception):
    pass


_Body = TypeVar("_Body", bound=BaseModel)


async def _parse_control(request: web.Request, model: type[_Body]) -> _Body | web.Response:
    """The request's body as `model`, or the 400 response naming what is wrong with it."""
    try:
        return model.model_validate(await _control_body(request))
    except _BadControlInput as error:
        return _control_error(str(error))
    except ValidationError as error:
        return _control_error(_describe(error))


class _Control:
    def __init__(self, state: FakeState) -> None:
        self.state = state

    async def health(self, request: web.Request) -> web.Response:
        return _json_response(200, {"status": "ok"})

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return _json_response(200, {"reset": True})

    async def enqueue(self, request: web.Request) -> web.Response:
        payload = await _parse_control(request, _EnqueueBody)
        if isinstance(payload, web.Response):
            return payload
        queued = self.state.enqueue(list(payload.replies))
        return _json_response(200, {"queued": queued})

    async def script(self, request: web.Request) -> web.Response:
        return _json_response(200, self.state.script_json())

    async def set_default(self, request: web.Request) -> web.Response:
        payload = await _parse_control(request, _DefaultBody)
        if isinstance(payload, web.Response):
            return payload
        self.state.set_default(payload.reply)
        return _json_response(200, {"default": payload.reply.model_dump(mode="json")})

    async def requests(self, request: web.Request) -> web.Response:
        raw_since = request.query.get("since", "0")
        if not raw_since.isdigit():
            return _control_error(f"since: must be a non-negative integer, got {raw_since!r}")
        return _json_response(200, {"requests": self.state.records_json(int(raw_since))})

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.state.clear_records()
        return _json_response(200, {"cleared": True})

    async def bill(self, request: web.Request) -> web.Response:
        return _json_response(200, self.state.bill.as_json())


def create_app(settings: FakeAnthropicSettings, state: FakeState) -> web.Application:
    """The fake's aiohttp application, serving `state` (no globals)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    api = _Api(settings, state)
    control = _Control(state)
    router = app.router
    router.add_get("/_fake/health", control.health)
    router.add_post("/_fake/reset", control.reset)
    router.add_post("/_fake/script", control.enqueue)
    router.add_get("/_fake/script", control.script)
    router.add_put("/_fake/default", control.set_default)
    router.add_get("/_fake/requests", control.requests)
    router.add_delete("/_fake/requests", control.clear_requests)
    router.add_get("/_fake/bill", control.bill)
    router.add_route("*", "/v1/{tail:.*}", api.handle)
    return app
