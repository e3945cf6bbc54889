"""The one SSE decoder follows the spec's framing, whatever the chunk boundaries."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kubeagents.sse import ServerSentEvent, SseDecoder

ANTHROPIC = (
    b'event: message_start\ndata: {"type":"message_start"}\n\n'
    b"event: ping\ndata: {}\n\n"
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
EXPECTED = [
    ServerSentEvent(b"message_start", b'{"type":"message_start"}'),
    ServerSentEvent(b"ping", b"{}"),
    ServerSentEvent(b"message_stop", b'{"type":"message_stop"}'),
]


def decode(stream: bytes, size: int) -> list[ServerSentEvent]:
    decoder = SseDecoder()
    events: list[ServerSentEvent] = []
    for start in range(0, len(stream), size):
        events += decoder.feed(stream[start : start + size])
    return events


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(lambda s: s, id="lf"),
        pytest.param(lambda s: s.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(lambda s: s.replace(b"\n", b"\r"), id="cr"),
        pytest.param(lambda s: s.replace(b": ", b":"), id="no-space"),
        pytest.param(lambda s: b"\xef\xbb\xbf" + s, id="bom"),
    ],
)
def test_every_framing_and_split_gives_the_same_events(
    framing: Callable[[bytes], bytes], size: int
) -> None:
    assert decode(framing(ANTHROPIC), size) == EXPECTED


def test_data_lines_join_with_lf_and_only_one_space_is_dropped() -> None:
    stream = b"data:  two spaces\ndata\ndata: last\n\n"
    assert decode(stream, 1000) == [ServerSentEvent(b"message", b" two spaces\n\nlast")]


def test_comments_and_unknown_fields_are_ignored_and_an_event_without_data_is_not_sent() -> None:
    stream = b": keep-alive\nid: 7\nretry: 10\nevent: lonely\n\nevent: x\nfoo: bar\ndata: 1\n\n"
    assert decode(stream, 3) == [ServerSentEvent(b"x", b"1")]


def test_an_unfinished_event_is_held_until_its_blank_line() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: a\ndata: 1\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent(b"a", b"1")]


def test_a_cr_at_the_end_of_a_chunk_and_a_lf_at_the_start_of_the_next_are_one_line_end() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: 1\r") == []
    assert decoder.feed(b"\n\r\n") == [ServerSentEvent(b"message", b"1")]
