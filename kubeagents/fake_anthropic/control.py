"""Programming the fake Anthropic API over HTTP: the `/_fake/*` endpoints and a small client.

The fake usually runs as another process, so everything a test programs goes over HTTP. All
bodies are JSON. Bad input is answered with 400 and
`{"error": {"type": "invalid_request_error", "message": "<field path>: <problem>"}}`, and changes
no state (a script with one bad entry enqueues nothing).

- `GET    /_fake/health`            -> `{"status": "ok"}`
- `POST   /_fake/reset`             forget the script, the records and the bill; the default
                                    reply is the server's again -> `{"reset": true}`
- `POST   /_fake/script`            body `{"replies": [entry, ...]}` (at least one): append to the
                                    FIFO script -> `{"queued": <entries now queued>}`
- `GET    /_fake/script`            -> `{"queued": [{"entry": entry, "remaining": n}, ...],
                                    "default": entry}`
- `PUT    /_fake/default`           body `{"reply": entry}`: the entry used when the script is
                                    empty (its `times` is ignored) -> `{"default": entry}`
- `GET    /_fake/requests?since=N`  -> `{"requests": [record, ...]}`, every request received on
                                    `/v1/*` since the last reset, in arrival order, from index N
- `DELETE /_fake/requests`          forget the records and the bill, not the script
                                    -> `{"cleared": true}`
- `GET    /_fake/bill`              -> `{"requests": <billed requests>, "input_tokens": sum,
                                    "output_tokens": sum, "cache_creation_input_tokens": sum,
                                    "cache_read_input_tokens": sum, "web_search_requests": sum,
                                    "web_fetch_requests": sum, "total_tokens": input + output +
                                    cache creation + cache read}`: what the provider billed
                                    since the last reset (see `billing.py`)

An entry is a `Reply`, an `ErrorReply` or a `Drop` as JSON (see `script.py`), told apart by
`"kind"` (`"reply"`, `"error"` or `"drop"`). A record is a `RecordedRequest` (see
`recording.py`), with what the request was billed in `billed`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from kubeagents.fake_anthropic.billing import Bill
from kubeagents.fake_anthropic.recording import RecordedRequest
from kubeagents.fake_anthropic.script import Drop, ErrorReply, Reply

Entry = Reply | ErrorReply | Drop | Mapping[str, Any]


class FakeAnthropicControlError(RuntimeError):
    """The control API refused a request (bad input) or answered unexpectedly."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"fake-anthropic control API answered {status}: {message}")
        self.status = status
        self.message = message


def _entry_json(entry: Entry) -> Any:
    if isinstance(entry, Reply | ErrorReply | Drop):
        return entry.model_dump(mode="json")
    return dict(entry)


class FakeAnthropicControl:
    """A synchronous client of the fake's control API; `base_url` is the fake's root URL."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.request(method, path, **kwargs)
        if response.status_code != 200:
            try:
                message = str(response.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise FakeAnthropicControlError(response.status_code, message)
        return response.json()

    def health(self) -> bool:
        return bool(self._call("GET", "/_fake/health")["status"] == "ok")

    def reset(self) -> None:
        """Forget the script and the recorded requests; restore the default reply."""
        self._call("POST", "/_fake/reset")

    def enqueue(self, *replies: Entry) -> int:
        """Append replies (errors, drops) to the FIFO script; returns how many are queued now."""
        payload = {"replies": [_entry_json(reply) for reply in replies]}
        return int(self._call("POST", "/_fake/script", json=payload)["queued"])

    def set_default(self, reply: Entry) -> None:
        """The reply (error, drop) used for every request when the script is empty."""
        self._call("PUT", "/_fake/default", json={"reply": _entry_json(reply)})

    def script(self) -> dict[str, Any]:
        """The queued entries with their remaining uses, and the default entry (as JSON)."""
        result: dict[str, Any] = self._call("GET", "/_fake/script")
        return result

    def requests(self, since: int = 0) -> list[RecordedRequest]:
        """Every request received on `/v1/*` since the last reset (from index `since`), in order."""
        records = self._call("GET", "/_fake/requests", params={"since": since})["requests"]
        return [RecordedRequest.model_validate(record) for record in records]

    def clear_requests(self) -> None:
        """Forget the recorded requests and the bill (the script stays)."""
        self._call("DELETE", "/_fake/requests")

    def bill(self) -> Bill:
        """What the fake billed since the last reset, summed (see `billing.py`)."""
        return Bill.model_validate(self._call("GET", "/_fake/bill"))

    def wait_for_requests(
        self, count: int, *, timeout: float = 10.0, finished: bool = True
    ) -> list[RecordedRequest]:
        """Poll until at least `count` requests are recorded (and, by default, finished)."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.requests()
            done = [r for r in records if r.finished] if finished else records
            if len(done) >= count and (not finished or len(done) == len(records)):
                return records
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"fake-anthropic recorded {len(records)} requests ({len(done)} finished) "
                    f"after {timeout:.1f}s; expected {count}"
                )
            time.sleep(0.01)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
