"""What the fake remembers about each request it received on `/v1/*`.

The server keeps a cheap slotted `RequestRecord` per request (updated while the reply is sent);
the control API serialises it, and `FakeAnthropicControl.requests()` parses it into the
`RecordedRequest` model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kubeagents.fake_anthropic.billing import BilledUsage


class RecordedRequest(BaseModel):
    """One request received on `/v1/*`, as reported by `GET /_fake/requests`."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(description="Position since the last reset, from 0.")
    method: str
    path: str
    query: str = Field(description="The raw query string, without '?'.")
    headers: dict[str, str] = Field(
        description="Lowercased names; repeated headers joined by ', '."
    )
    body: Any = Field(description="The parsed JSON body, or None when absent or not JSON.")
    received_at: float = Field(description="Unix time the request's headers were received.")
    status: int | None = Field(description="The response status, once decided.")
    streamed: bool | None = Field(
        description='For /v1/messages: whether the body asked to stream ("stream": true); '
        "None elsewhere."
    )
    disconnected: bool | None = Field(
        description="For /v1/messages: whether the client went away before the reply's end."
    )
    dropped: bool | None = Field(
        default=None,
        description="For /v1/messages: whether the fake closed the connection on purpose "
        "(a `Drop` entry); None elsewhere.",
    )
    billed: BilledUsage | None = Field(
        default=None,
        description="What the provider billed for this request (see `billing.py`); None when "
        "nothing was billed.",
    )
    finished: bool = Field(description="Whether the fake is done with this request.")


class RequestRecord:
    """The server-side record of one request; mutated while the reply is produced."""

    __slots__ = (
        "billed",
        "body",
        "disconnected",
        "dropped",
        "finished",
        "headers",
        "index",
        "method",
        "path",
        "query",
        "received_at",
        "status",
        "streamed",
    )

    def __init__(
        self,
        index: int,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        received_at: float,
    ) -> None:
        self.index = index
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.received_at = received_at
        self.body: Any = None
        self.status: int | None = None
        self.streamed: bool | None = None
        self.disconnected: bool | None = None
        self.dropped: bool | None = None
        self.billed: dict[str, Any] | None = None
        self.finished = False

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
            "received_at": self.received_at,
            "status": self.status,
            "streamed": self.streamed,
            "disconnected": self.disconnected,
            "dropped": self.dropped,
            "billed": self.billed,
            "finished": self.finished,
        }
