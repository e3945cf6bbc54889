"""Response compression of the `/v1/*` routes, like the CDN in front of the real API.

The setting `compression` picks the mode:

- `"auto"` (default): compress when the request's `Accept-Encoding` allows it (RFC 9110 §12.5.3):
  a coding is acceptable when it is listed (or matched by `*`) with a quality above 0, so
  `gzip;q=0` and `identity` alone get plain bytes, and a missing header gets plain bytes too.
  `br` is used only when the client offers it with at least gzip's quality AND a brotli module
  (`brotli` or `brotlicffi`) is importable; otherwise gzip (`x-gzip` counts as gzip).
- `"off"`: never compress.
- `"always"`: a misbehaving intermediary: gzip even when the client did not offer it (br when
  the client negotiated it), to test clients that must decode whatever arrives.

What is compressed: every `/v1/*` response body, errors included: JSON bodies in one piece (the
`content-length` is the compressed length), SSE streams incrementally, each event compressed
and sync-flushed (`Z_SYNC_FLUSH`) as it is written, so that a client can decode every event as
it arrives and the stream stays unbuffered. Compressed responses carry `content-encoding`;
every `/v1/*` response carries `vary: accept-encoding` unless the mode is `"off"`. The control
endpoints (`/_fake/*`) are never compressed.

Cost: with `"off"`, or when nothing is negotiated, no compression work is done; negotiation is
cached per distinct `Accept-Encoding` value. gzip runs at level 1 (the fastest, nginx's default).
"""

from __future__ import annotations

import functools
import importlib
import zlib
from types import ModuleType
from typing import Literal, Protocol

CompressionMode = Literal["auto", "off", "always"]

GZIP_LEVEL = 1
GZIP_WBITS = 31  # 16 + 15: a gzip header and trailer around deflate
VARY = "accept-encoding"


def _load_brotli() -> ModuleType | None:
    for name in ("brotli", "brotlicffi"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


BROTLI = _load_brotli()


class StreamEncoder(Protocol):
    def chunk(self, data: bytes) -> bytes:
        """`data` compressed and flushed: the client can decode all of it from what it got."""

    def finish(self) -> bytes:
        """The end of the compressed stream (trailer)."""


class _GzipStream:
    __slots__ = ("_compress", "_flush")

    def __init__(self) -> None:
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS)
        self._compress = compressor.compress
        self._flush = compressor.flush

    def chunk(self, data: bytes) -> bytes:
        return self._compress(data) + self._flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._flush(zlib.Z_FINISH)


class _BrotliStream:
    __slots__ = ("_compressor",)

    def __init__(self, brotli: ModuleType) -> None:
        self._compressor = brotli.Compressor()

    def chunk(self, data: bytes) -> bytes:
        compressor = self._compressor
        return bytes(compressor.process(data)) + bytes(compressor.flush())

    def finish(self) -> bytes:
        return bytes(self._compressor.finish())


class Coding:
    """A content coding: its `content-encoding` name, whole-body and streaming compressors."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def whole(self, body: bytes) -> bytes:
        if self.name == "gzip":
            return zlib.compress(body, GZIP_LEVEL, GZIP_WBITS)
        assert BROTLI is not None
        return bytes(BROTLI.compress(body))

    def stream(self) -> StreamEncoder:
        if self.name == "gzip":
            return _GzipStream()
        assert BROTLI is not None
        return _BrotliStream(BROTLI)


GZIP = Coding("gzip")
BR = Coding("br") if BROTLI is not None else None


def parse_accept_encoding(header: str) -> dict[str, float]:
    """Coding (lowercased) -> quality; a malformed quality counts as 0 (not acceptable)."""
    qualities: dict[str, float] = {}
    for item in header.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        qualities[coding] = quality
    return qualities


def _quality(qualities: dict[str, float], *names: str) -> float:
    for name in names:
        if name in qualities:
            return qualities[name]
    return qualities.get("*", 0.0)


@functools.lru_cache(maxsize=256)
def negotiate(accept_encoding: str) -> Coding | None:
    """The coding an `Accept-Encoding` value asks for (br preferred on a tie), or None."""
    qualities = parse_accept_encoding(accept_encoding)
    gzip_quality = _quality(qualities, "gzip", "x-gzip")
    if BR is not None:
        br_quality = _quality(qualities, "br")
        if br_quality > 0 and br_quality >= gzip_quality:
            return BR
    return GZIP if gzip_quality > 0 else None


class Compression:
    """The compression policy of one server (`None` stands for mode `"off"`; see `of_mode`)."""

    __slots__ = ("always",)

    def __init__(self, *, always: bool) -> None:
        self.always = always

    @classmethod
    def of_mode(cls, mode: CompressionMode) -> Compression | None:
        """The policy of a mode; None for `"off"`, so the hot path tests one `is None`."""
        if mode == "off":
            return None
        return cls(always=mode == "always")

    def choose(self, accept_encoding: str | None) -> Coding | None:
        """The coding of the response to a request with this `Accept-Encoding` (None: plain)."""
        coding = negotiate(accept_encoding) if accept_encoding else None
        if coding is None and self.always:
            return GZIP
        return coding
