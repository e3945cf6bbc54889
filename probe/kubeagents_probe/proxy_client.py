"""`ProxyClient`: how the probe talks to its pod's proxy, and how failures become reasons.

Model calls go to the proxy's Anthropic API, marked with `kubeagents-probe: 1` so the proxy
meters and budgets them like any call and counts them apart. The token-free checks use the
proxy's admin port (`/readyz`, `/kubeagents/budget`) and `count_tokens` (which costs no tokens).

Every failure raises `CheckFailed(reason, detail)`; `reason` is a short machine-readable word:

| reason | when |
|---|---|
| `proxy_unreachable` | nothing answers on the proxy's port |
| `timeout` | no answer within the check's timeout (or a 504 from the proxy) |
| `key_rejected` | 401 (the provider refused the key) |
| `forbidden` | 403 (the key may not use this model, or the model is not allowed) |
| `budget_exhausted` | 429 naming a budget |
| `rate_limited` | any other 429 |
| `upstream_error` | 5xx or 529 |
| `call_rejected` | any other 4xx (the validator request is wrong) |
| `bad_answer` | a 200 whose body is not what the API promises |
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubeagents.headers import PROBE_CALL_HEADER
from kubeagents_probe.errors import CheckFailed

ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class Reply:
    """A model's answer: its text and what it cost."""

    text: str
    input_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _reason_for_status(status: int, body: bytes) -> str:
    if status == 401:
        return "key_rejected"
    if status == 403:
        return "forbidden"
    if status == 429:
        return "budget_exhausted" if b"budget" in body.lower() else "rate_limited"
    if status == 504:
        return "timeout"
    if status >= 500:
        return "upstream_error"
    return "call_rejected"


def _error_message(body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
        return str(message)
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


class LoopbackClient:
    """One HTTP session to a process of the pod, each request bounded by `timeout_seconds`;
    a connection failure is `CheckFailed(unreachable, …)`."""

    def __init__(self, *, timeout_seconds: float, unreachable: str) -> None:
        self.timeout_seconds = timeout_seconds
        self.unreachable = unreachable
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        assert self._session is not None, f"{type(self).__name__}.start() was not awaited"
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                return response.status, await response.read()
        except TimeoutError:
            raise CheckFailed(
                "timeout", f"{url} did not answer within {self.timeout_seconds:g}s"
            ) from None
        except aiohttp.ClientConnectionError as error:
            raise CheckFailed(self.unreachable, f"{url}: {error}") from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as error:
            raise CheckFailed(self.unreachable, f"{url}: {error!r}") from None


class ProxyClient(LoopbackClient):
    """One HTTP session to the pod's proxy (API and admin port)."""

    def __init__(self, api_url: str, admin_url: str, *, timeout_seconds: float) -> None:
        super().__init__(timeout_seconds=timeout_seconds, unreachable="proxy_unreachable")
        self.api_url = api_url
        self.admin_url = admin_url

    async def ask(self, *, model: str, system: str, prompt: str, max_tokens: int) -> Reply:
        """One validator (or grading) call through the proxy, temperature 0."""
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
        }
        if system:
            body["system"] = system
        status, payload = await self._call("POST", self.api_url + "/v1/messages", body)
        if status != 200:
            raise CheckFailed(_reason_for_status(status, payload), _error_message(payload))
        try:
            answer = json.loads(payload)
            usage = answer.get("usage") or {}
            text = "".join(
                block.get("text", "")
                for block in answer.get("content") or []
                if block.get("type") == "text"
            )
            return Reply(
                text=text,
                input_tokens=int(usage.get("input_tokens") or 0)
                + int(usage.get("cache_creation_input_tokens") or 0)
                + int(usage.get("cache_read_input_tokens") or 0),
                output_tokens=int(usage.get("output_tokens") or 0),
            )
        except (ValueError, AttributeError, TypeError) as error:
            raise CheckFailed("bad_answer", f"unreadable Messages answer: {error}") from None

    async def count_tokens(self, model: str) -> int:
        """`count_tokens` of a one-word message: proves the provider accepts the key, free."""
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}]}
        url = self.api_url + "/v1/messages/count_tokens"
        status, payload = await self._call("POST", url, body)
        if status != 200:
            raise CheckFailed(_reason_for_status(status, payload), _error_message(payload))
        try:
            return int(json.loads(payload)["input_tokens"])
        except (ValueError, KeyError, TypeError):
            raise CheckFailed("bad_answer", "unreadable count_tokens answer") from None

    async def proxy_ready(self) -> None:
        status, payload = await self._call("GET", self.admin_url + "/readyz")
        if status != 200:
            raise CheckFailed("not_ready", payload[:300].decode(errors="replace"))

    async def budget(self) -> dict[str, Any]:
        status, payload = await self._call("GET", self.admin_url + "/kubeagents/budget")
        if status != 200:
            raise CheckFailed("budget_unavailable", f"budget endpoint answered {status}")
        try:
            budget = json.loads(payload)
        except ValueError:
            raise CheckFailed("budget_unavailable", "unreadable budget answer") from None
        if not isinstance(budget, dict):
            raise CheckFailed("budget_unavailable", "unreadable budget answer")
        return budget

    async def _call(
        self, method: str, url: str, body: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        headers = {
            "x-api-key": "kubeagents-probe",  # ignored: the proxy holds the real key
            "anthropic-version": ANTHROPIC_VERSION,
            PROBE_CALL_HEADER: "1",
        }
        if body is None:
            return await self._request(method, url, None, headers)
        headers["content-type"] = "application/json"
        return await self._request(method, url, json.dumps(body).encode(), headers)
