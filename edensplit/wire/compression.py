"""Body compression for the wire: the HTTP `Content-Encoding` codecs, bounded decompression, measurement.

The plan proposed gzip on the encoder's output. Whether that pays depends on what the bytes look like
(the enc_out tokens are LayerNorm outputs, whose float mantissas are close to random) and on the link:
compressing costs CPU time on both ends, and only saves time when the bytes it removes would take
longer to send than the compression takes. `measure` gives both numbers for a payload;
`benchmarks/compression.py` runs it on real encoder outputs and records the result in
`benchmarks/compression-results.md`.

Codec names are the HTTP `Content-Encoding` tokens: `identity`, `gzip` (RFC 1952), `deflate` (a zlib
stream, RFC 1950, which is what HTTP's "deflate" means), `zstd` (RFC 8878) and `lz4` (an LZ4 frame;
not a registered HTTP coding, so both ends must be edensplit). Names are matched case-insensitively and
`x-gzip` is read as `gzip`, as RFC 9110 asks.

`decompress` never trusts the sender: it stops as soon as the output would pass `max_size` (so a small
"zip bomb" cannot exhaust memory) and refuses truncated input, trailing garbage and corrupt data with a
`WireError` that names the codec and the problem.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import lz4.frame
import zstandard

from edensplit.errors import EdenError, ErrorCode, WireError

CODECS = ("identity", "gzip", "deflate", "zstd", "lz4")
"""The supported codecs, by their HTTP `Content-Encoding` names."""

DEFAULT_LEVELS: dict[str, int | None] = {"identity": None, "gzip": 1, "deflate": 1, "zstd": 1, "lz4": 0}
"""The level each codec uses when none is given: the fast end of each range, chosen by measurement
(benchmarks/compression-results.md, full-size enc_out at 480x854). On the enc_out blob gzip/deflate level
6 removes under one percentage point more than level 1 (0.3 on float32) for up to ~2.5x the compress
time, and zstd level 3 does no better than that over level 1 for 1.7-4x the time; level 6 and 3 only win
clearly on smooth data such as raw frames. lz4's 0 is its default fast mode."""

LEVELS: dict[str, range] = {"gzip": range(0, 10), "deflate": range(0, 10),
                            "zstd": range(-(1 << 17), zstandard.MAX_COMPRESSION_LEVEL + 1), "lz4": range(0, 17)}
"""The levels each codec accepts (`identity` takes none)."""

_ALIASES = {"x-gzip": "gzip"}
_GZIP_WBITS = 31  # zlib: gzip header and trailer
_ZLIB_WBITS = 15  # zlib: RFC 1950 header and Adler-32 trailer
_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # 0x184D2A50 ... 0x184D2A5F
_ZSTD_BLOCK_MAX = 128 * 1024
_ZSTD_UNKNOWN = 1 << 63  # content sizes at or above this are "unknown" / "error" markers


def normalise_codec(name: str) -> str:
    """A `Content-Encoding` token -> one of CODECS (any case; `x-gzip` is `gzip`), else UNSUPPORTED_MEDIA_TYPE."""
    key = name.strip().lower() if isinstance(name, str) else ""
    key = _ALIASES.get(key, key)
    if key not in CODECS:
        raise EdenError(f"unsupported content encoding {name!r}; use one of {', '.join(CODECS)}",
                        code=ErrorCode.UNSUPPORTED_MEDIA_TYPE, details={"codec": str(name), "supported": list(CODECS)})
    return key


def compress(data: bytes, codec: str, level: int | None = None) -> bytes:
    """`data` encoded with `codec` at `level` (None: DEFAULT_LEVELS); `identity` returns it unchanged.

    zstd and lz4 frames carry a checksum of the content (xxHash, far faster than the codecs), as gzip and
    deflate always do, so every codec refuses corrupted data rather than returning it.
    """
    codec = normalise_codec(codec)
    level = _level(codec, level)
    if codec == "identity":
        return bytes(data)
    if codec == "gzip":
        return zlib.compress(data, level, wbits=_GZIP_WBITS)
    if codec == "deflate":
        return zlib.compress(data, level, wbits=_ZLIB_WBITS)
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)
    return lz4.frame.compress(data, compression_level=level, content_checksum=True)


def decompress(data: bytes, codec: str, max_size: int) -> bytes:
    """`data` decoded from `codec`, refusing more than `max_size` bytes of output (PAYLOAD_TOO_LARGE) and
    corrupt, truncated or trailing data (INVALID_BLOB), without ever holding much more than `max_size`."""
    codec = normalise_codec(codec)
    if not isinstance(max_size, int) or max_size < 0:
        raise ValueError(f"max_size must be a non-negative int, got {max_size!r}")
    if codec == "identity":
        if len(data) > max_size:
            raise _too_large(codec, max_size)
        return bytes(data)
    decoder = _DECODERS[codec]
    try:
        return decoder(data, max_size)
    except (zlib.error, zstandard.ZstdError, RuntimeError, ValueError) as exc:
        raise _corrupt(codec, f"is corrupt ({exc})") from None


# --- decoders: each returns at most max_size bytes, or raises --------------------------------------


def _zlib_decompress(data: bytes, max_size: int, wbits: int, codec: str, members: bool) -> bytes:
    """A zlib/gzip stream (several concatenated members if `members`), output capped at max_size + 1."""
    out = bytearray()
    rest = memoryview(data)
    first = True
    while True:
        d = zlib.decompressobj(wbits)
        try:
            out += d.decompress(rest, max_size + 1 - len(out))  # max_length 0 would mean "no limit"; it is >= 1
        except zlib.error as exc:
            if first:
                raise
            raise _corrupt(codec, f"has {len(rest)} bytes of trailing data that are not a {codec} member "
                                  f"({exc})") from None
        if len(out) > max_size:
            raise _too_large(codec, max_size)
        if not d.eof:  # below the limit, so all the input was consumed without reaching the end
            raise _corrupt(codec, "is truncated (the stream ends before its end marker)")
        if not d.unused_data:
            return bytes(out)
        if not members:
            raise _corrupt(codec, f"has {len(d.unused_data)} bytes of trailing data after the stream")
        rest, first = memoryview(d.unused_data), False


def _gzip(data: bytes, max_size: int) -> bytes:
    return _zlib_decompress(data, max_size, _GZIP_WBITS, "gzip", members=True)


def _deflate(data: bytes, max_size: int) -> bytes:
    return _zlib_decompress(data, max_size, _ZLIB_WBITS, "deflate", members=False)


def _lz4(data: bytes, max_size: int) -> bytes:
    """One or more LZ4 frames, output capped at max_size + 1."""
    out = bytearray()
    rest: bytes | memoryview = memoryview(data)
    if not data:
        raise _corrupt("lz4", "is empty (no frame)")
    while True:
        d = lz4.frame.LZ4FrameDecompressor()
        out += d.decompress(rest, max_length=max_size + 1 - len(out))
        if len(out) > max_size:
            raise _too_large("lz4", max_size)
        if not d.eof:
            raise _corrupt("lz4", "is truncated (a frame ends before its end mark)")
        if not d.unused_data:
            return bytes(out)
        rest = d.unused_data


def _zstd(data: bytes, max_size: int) -> bytes:
    """One or more zstd frames. python-zstandard's streaming reader bounds the output but silently stops
    at a truncated frame, so the frame and block structure is walked first (no decompression): that
    catches truncation and trailing garbage and gives an upper bound on the output size."""
    bound = _zstd_bound(data)
    buf = bytearray(min(bound, max_size) + 1)  # one spare byte: output that reaches it is over a limit
    view = memoryview(buf)
    total = 0
    with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
        while total < len(buf):  # read to the end (checksums included) unless the output passes the limit
            n = reader.readinto(view[total:])
            if not n:
                break
            total += n
    if total > max_size:
        raise _too_large("zstd", max_size)
    if total > bound:  # cannot happen for valid frames: the bound is what their blocks can hold
        raise _corrupt("zstd", f"decodes to more than its blocks can hold ({bound:,} bytes)")
    return bytes(view[:total])


def _zstd_bound(data: bytes) -> int:
    """Walk zstd frames and blocks (RFC 8878 section 3.1): most bytes they can decode to; raises if truncated."""
    size, pos, bound = len(data), 0, 0
    if not size:
        raise _corrupt("zstd", "is empty (no frame)")
    view = memoryview(data)
    while pos < size:
        if size - pos < 8:  # the smallest frame (magic, header, one empty block) is 8 bytes
            raise _corrupt("zstd", f"is truncated or has trailing data ({size - pos} stray bytes at {pos})")
        magic = int.from_bytes(view[pos:pos + 4], "little")
        if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
            pos += 8 + int.from_bytes(view[pos + 4:pos + 8], "little")
            continue
        if magic != _ZSTD_MAGIC:
            raise _corrupt("zstd", f"has no frame magic number at byte {pos} (not zstd, or trailing data)")
        try:
            header = zstandard.frame_header_size(view[pos:])
            params = zstandard.get_frame_parameters(view[pos:])
        except zstandard.ZstdError as exc:
            raise _corrupt("zstd", f"has an unreadable frame header at byte {pos} ({exc})") from None
        block_max = min(params.window_size, _ZSTD_BLOCK_MAX)
        frame_bound = 0
        pos += header
        last = False
        while not last:
            if size - pos < 3:
                raise _corrupt("zstd", "is truncated (a frame ends before its last block)")
            head = int.from_bytes(view[pos:pos + 3], "little")
            last, kind, block = bool(head & 1), (head >> 1) & 3, head >> 3
            if kind == 3:
                raise _corrupt("zstd", f"has a block of the reserved type at byte {pos}")
            pos += 3 + (1 if kind == 1 else block)  # RLE blocks carry one byte; raw and compressed their size
            frame_bound += block if kind < 2 else block_max
        pos += 4 if params.has_checksum else 0
        if pos > size:
            raise _corrupt("zstd", "is truncated (the last frame is incomplete)")
        if params.content_size < _ZSTD_UNKNOWN:
            frame_bound = min(frame_bound, params.content_size)
        bound += frame_bound
    if pos > size:
        raise _corrupt("zstd", "is truncated (a skippable frame is incomplete)")
    return bound


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {"gzip": _gzip, "deflate": _deflate, "zstd": _zstd, "lz4": _lz4}


# --- measuring -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompressionResult:
    """One codec at one level on one payload: sizes and the best-of-`repeats` wall times."""

    codec: str
    level: int | None
    raw_bytes: int
    compressed_bytes: int
    compress_s: float
    decompress_s: float

    @property
    def ratio(self) -> float:
        """compressed / raw (1.0 for an empty payload)."""
        return self.compressed_bytes / self.raw_bytes if self.raw_bytes else 1.0

    @property
    def saved(self) -> float:
        """The fraction of the bytes compression removes (negative when it grows them)."""
        return 1.0 - self.ratio

    @property
    def compress_mb_s(self) -> float:
        """Raw MB (10^6 bytes) compressed per second (inf when too fast to time)."""
        return _rate(self.raw_bytes, self.compress_s)

    @property
    def decompress_mb_s(self) -> float:
        """Raw MB (10^6 bytes) restored per second (inf when too fast to time)."""
        return _rate(self.raw_bytes, self.decompress_s)


def measure(data: bytes, codecs: Iterable[str | tuple[str, int | None]] = CODECS,
            repeats: int = 1) -> list[CompressionResult]:
    """Compress and decompress `data` with each codec (a name, or a (name, level) pair); best time of `repeats`.

    Every round trip is checked to give `data` back. Times are single-threaded wall clock on this machine.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    data = bytes(data)
    results = []
    for spec in codecs:
        name, level = (spec, None) if isinstance(spec, str) else spec
        name = normalise_codec(name)
        level = _level(name, level)
        packed, compress_s = best_time(lambda name=name, level=level: compress(data, name, level), repeats)
        restored, decompress_s = best_time(lambda name=name, packed=packed: decompress(packed, name, len(data)),
                                           repeats)
        if restored != data:
            raise AssertionError(f"{name} level {level} did not round-trip")  # a bug here, never the input's fault
        results.append(CompressionResult(name, level, len(data), len(packed), compress_s, decompress_s))
    return results


def best_time(fn: Callable[[], bytes], repeats: int) -> tuple[bytes, float]:
    """fn()'s result and its fastest time over `repeats` runs."""
    best, out = float("inf"), b""
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def _rate(size: int, seconds: float) -> float:
    return size / 1e6 / seconds if seconds > 0 else float("inf")


# --- helpers ---------------------------------------------------------------------------------------


def _level(codec: str, level: int | None) -> int | None:
    if level is None:
        return DEFAULT_LEVELS[codec]
    if codec == "identity":
        raise EdenError("the identity encoding takes no level", code=ErrorCode.INVALID_PARAMETER)
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS[codec]:
        allowed = LEVELS[codec]
        raise EdenError(f"{codec} level must be an integer in [{allowed.start}, {allowed.stop - 1}], got {level!r}",
                        code=ErrorCode.INVALID_PARAMETER)
    return level


def _corrupt(codec: str, problem: str) -> WireError:
    return WireError(f"{codec}-encoded body {problem}", code=ErrorCode.INVALID_BLOB, details={"codec": codec})


def _too_large(codec: str, max_size: int) -> WireError:
    return WireError(f"{codec}-encoded body decompresses to more than {max_size:,} bytes, the limit",
                     code=ErrorCode.PAYLOAD_TOO_LARGE, details={"codec": codec, "max_size": max_size})
