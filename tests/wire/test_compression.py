"""Body codecs: round trips, corrupt/truncated/trailing input refused, bombs stopped at max_size, measure()."""

from __future__ import annotations

import tracemalloc
import zlib

import lz4.frame
import numpy as np
import pytest
import zstandard

from edensplit.errors import EdenError, ErrorCode
from edensplit.wire.compression import (
    CODECS,
    DEFAULT_LEVELS,
    CompressionResult,
    compress,
    decompress,
    measure,
    normalise_codec,
)
from tests.wire.helpers import wire_error

PACKED = [c for c in CODECS if c != "identity"]
LIMIT = 1 << 24


def random_bytes(n: int = 200_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def float16_blob(n: int = 100_000, seed: int = 1) -> bytes:
    """What an enc_out blob's body looks like: a JSON-ish header, then unit-normal float16 tokens."""
    tokens = np.random.default_rng(seed).standard_normal(n).astype("<f2").tobytes()
    return b'{"format":"edensplit.enc_out","wire_dtype":"float16"}' + bytes(8) + tokens


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """50 MB of zeros, compressed: small on the wire, huge when decoded."""
    zeros = bytes(50_000_000)
    return {codec: compress(zeros, codec) for codec in PACKED}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("make", [random_bytes, float16_blob, lambda: b"", lambda: bytes(300_000)],
                         ids=["random", "float16", "empty", "zeros"])
def test_round_trip(codec, make):
    data = make()
    packed = compress(data, codec)
    assert decompress(packed, codec, max_size=len(data)) == data
    if codec == "identity":
        assert packed == data


@pytest.mark.parametrize("codec", PACKED)
def test_compressible_data_shrinks_and_random_data_barely_grows(codec):
    assert len(compress(bytes(300_000), codec)) < 3_000
    assert len(compress(random_bytes(), codec)) < 200_000 * 1.01 + 64


@pytest.mark.parametrize(("codec", "level"), [("gzip", 9), ("deflate", 0), ("zstd", -5), ("zstd", 19), ("lz4", 9)])
def test_explicit_levels(codec, level):
    data = float16_blob(20_000)
    assert decompress(compress(data, codec, level), codec, LIMIT) == data


@pytest.mark.parametrize(("codec", "level"), [("gzip", 10), ("deflate", -2), ("zstd", 23), ("lz4", 17),
                                              ("identity", 1), ("gzip", 1.5), ("zstd", True)])
def test_bad_level(codec, level):
    with pytest.raises(EdenError) as info:
        compress(b"abc", codec, level)
    assert info.value.code == ErrorCode.INVALID_PARAMETER


def test_formats_are_the_standard_ones():
    data = float16_blob(10_000)
    assert zlib.decompress(compress(data, "gzip"), wbits=31) == data  # RFC 1952, what `gzip -d` reads
    assert zlib.decompress(compress(data, "deflate")) == data  # RFC 1950 zlib stream: HTTP's "deflate"
    assert zstandard.ZstdDecompressor().decompress(compress(data, "zstd")) == data
    assert lz4.frame.decompress(compress(data, "lz4")) == data
    # and what other encoders produce is read
    assert decompress(zlib.compress(data, 9, wbits=31), "gzip", LIMIT) == data
    assert decompress(lz4.frame.compress(data, content_checksum=True), "lz4", LIMIT) == data
    streamed = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compressobj()
    assert decompress(streamed.compress(data) + streamed.flush(), "zstd", LIMIT) == data


@pytest.mark.parametrize("codec", ["gzip", "zstd", "lz4"])
def test_concatenated_members_or_frames_are_read(codec):
    a, b = random_bytes(5_000), float16_blob(5_000)
    assert decompress(compress(a, codec) + compress(b, codec), codec, LIMIT) == a + b


def test_zstd_skippable_frame_is_skipped():
    skippable = (0x184D2A5A).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    data = float16_blob(5_000)
    assert decompress(skippable + compress(data, "zstd"), "zstd", LIMIT) == data


def test_codec_names_follow_http():
    assert normalise_codec("GZip") == "gzip"
    assert normalise_codec(" x-gzip ") == "gzip"
    assert normalise_codec("ZSTD") == "zstd"
    data = random_bytes(1_000)
    assert decompress(compress(data, "X-GZIP"), "gzip", LIMIT) == data


@pytest.mark.parametrize("codec", ["br", "compress", "", "gzip, zstd", "snappy"])
def test_unknown_codec(codec):
    for call in (lambda: compress(b"abc", codec), lambda: decompress(b"abc", codec, LIMIT),
                 lambda: measure(b"abc", [codec])):
        with pytest.raises(EdenError) as info:
            call()
        assert info.value.code == ErrorCode.UNSUPPORTED_MEDIA_TYPE
        assert info.value.code.status == 415
        assert "unsupported content encoding" in info.value.message


@pytest.mark.parametrize("codec", PACKED)
def test_garbage_is_refused(codec):
    with wire_error(ErrorCode.INVALID_BLOB, f"{codec}-encoded body"):
        decompress(b"this is not compressed data at all, just text" * 20, codec, LIMIT)


@pytest.mark.parametrize("codec", PACKED)
@pytest.mark.parametrize("cut", [1, 4, 100, 0.5])
def test_truncated_is_refused(codec, cut):
    packed = compress(float16_blob(50_000), codec)
    end = int(len(packed) * cut) if isinstance(cut, float) else len(packed) - cut
    with wire_error(ErrorCode.INVALID_BLOB, f"{codec}-encoded body"):
        decompress(packed[:end], codec, LIMIT)


def test_zstd_missing_checksum_is_truncation():
    """python-zstandard's streaming reader returns the data without complaint; decompress must not."""
    data = float16_blob(50_000)
    packed = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    with wire_error(ErrorCode.INVALID_BLOB, "zstd-encoded body is truncated"):
        decompress(packed[:-4], "zstd", LIMIT)


@pytest.mark.parametrize("codec", PACKED)
def test_empty_body_is_refused(codec):
    with wire_error(ErrorCode.INVALID_BLOB, f"{codec}-encoded body"):
        decompress(b"", codec, LIMIT)


@pytest.mark.parametrize("codec", PACKED)
def test_trailing_garbage_is_refused(codec):
    with wire_error(ErrorCode.INVALID_BLOB, f"{codec}-encoded body"):
        decompress(compress(random_bytes(5_000), codec) + b"\x00garbage-after-the-end", codec, LIMIT)


@pytest.mark.parametrize("codec", PACKED)
def test_flipped_bytes_are_refused(codec):
    packed = bytearray(compress(float16_blob(50_000), codec))  # zstd and lz4 with a content checksum
    packed[len(packed) // 2] ^= 0xFF
    packed[len(packed) // 2 + 1] ^= 0xFF
    with wire_error(ErrorCode.INVALID_BLOB, f"{codec}-encoded body"):
        decompress(bytes(packed), codec, LIMIT)


@pytest.mark.parametrize("codec", PACKED)
def test_bomb_stops_at_max_size(codec, bombs):
    packed = bombs[codec]
    assert len(packed) < 300_000
    tracemalloc.start()
    try:
        with wire_error(ErrorCode.PAYLOAD_TOO_LARGE, f"{codec}-encoded body decompresses to more than 1,000,000"):
            decompress(packed, codec, max_size=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, f"{codec} held {peak:,} bytes decoding a bomb with max_size 1 MB"


@pytest.mark.parametrize("codec", CODECS)
def test_max_size_is_inclusive(codec):
    data = random_bytes(10_000)
    packed = compress(data, codec)
    assert decompress(packed, codec, max_size=10_000) == data
    with wire_error(ErrorCode.PAYLOAD_TOO_LARGE, "more than 9,999 bytes"):
        decompress(packed, codec, max_size=9_999)
    with pytest.raises(ValueError):
        decompress(packed, codec, max_size=-1)


def test_too_large_maps_to_413():
    with pytest.raises(EdenError) as info:
        decompress(compress(bytes(2_000), "zstd"), "zstd", 1_000)
    assert info.value.code.status == 413
    assert info.value.details == {"codec": "zstd", "max_size": 1_000}


def test_measure_sane():
    data = float16_blob(50_000)
    specs = [*CODECS, ("gzip", 6), ("zstd", 3)]
    results = measure(data, specs, repeats=2)
    assert [(r.codec, r.level) for r in results] == [
        *((c, DEFAULT_LEVELS[c]) for c in CODECS), ("gzip", 6), ("zstd", 3)]
    for r in results:
        assert r.raw_bytes == len(data)
        assert r.compressed_bytes == len(compress(data, r.codec, r.level))
        assert 0 < r.ratio <= 1.1
        assert r.saved == pytest.approx(1 - r.ratio)
        assert 0 <= r.compress_s < 60 and 0 <= r.decompress_s < 60  # timed (an untimed codec would stay at inf)
        assert r.compress_mb_s > 0 and r.decompress_mb_s > 0
    identity = results[0]
    assert identity.ratio == 1.0 and identity.saved == 0.0
    # float16 exponents repeat: every codec with an entropy stage saves bytes (measured ratio 0.919-0.925);
    # lz4, which only finds repeated strings, does not (measured 1.0003).
    assert {r.codec for r in results if r.ratio < 0.95} == {"gzip", "deflate", "zstd"}


def test_measure_rejects_bad_repeats():
    with pytest.raises(ValueError):
        measure(b"abc", repeats=0)


def test_result_properties():
    r = CompressionResult("zstd", 1, raw_bytes=10_000_000, compressed_bytes=8_000_000, compress_s=0.02,
                          decompress_s=0.01)
    assert r.ratio == pytest.approx(0.8)
    assert r.saved == pytest.approx(0.2)
    assert r.compress_mb_s == pytest.approx(500)
    assert r.decompress_mb_s == pytest.approx(1000)
    assert CompressionResult("identity", None, 0, 0, 0.0, 0.0).ratio == 1.0
