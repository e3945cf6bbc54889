"""Each call is a GenAI `chat {model}` span that continues the caller's trace to the upstream."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from harness.processes import wait_for
from harness.proxy import StartProxy
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


def console_spans(log: str) -> list[dict[str, Any]]:
    """The spans the console exporter printed (indented JSON objects starting at column 0)."""
    return [json.loads(block) for block in re.findall(r"(?ms)^\{\n.*?^\}$", log)]


def test_a_call_is_a_chat_span_continuing_the_callers_trace(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies(extra_env={"OTEL_TRACES_EXPORTER": "console"})
    fake_anthropic.enqueue(Reply.with_text("traced", input_tokens=12, output_tokens=4))
    response = httpx.post(
        f"{proxy.url}/v1/messages",
        json={
            "model": "claude-sonnet-5-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={
            "x-api-key": "client",
            "anthropic-version": "2023-06-01",
            "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01",
        },
    )
    assert response.status_code == 200, response.text

    (span,) = wait_for(
        lambda: console_spans(proxy.process.log_text()) or None,
        timeout=10,
        what="the proxy to export the call's span",
    )
    assert span["name"] == "chat claude-sonnet-5-5"
    assert span["kind"] == "SpanKind.CLIENT"
    assert span["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert span["parent_id"] == f"0x{CALLER_SPAN}"
    attributes = span["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "anthropic"
    assert attributes["gen_ai.request.model"] == "claude-sonnet-5-5"
    assert attributes["gen_ai.request.max_tokens"] == 64
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["gen_ai.usage.output_tokens"] == 4

    # The upstream sees the same trace, with the proxy's span as the parent.
    upstream_parent = fake_anthropic.requests()[0].headers["traceparent"]
    span_id = span["context"]["span_id"].removeprefix("0x")
    assert upstream_parent == f"00-{TRACE_ID}-{span_id}-01"


def test_a_refused_call_is_an_error_span(start_proxies: StartProxy) -> None:
    proxy = start_proxies(extra_env={"OTEL_TRACES_EXPORTER": "console"})
    response = httpx.post(
        f"{proxy.url}/v1/messages",
        json={"model": "gpt-9", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": "client", "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 403
    (span,) = wait_for(
        lambda: console_spans(proxy.process.log_text()) or None,
        timeout=10,
        what="the proxy to export the refused call's span",
    )
    assert span["status"]["status_code"] == "ERROR"
    assert span["attributes"]["error.type"] == "permission_error"
