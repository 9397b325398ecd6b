"""Image and base64 codecs: lossless PNG, any common mode to RGB, and named errors for bad input."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edensplit.errors import ErrorCode, InputError
from edensplit.wire.images import MAX_PIXELS, b64decode_field, b64encode, decode_image, encode_png
from tests.conftest import make_frames
from tests.wire.helpers import wire_error


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR (with a valid CRC) claims width x height pixels."""
    png = _save(Image.new("RGB", (1, 1)), "PNG")
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_png_round_trip_is_exact():
    frame = make_frames(1, 37, 53)[0]
    data = encode_png(frame)
    assert data.startswith(b"\x89PNG")
    out = decode_image(data)
    assert out.dtype == np.uint8 and out.flags.c_contiguous and np.array_equal(out, frame)


def test_jpeg_decodes_to_rgb_of_the_same_size():
    frame = make_frames(1, 40, 70)[0]
    out = decode_image(_save(Image.fromarray(frame), "JPEG", quality=90))
    assert out.shape == (40, 70, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - frame).mean() < 8


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "1"])
def test_other_modes_become_rgb(mode):
    img = Image.fromarray(make_frames(1, 24, 32)[0]).convert(mode)
    out = decode_image(_save(img, "PNG"))
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out, np.asarray(img.convert("RGB")))


def test_grayscale_is_replicated_to_three_channels():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = decode_image(_save(Image.fromarray(gray), "PNG"))
    assert np.array_equal(out, np.repeat(gray[..., None], 3, axis=-1))


def test_16_bit_grayscale_keeps_its_top_byte():
    gray = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    out = decode_image(_save(Image.fromarray(gray), "PNG"))
    assert out.dtype == np.uint8 and np.array_equal(out[..., 0], np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_empty_bytes_are_not_an_image():
    with wire_error(ErrorCode.INVALID_IMAGE, "frame0 is empty"):
        decode_image(b"", "frame0")


@pytest.mark.parametrize("data", [b"hello, world", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"%!PS-Adobe-3.0 EPSF-3.0\n"])
def test_non_image_bytes_name_the_field(data):
    with wire_error(ErrorCode.INVALID_IMAGE, "frame1 is not a PNG or JPEG image"):
        decode_image(data, "frame1")


def test_truncated_png_is_refused():
    data = encode_png(make_frames(1, 32, 32)[0])
    with wire_error(ErrorCode.INVALID_IMAGE, "frame0 is not a PNG or JPEG image"):
        decode_image(data[: len(data) // 2], "frame0")


def test_formats_outside_the_allow_list_are_refused():
    with wire_error(ErrorCode.INVALID_IMAGE, "not a PNG or JPEG image"):
        decode_image(_save(Image.new("RGB", (8, 8)), "GIF"))


@pytest.mark.parametrize(("width", "height"), [(4096, MAX_PIXELS // 4096 + 1), (9000, 9000)],
                         ids=["one-row-over-the-limit", "9000x9000"])
def test_too_many_pixels_are_refused_before_decoding(width, height):
    with wire_error(ErrorCode.INVALID_IMAGE, f"frame0 is {width}x{height} pixels, more than the limit of {MAX_PIXELS}"):
        decode_image(_png_claiming(width, height), "frame0")


def test_pil_decompression_bomb_is_an_invalid_image():
    with wire_error(ErrorCode.INVALID_IMAGE, "frame0 is too large"):
        decode_image(_png_claiming(20000, 20000), "frame0")


def test_encode_png_wants_uint8_rgb():
    with pytest.raises(InputError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match="uint8"):
        encode_png(np.zeros((4, 4), np.uint8))


def test_base64_round_trip():
    data = bytes(range(256))
    text = b64encode(data)
    assert isinstance(text, str) and "\n" not in text
    assert b64decode_field(text, "enc_out") == data


def test_data_url_is_accepted():
    png = encode_png(make_frames(1, 8, 8)[0])
    text = "data:image/png;base64," + base64.b64encode(png).decode()
    assert b64decode_field(text, "frame0") == png


@pytest.mark.parametrize("text", ["not base64!", "QUJD\nREVG", "QUJDRA", "QUJD-_==", "data:image/png,QUJD", "ÄÖÜ"])
def test_bad_base64_names_the_field(text):
    with wire_error(ErrorCode.INVALID_BASE64, "frame0"):
        b64decode_field(text, "frame0")


def test_base64_field_must_be_a_string():
    with wire_error(ErrorCode.INVALID_BASE64, "enc_out must be a base64 string"):
        b64decode_field(None, "enc_out")  # type: ignore[arg-type]
