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


STEP = 8 * 2**20
"""Output is produced (and, with `reserve`, paid for) this much at a time."""
RATIO_FLOOR = 2**20
"""With a ratio limit, a body may still inflate to this much: a small body is never refused for its ratio."""
DEFAULT_MAX_RATIO = 200
"""The servers' default ratio limit (MAX_INFLATE_RATIO); the client sends a body that would pass it uncompressed."""


def within_ratio(raw: int, packed: int, max_ratio: float = DEFAULT_MAX_RATIO) -> bool:
    """Whether a body of `raw` bytes compressed to `packed` inflates within the ratio limit."""
    return raw <= max(RATIO_FLOOR, max_ratio * packed)


class _Output:
    """Decompressed bytes as they come, at most `limit`: each step paid for first (`reserve`), more refused."""

    def __init__(self, codec: str, limit: int, max_size: int, reserve: Callable[[int], None] | None, ratio: str):
        self.codec, self.limit, self.max_size, self.reserve, self.ratio = codec, limit, max_size, reserve, ratio
        self.data = bytearray()

    def room(self) -> int:
        """How much the next step may bring: a step, or what is left under the limit and one byte more."""
        return min(STEP, self.limit + 1 - len(self.data))

    def add(self, chunk: bytes) -> None:
        if self.reserve is not None and chunk:
            self.reserve(len(chunk))
        self.data += chunk
        if len(self.data) > self.limit:
            raise _too_large(self.codec, self.limit, self.ratio)


def decompress(data: bytes, codec: str, max_size: int, *, max_ratio: float | None = None,
               reserve: Callable[[int], None] | None = None) -> bytes:
    """`data` decoded from `codec`, refusing more than `max_size` bytes of output, more than `max_ratio` times its
    own size past RATIO_FLOOR (PAYLOAD_TOO_LARGE: a few KB cannot buy seconds of CPU), and corrupt, truncated or
    trailing data (INVALID_BLOB). The output grows a STEP at a time, each step paid for with `reserve(n)` first
    (a server's byte budget: what it has not yet inflated, it does not hold)."""
    codec = normalise_codec(codec)
    if not isinstance(max_size, int) or max_size < 0:
        raise ValueError(f"max_size must be a non-negative int, got {max_size!r}")
    if codec == "identity":
        if len(data) > max_size:
            raise _too_large(codec, max_size)
        return bytes(data)
    limit, ratio = max_size, ""
    if max_ratio is not None and max(RATIO_FLOOR, int(max_ratio * len(data))) < max_size:
        limit = max(RATIO_FLOOR, int(max_ratio * len(data)))
        ratio = f" ({max_ratio:g} times its {len(data)} bytes)"
    out = _Output(codec, limit, max_size, reserve, ratio)
    try:
        _DECODERS[codec](data, out)
    except (zlib.error, zstandard.ZstdError, RuntimeError, ValueError) as exc:
        raise _corrupt(codec, f"is corrupt ({exc})") from None
    return bytes(out.data)


# --- decoders: each adds its output a step at a time, or raises --------------------------------------


def _zlib_decompress(data: bytes, out: _Output, wbits: int, codec: str, members: bool) -> None:
    """A zlib/gzip stream (several concatenated members if `members`)."""
    rest = memoryview(data)
    first = True
    while True:
        d = zlib.decompressobj(wbits)
        tail: bytes | memoryview = rest
        try:
            while True:
                room = out.room()
                chunk = d.decompress(tail, room)
                out.add(chunk)
                tail = d.unconsumed_tail
                if d.eof or (not tail and len(chunk) < room):
                    break
        except zlib.error as exc:
            if first:
                raise
            raise _corrupt(codec, f"has {len(rest)} bytes of trailing data that are not a {codec} member "
                                  f"({exc})") from None
        if not d.eof:  # all the input consumed, and no end marker
            raise _corrupt(codec, "is truncated (the stream ends before its end marker)")
        if not d.unused_data:
            return
        if not members:
            raise _corrupt(codec, f"has {len(d.unused_data)} bytes of trailing data after the stream")
        rest, first = memoryview(d.unused_data), False


def _gzip(data: bytes, out: _Output) -> None:
    _zlib_decompress(data, out, _GZIP_WBITS, "gzip", members=True)


def _deflate(data: bytes, out: _Output) -> None:
    _zlib_decompress(data, out, _ZLIB_WBITS, "deflate", members=False)


def _lz4(data: bytes, out: _Output) -> None:
    """One or more LZ4 frames."""
    rest: bytes | memoryview = memoryview(data)
    if not data:
        raise _corrupt("lz4", "is empty (no frame)")
    while True:
        d = lz4.frame.LZ4FrameDecompressor()
        out.add(d.decompress(rest, max_length=out.room()))
        while not d.eof and not d.needs_input:  # output still pending inside the decompressor
            out.add(d.decompress(b"", max_length=out.room()))
        if not d.eof:
            raise _corrupt("lz4", "is truncated (a frame ends before its end mark)")
        if not d.unused_data:
            return
        rest = d.unused_data


def _zstd(data: bytes, out: _Output) -> None:
    """One or more zstd frames. python-zstandard's streaming reader bounds the output but silently stops
    at a truncated frame, so the frame and block structure is walked first (no decompression): that
    catches truncation and trailing garbage and gives an upper bound on the output size."""
    bound = _zstd_bound(data)
    with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
        while True:  # read to the end (checksums included) unless the output passes a limit
            chunk = reader.read(out.room())
            if not chunk:
                break
            out.add(chunk)
    if len(out.data) > bound:  # cannot happen for valid frames: the bound is what their blocks can hold
        raise _corrupt("zstd", f"decodes to more than its blocks can hold ({bound:,} bytes)")


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


_DECODERS: dict[str, Callable[[bytes, _Output], None]] = {"gzip": _gzip, "deflate": _deflate, "zstd": _zstd,
                                                           "lz4": _lz4}


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


def _too_large(codec: str, max_size: int, ratio: str = "") -> WireError:
    return WireError(f"{codec}-encoded body decompresses to more than {max_size:,} bytes, the limit{ratio}",
                     code=ErrorCode.PAYLOAD_TOO_LARGE, details={"codec": codec, "max_size": max_size})
