"""The fake's mutable state: the script (FIFO + default entry), the records and the bill.

One `FakeState` per server, passed to `create_app`; no globals. Everything runs on the event
loop's thread, so no locks are needed.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kubeagents.fake_anthropic.billing import BillTotals
from kubeagents.fake_anthropic.events import IdFactory, ReplyPlan, compile_reply
from kubeagents.fake_anthropic.recording import RequestRecord
from kubeagents.fake_anthropic.script import AnyEntry, Drop, ErrorReply, Reply

if TYPE_CHECKING:
    from kubeagents.fake_anthropic.settings import FakeAnthropicSettings


@dataclass(frozen=True, slots=True)
class ErrorPlan:
    """A compiled `ErrorReply`: status, body fields, headers and latency resolved."""

    entry: ErrorReply
    status: int
    error_type: str
    message: str
    headers: dict[str, str]
    latency: float  # seconds
    billed: bool
    billed_output_tokens: int


@dataclass(frozen=True, slots=True)
class DropPlan:
    """A compiled `Drop`: when to close the connection, what to bill, and the latency."""

    entry: Drop
    after: Literal["request", "headers"]
    billed: bool
    billed_output_tokens: int
    latency: float  # seconds


Plan = ReplyPlan | ErrorPlan | DropPlan


def request_text(body: dict[str, Any]) -> str:
    """The system prompt (when there is one) and the last user message's text, joined by a
    newline: what canned answers are matched against."""
    parts = [_text_of(body.get("system"))]
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            parts.append(_text_of(message.get("content")))
            break
    return "\n".join(part for part in parts if part)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            block["text"]
            for block in content
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    return ""


def _retry_after_header(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(seconds)


class _Slot:
    __slots__ = ("entry", "plan", "remaining")

    def __init__(self, entry: AnyEntry, plan: Plan) -> None:
        self.entry = entry
        self.plan = plan
        self.remaining = entry.times


class FakeState:
    """The script, the records and the bill of one fake server."""

    def __init__(self, settings: FakeAnthropicSettings) -> None:
        self.settings = settings
        self.ids = IdFactory()
        self._script: deque[_Slot] = deque()
        self._records: deque[RequestRecord] = deque(maxlen=settings.max_recorded)
        self._next_index = 0
        self.bill = BillTotals()
        self._base_default = Reply()
        self._default = _Slot(self._base_default, self.compile(self._base_default))
        self._answers = [
            (re.compile(answer.pattern), answer.text, answer.latency_ms)
            for answer in settings.answers
        ]

    def compile(self, entry: AnyEntry) -> Plan:
        settings = self.settings
        if isinstance(entry, Reply):
            return compile_reply(
                entry,
                default_text=settings.default_text,
                latency_ms=settings.latency_ms,
                event_delay_ms=settings.event_delay_ms,
            )
        latency_ms = entry.latency_ms if entry.latency_ms is not None else settings.latency_ms
        if isinstance(entry, Drop):
            return DropPlan(
                entry=entry,
                after=entry.after,
                billed=entry.billed,
                billed_output_tokens=entry.billed_output_tokens,
                latency=latency_ms / 1000,
            )
        headers = {name.lower(): value for name, value in entry.headers.items()}
        if entry.retry_after is not None:
            headers["retry-after"] = _retry_after_header(entry.retry_after)
        return ErrorPlan(
            entry=entry,
            status=entry.status,
            error_type=entry.resolved_type,
            message=entry.resolved_message,
            headers=headers,
            latency=latency_ms / 1000,
            billed=entry.billed,
            billed_output_tokens=entry.billed_output_tokens,
        )

    # --- the script ---------------------------------------------------------------------------

    def enqueue(self, entries: list[AnyEntry]) -> int:
        """Append entries to the script; returns how many entries are queued now."""
        slots = [_Slot(entry, self.compile(entry)) for entry in entries]
        self._script.extend(slots)
        return len(self._script)

    def set_default(self, entry: AnyEntry) -> None:
        self._default = _Slot(entry, self.compile(entry))

    def take(self, body: Any = None) -> Plan:
        """The plan answering the next `/v1/messages` request (consumes one use of the head);
        with the script empty, the first canned answer matching `body`, else the default."""
        script = self._script
        if not script:
            return self._answer(body) or self._default.plan
        head = script[0]
        head.remaining -= 1
        if head.remaining <= 0:
            script.popleft()
        return head.plan

    def peek(self, body: Any = None) -> Plan:
        """The plan the next `/v1/messages` request would get, without consuming it."""
        if self._script:
            return self._script[0].plan
        return self._answer(body) or self._default.plan

    def _answer(self, body: Any) -> Plan | None:
        if not self._answers or not isinstance(body, dict):
            return None
        text = request_text(body)
        for pattern, template, latency_ms in self._answers:
            found = pattern.search(text)
            if found is not None:
                return self.compile(Reply.with_text(found.expand(template), latency_ms=latency_ms))
        return None

    def script_json(self) -> dict[str, Any]:
        return {
            "queued": [
                {"entry": slot.entry.model_dump(mode="json"), "remaining": slot.remaining}
                for slot in self._script
            ],
            "default": self._default.entry.model_dump(mode="json"),
        }

    # --- the records --------------------------------------------------------------------------

    def record(
        self, method: str, path: str, query: str, headers: dict[str, str], received_at: float
    ) -> RequestRecord:
        record = RequestRecord(self._next_index, method, path, query, headers, received_at)
        self._next_index += 1
        self._records.append(record)
        return record

    def records_json(self, since: int) -> list[dict[str, Any]]:
        return [record.as_json() for record in self._records if record.index >= since]

    def clear_records(self) -> None:
        """Forget the records and the bill (the bill is the sum over the records)."""
        self._records.clear()
        self._next_index = 0
        self.bill.clear()

    # --- the bill -----------------------------------------------------------------------------

    def charge(self, record: RequestRecord, usage: dict[str, Any]) -> None:
        """Bill `usage` for the request of `record` (see `billing.py`)."""
        record.billed = usage
        self.bill.add(usage)

    def reset(self) -> None:
        """Forget the script, the records and the bill; the default reply is the server's again."""
        self._script.clear()
        self._default = _Slot(self._base_default, self.compile(self._base_default))
        self.clear_records()
