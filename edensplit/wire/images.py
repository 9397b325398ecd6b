"""Image and base64 codecs for frames on the wire: bytes from a request -> uint8 RGB arrays and back.

Decoding is defensive: only a few raster formats are opened (no EPS or other formats that run helper
programs), the pixel count is checked from the header before any pixels are decoded (decompression
bombs), and every failure is a `WireError` that names the request field.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image

from edensplit.errors import ErrorCode, InputError, WireError

MAX_PIXELS = 8192 * 8192
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


def decode_image(data: bytes, field: str = "frame", max_pixels: int | None = None) -> np.ndarray:
    """PNG/JPEG (or WebP/BMP) bytes -> contiguous uint8 RGB [H, W, 3]; alpha is dropped, 16-bit scaled to 8.
    `max_pixels`, a caller's budget, is checked from the header too (PAYLOAD_TOO_LARGE past it)."""
    if not data:
        raise WireError(f"{field} is empty: expected a PNG or JPEG image", code=ErrorCode.INVALID_IMAGE)
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise WireError(f"{field} is {width}x{height} pixels, more than the limit of {MAX_PIXELS}",
                                code=ErrorCode.INVALID_IMAGE)
            check_pixels(width * height, max_pixels, field)
            img.load()
            return _to_rgb(img)
    except WireError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning when -W error
        raise WireError(f"{field} is too large to decode: {e}", code=ErrorCode.INVALID_IMAGE) from e
    except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, struct.error, ...) on bad bytes
        raise WireError(f"{field} is not a PNG or JPEG image ({type(e).__name__}: {e})",
                        code=ErrorCode.INVALID_IMAGE) from e


def check_pixels(pixels: int, max_pixels: int | None, what: str) -> None:
    """PAYLOAD_TOO_LARGE when `pixels` exceed a request's pixel budget (None: no budget)."""
    if max_pixels is not None and pixels > max_pixels:
        raise WireError(f"{what} has {pixels} pixels, over this request's budget of {max_pixels} (the server's "
                        "MAX_PIXELS)", code=ErrorCode.PAYLOAD_TOO_LARGE)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 RGB [H, W, 3]; 16/32-bit integer grayscale keeps its top 8 bits."""
    if img.mode.startswith("I"):
        gray = np.asarray(img).astype(np.int64).clip(0, 65535) >> 8
        return np.ascontiguousarray(np.repeat(gray.astype(np.uint8)[..., None], 3, axis=-1))
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("La", "RGBa") else img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def encode_png(frame: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 RGB [H, W, 3] -> PNG bytes (lossless; level 1 favours speed over size)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        shape = getattr(frame, "shape", None)
        raise InputError(f"a frame to encode must be uint8 [H, W, 3], got {getattr(frame, 'dtype', type(frame))} "
                         f"{shape}", code=ErrorCode.SHAPE_MISMATCH)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), "RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def b64decode_field(text: str, field: str) -> bytes:
    """Strict base64 (or a `data:...;base64,` URL) -> bytes; anything else is INVALID_BASE64 naming `field`."""
    if not isinstance(text, str):
        raise WireError(f"{field} must be a base64 string, got {type(text).__name__}", code=ErrorCode.INVALID_BASE64)
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise WireError(f"{field} is a data URL without ';base64,'", code=ErrorCode.INVALID_BASE64)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError(f"{field} is not valid base64: {e}", code=ErrorCode.INVALID_BASE64) from e


def b64encode(data: bytes) -> str:
    """bytes -> standard base64 text (with padding, no newlines)."""
    return base64.b64encode(data).decode("ascii")
