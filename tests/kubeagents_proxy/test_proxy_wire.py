"""The proxy speaks Anthropic's wire format: the official SDK works through it unchanged."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx

from harness.fake_anthropic import start_fake_anthropic
from harness.proxy import TEST_API_KEY, StartProxy, sdk, start_proxy
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply

MODEL = "claude-sonnet-5-5"
HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello"}]


def test_messages_create_goes_through_with_the_proxys_key(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies()
    fake_anthropic.enqueue(Reply.with_text("hi there", input_tokens=11, output_tokens=3))
    message = sdk(proxy).messages.create(model=MODEL, max_tokens=64, messages=HELLO)
    assert message.content[0].type == "text"
    assert message.content[0].text == "hi there"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 3)
    (seen,) = fake_anthropic.requests()
    assert seen.headers["x-api-key"] == TEST_API_KEY  # the client's key never reaches upstream
    assert "authorization" not in seen.headers
    assert seen.body["max_tokens"] == 64


def test_stream_passes_through_with_usage_and_tool_use(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies()
    fake_anthropic.enqueue(
        Reply.with_tool_use("get_weather", {"city": "Paris"}, input_tokens=20, output_tokens=9)
    )
    with sdk(proxy).messages.stream(model=MODEL, max_tokens=256, messages=HELLO) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (block,) = [b for b in final.content if isinstance(b, anthropic.types.ToolUseBlock)]
    assert (block.name, block.input) == ("get_weather", {"city": "Paris"})
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 9)
    assert fake_anthropic.requests()[0].streamed is True


def test_count_tokens_and_models_pass_through(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies()
    client = sdk(proxy)
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO)
    direct = anthropic.Anthropic(base_url=fake_anthropic.base_url, api_key="k", max_retries=0)
    assert (
        counted.input_tokens
        == direct.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens
    )
    models = client.models.list()
    assert MODEL in [m.id for m in models.data]


def test_version_and_beta_headers_pass_through(
    start_proxies: StartProxy, fake_anthropic: FakeAnthropicControl
) -> None:
    proxy = start_proxies()
    response = httpx.post(
        f"{proxy.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 16, "messages": HELLO},
        headers={
            "x-api-key": "client",
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "interleaved-thinking-2025-05-14",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    assert response.status_code == 200, response.text
    (seen,) = fake_anthropic.requests()
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert seen.headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")


def test_proxy_health_and_metrics_on_the_admin_port(start_proxies: StartProxy) -> None:
    proxy = start_proxies()
    assert httpx.get(f"{proxy.admin_url}/livez").json() == {"status": "ok"}
    assert httpx.get(f"{proxy.admin_url}/readyz").status_code == 200
    sdk(proxy).messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    metrics = httpx.get(f"{proxy.admin_url}/metrics").text
    assert 'kubeagents_proxy_requests_total{model="claude-sonnet-5-5",outcome="ok"} 1.0' in metrics


def test_a_stream_framed_with_crlf_and_no_space_is_metered_all_the_same(tmp_path: Path) -> None:
    """The SSE spec allows CRLF line ends and `data:` without the space; a gateway in front of
    the API may send them. The proxy's accounting reads such a stream's usage all the same."""
    fake_process, fake = start_fake_anthropic(tmp_path, "--sse-framing", "crlf-compact")
    try:
        proxy = start_proxy(tmp_path / "proxy", upstream_url=fake.base_url, settings={})
        try:
            fake.enqueue(Reply.with_text("framed", input_tokens=31, output_tokens=7))
            with sdk(proxy).messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream:
                final = stream.get_final_message()
            assert (final.usage.input_tokens, final.usage.output_tokens) == (31, 7)
            metrics = httpx.get(f"{proxy.admin_url}/metrics").text
            assert f'kubeagents_proxy_tokens_total{{model="{MODEL}",type="input"}} 31.0' in metrics
            assert f'kubeagents_proxy_tokens_total{{model="{MODEL}",type="output"}} 7.0' in metrics
        finally:
            proxy.process.stop()
    finally:
        fake.close()
        fake_process.stop()
