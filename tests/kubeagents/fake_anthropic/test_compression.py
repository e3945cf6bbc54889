"""Compression of `/v1/*` like a CDN-fronted API: negotiated (auto), off, always; streams decodable
event by event."""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from kubeagents.fake_anthropic import ErrorReply, FakeAnthropicControl, Reply
from kubeagents.fake_anthropic.compression import BROTLI, Compression, parse_accept_encoding
from kubeagents.fake_anthropic.settings import FakeAnthropicSettings

StartFake = Callable[..., FakeAnthropicControl]  # the `start_fake` fixture (conftest.py)

MODEL = "claude-sonnet-4-6"
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
GZIP_OK = {**HEADERS, "accept-encoding": "gzip"}
BODY: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Hi"}],
}
STREAM_BODY = {**BODY, "stream": True}


def fetch_raw(
    client: httpx.Client, method: str, path: str, headers: dict[str, str], **kwargs: Any
) -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as it came over the wire (not decoded)."""
    with client.stream(method, path, headers=headers, **kwargs) as response:
        return response, b"".join(response.iter_raw())


def event_names(sse: bytes) -> list[str]:
    return [frame.split(b"\n")[0].decode() for frame in sse.split(b"\n\n") if frame]


@pytest.fixture
def bare(fake_anthropic: FakeAnthropicControl) -> Iterator[httpx.Client]:
    """An HTTP client that sends no Accept-Encoding header at all."""
    with httpx.Client(base_url=fake_anthropic.base_url, timeout=10) as raw:
        del raw.headers["accept-encoding"]
        yield raw


# --- auto (the default) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "entry", "status"),
    [
        ("POST", "/v1/messages", BODY, None, 200),
        (
            "POST",
            "/v1/messages/count_tokens",
            {"model": MODEL, "messages": BODY["messages"]},
            None,
            200,
        ),
        ("GET", "/v1/models?limit=3", None, None, 200),
        ("GET", f"/v1/models/{MODEL}", None, None, 200),
        ("POST", "/v1/messages", {**BODY, "model": "gpt-4"}, None, 404),
        ("POST", "/v1/messages", BODY, ErrorReply(status=529), 529),
        ("GET", "/v1/nothing", None, None, 404),
    ],
    ids=["message", "count_tokens", "models", "model", "validation-error", "scripted-error", "404"],
)
def test_auto_gzips_every_v1_json_body_when_the_client_accepts_gzip(
    http: httpx.Client,
    fake_anthropic: FakeAnthropicControl,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    entry: ErrorReply | None,
    status: int,
) -> None:
    if entry is not None:
        fake_anthropic.enqueue(entry)
    response, raw = fetch_raw(http, method, path, GZIP_OK, json=body)
    assert response.status_code == status
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "accept-encoding"
    assert int(response.headers["content-length"]) == len(raw)
    payload = json.loads(gzip.decompress(raw))
    if status == 200:
        assert "type" not in payload or payload["type"] != "error"
    else:
        assert payload["type"] == "error"
        assert payload["request_id"] == response.headers["request-id"]


def test_auto_gzips_a_stream_that_decodes_to_the_same_events(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("Hello there!", chunk_chars=3))
    response, raw = fetch_raw(http, "POST", "/v1/messages", GZIP_OK, json=STREAM_BODY)
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "accept-encoding"
    assert "content-length" not in response.headers
    sse = gzip.decompress(raw)  # one complete gzip member, trailer included
    assert event_names(sse) == [
        "event: message_start",
        "event: content_block_start",
        "event: ping",
        *["event: content_block_delta"] * 4,
        "event: content_block_stop",
        "event: message_delta",
        "event: message_stop",
    ]


def test_a_gzipped_stream_decodes_its_first_event_before_the_next_one_is_sent(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    # The second event comes 10 s after the first; reading waits at most 5 s per chunk, so a
    # compressor that buffered the first event would fail this test with a read timeout.
    fake_anthropic.enqueue(Reply.with_text("abcdef", chunk_chars=2, event_delay_ms=10_000))
    began = time.monotonic()
    decoder = zlib.decompressobj(wbits=31)
    decoded = b""
    with http.stream(
        "POST",
        "/v1/messages",
        headers=GZIP_OK,
        json=STREAM_BODY,
        timeout=httpx.Timeout(10, read=5),
    ) as response:
        assert response.headers["content-encoding"] == "gzip"
        chunks = response.iter_raw()
        while b"\n\n" not in decoded:
            assert time.monotonic() - began < 5, decoded
            decoded += decoder.decompress(next(chunks))
    assert time.monotonic() - began < 10
    assert decoded.startswith(b"event: message_start\n")
    assert decoded.endswith(b"\n\n")
    assert decoded.count(b"\n\n") == 1


@pytest.mark.parametrize(
    "accept_encoding",
    ["identity", "gzip;q=0", "gzip;q=0, identity", "*;q=0", "deflate", "GZIP;q=0, x-gzip;q=0"],
)
def test_auto_sends_plain_bytes_when_gzip_is_not_acceptable(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl, accept_encoding: str
) -> None:
    headers = {**HEADERS, "accept-encoding": accept_encoding}
    response, raw = fetch_raw(http, "POST", "/v1/messages", headers, json=BODY)
    assert "content-encoding" not in response.headers
    assert response.headers["vary"] == "accept-encoding"
    assert json.loads(raw)["type"] == "message"
    response, raw = fetch_raw(http, "POST", "/v1/messages", headers, json=STREAM_BODY)
    assert "content-encoding" not in response.headers
    assert raw.startswith(b"event: message_start\n")


def test_auto_sends_plain_bytes_without_accept_encoding(
    bare: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    response, raw = fetch_raw(bare, "POST", "/v1/messages", HEADERS, json=BODY)
    assert "content-encoding" not in response.headers
    assert json.loads(raw)["type"] == "message"
    assert "accept-encoding" not in fake_anthropic.requests()[0].headers


@pytest.mark.parametrize(
    "accept_encoding", ["gzip, deflate", "GZIP", "x-gzip", "*", "gzip;q=0.1, identity;q=1"]
)
def test_auto_gzips_whenever_gzip_is_acceptable(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl, accept_encoding: str
) -> None:
    headers = {**HEADERS, "accept-encoding": accept_encoding}
    response, raw = fetch_raw(http, "POST", "/v1/messages", headers, json=BODY)
    assert response.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw))["type"] == "message"


def test_control_endpoints_are_never_compressed(
    http: httpx.Client, fake_anthropic: FakeAnthropicControl
) -> None:
    for path in ("/_fake/health", "/_fake/script", "/_fake/requests", "/_fake/bill"):
        response, raw = fetch_raw(http, "GET", path, {"accept-encoding": "gzip"})
        assert response.status_code == 200
        assert "content-encoding" not in response.headers
        assert "vary" not in response.headers
        json.loads(raw)


def test_the_sdk_gets_gzip_and_decodes_it(
    client: anthropic.Anthropic, fake_anthropic: FakeAnthropicControl
) -> None:
    fake_anthropic.enqueue(Reply.with_text("zipped"), Reply.with_text("zipped stream"))
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=50, messages=BODY["messages"]
    )
    assert raw.headers["content-encoding"] == "gzip"
    message = raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == "zipped"
    with client.messages.stream(model=MODEL, max_tokens=50, messages=BODY["messages"]) as stream:
        assert stream.response.headers["content-encoding"] == "gzip"
        assert stream.get_final_text() == "zipped stream"


def test_br_is_negotiated_only_when_a_brotli_module_is_importable() -> None:
    auto = Compression.of_mode("auto")
    assert auto is not None
    chosen = auto.choose("br")
    if BROTLI is None:
        assert chosen is None
        assert auto.choose("br, gzip") is not None
        assert auto.choose("br, gzip").name == "gzip"  # type: ignore[union-attr]
    else:
        assert chosen is not None
        assert chosen.name == "br"


def test_accept_encoding_parsing_reads_qualities_case_insensitively() -> None:
    assert parse_accept_encoding("GZip;Q=0.5, br , identity;q=0, bad;q=x") == {
        "gzip": 0.5,
        "br": 1.0,
        "identity": 0.0,
        "bad": 0.0,
    }


# --- off and always --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_off(start_fake: StartFake) -> FakeAnthropicControl:
    return start_fake("--compression", "off")


@pytest.fixture(scope="module")
def fake_always(start_fake: StartFake) -> FakeAnthropicControl:
    return start_fake("--compression", "always")


def test_off_never_compresses_even_when_gzip_is_offered(fake_off: FakeAnthropicControl) -> None:
    fake_off.reset()
    fake_off.enqueue(ErrorReply(status=500))
    with httpx.Client(base_url=fake_off.base_url, timeout=10) as raw_client:
        for body, status in ((BODY, 500), (BODY, 200), (STREAM_BODY, 200)):
            response, raw = fetch_raw(raw_client, "POST", "/v1/messages", GZIP_OK, json=body)
            assert response.status_code == status
            assert "content-encoding" not in response.headers
            assert "vary" not in response.headers
            assert raw.startswith(b"event: message_start" if body is STREAM_BODY else b"{")
        response, raw = fetch_raw(raw_client, "GET", "/v1/models", GZIP_OK)
        assert "content-encoding" not in response.headers
        assert json.loads(raw)["data"]


@pytest.mark.parametrize("accept_encoding", [None, "identity", "gzip;q=0"])
def test_always_gzips_even_when_the_client_did_not_offer_gzip(
    fake_always: FakeAnthropicControl, accept_encoding: str | None
) -> None:
    fake_always.reset()
    with httpx.Client(base_url=fake_always.base_url, timeout=10) as raw_client:
        del raw_client.headers["accept-encoding"]
        headers = dict(HEADERS)
        if accept_encoding is not None:
            headers["accept-encoding"] = accept_encoding
        response, raw = fetch_raw(raw_client, "POST", "/v1/messages", headers, json=BODY)
        assert response.headers["content-encoding"] == "gzip"
        assert int(response.headers["content-length"]) == len(raw)
        assert json.loads(gzip.decompress(raw))["type"] == "message"
        response, raw = fetch_raw(raw_client, "POST", "/v1/messages", headers, json=STREAM_BODY)
        assert response.headers["content-encoding"] == "gzip"
        assert event_names(gzip.decompress(raw))[-1] == "event: message_stop"
    recorded = fake_always.requests()[0].headers
    assert recorded.get("accept-encoding") == accept_encoding


def test_the_compression_setting_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBEAGENTS_FAKE_ANTHROPIC_COMPRESSION", "always")
    assert FakeAnthropicSettings().compression == "always"
    monkeypatch.setenv("KUBEAGENTS_FAKE_ANTHROPIC_COMPRESSION", "sometimes")
    with pytest.raises(ValueError, match="compression"):
        FakeAnthropicSettings()
    monkeypatch.delenv("KUBEAGENTS_FAKE_ANTHROPIC_COMPRESSION")
    assert FakeAnthropicSettings().compression == "auto"
