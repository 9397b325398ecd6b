"""Still frames: PNG files (`write_png`, `read_png`) and folders of numbered images (`list_images`, `read_images`).

An image folder's frames are read one at a time, in the order of the number in their names. Input images are
untrusted: only PNG, JPEG, BMP, TIFF and WebP are decoded (`IMAGE_FORMATS`: the format is told from the file's
first bytes, so no other Pillow plugin parses it and EPS never reaches Ghostscript), and an image larger than
Pillow's `MAX_IMAGE_PIXELS` (a decompression bomb) is refused from its header, before its pixels are decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from edensplit.errors import ErrorCode, InputError
from edensplit.video.frames import PathLike, check_frame

__all__ = ["IMAGE_FORMATS", "IMAGE_SUFFIXES", "check_image_format", "check_images", "decode_image_file",
           "image_format", "list_images", "read_images", "read_png", "write_png"]

IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
"""The Pillow formats an input image may be in; anything else is refused, naming what it is."""

_NOT_PILLOW = {b"%PDF": "PDF", b"<svg": "SVG", b"<?xml": "XML", b"\x1f\x8b": "gzip"}
"""Formats Pillow cannot read, named when a file starts with them."""


def write_png(path: PathLike, frame: np.ndarray, compress_level: int = 6) -> Path:
    """Save a uint8 RGB `[H, W, 3]` frame as a (lossless) PNG (zlib level 0-9: 1 is ~3x faster); returns the path."""
    p = Path(path)
    Image.fromarray(check_frame(frame)).save(p, format="PNG", compress_level=compress_level)
    return p


def image_format(prefix: bytes) -> str | None:
    """The image format a file starting with `prefix` (16 bytes) is in, by the plugins' own signature checks
    (no plugin parses anything): one of IMAGE_FORMATS first, else any other Pillow knows, else None."""
    Image.init()
    for fmt in (*IMAGE_FORMATS, *Image.ID):
        accept = Image.OPEN[fmt][1] if fmt in Image.OPEN else None
        if accept is not None and accept(prefix):
            return fmt
    return next((name for magic, name in _NOT_PILLOW.items() if prefix.startswith(magic)), None)


def check_image_format(prefix: bytes, name: PathLike, formats: Sequence[str] = IMAGE_FORMATS) -> str:
    """The format of the image `name` starting with `prefix`, or an InputError naming what it is instead."""
    fmt = image_format(prefix)
    if fmt is None:
        raise InputError(f"not a readable image: {name} (not a {_listed(formats)} image)", code=ErrorCode.INVALID_IMAGE)
    if fmt not in formats:
        raise InputError(f"not an image edensplit reads: {name} is {fmt} (it reads {_listed(formats)} images)",
                         code=ErrorCode.INVALID_IMAGE)
    return fmt


def _listed(formats: Sequence[str]) -> str:
    names = [{"WEBP": "WebP"}.get(f, f) for f in formats]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def decode_image_file(fp: IO[bytes], name: PathLike, formats: Sequence[str] = IMAGE_FORMATS) -> np.ndarray:
    """An open image file as a contiguous uint8 RGB `[H, W, 3]` array: only `formats` are decoded, and the pixel
    count is checked against `Image.MAX_IMAGE_PIXELS` from the header (an InputError, not Pillow's warning or
    DecompressionBombError)."""
    prefix = fp.read(16)
    fmt = check_image_format(prefix, name, formats)
    fp.seek(0)
    try:
        with Image.OPEN[fmt][0](fp, str(name)) as img:  # the plugin itself: Image.open would warn on a large image
            width, height = img.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and width * height > limit:
                raise InputError(f"image too large: {name} is {width}x{height} pixels, over the limit of {limit} "
                                 "(Pillow's MAX_IMAGE_PIXELS: a decompression bomb?)", code=ErrorCode.INVALID_IMAGE)
            return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    except InputError:
        raise
    except Exception as exc:  # Pillow's plugins raise many kinds (OSError, SyntaxError, struct.error, ...)
        raise InputError(f"not a readable image: {name} ({exc})", code=ErrorCode.INVALID_IMAGE) from None


def read_png(path: PathLike) -> np.ndarray:
    """Read a PNG (or a JPEG, BMP, TIFF or WebP image) as a contiguous uint8 RGB `[H, W, 3]` array."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image file not found: {p}", code=ErrorCode.INVALID_PARAMETER)
    try:
        with open(p, "rb") as fp:
            return decode_image_file(fp, p)
    except OSError as exc:
        raise InputError(f"not a readable image: {p} ({exc})", code=ErrorCode.INVALID_IMAGE) from None


IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
"""The files an image folder's frames are read from (other files there are ignored)."""

_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def list_images(folder: PathLike) -> list[Path]:
    """The numbered images in `folder`, in the order of the last number in each name (frame_2 before frame_10).

    Files with another suffix, or hidden, are ignored; an image without a number, or two with the same one,
    is an InputError (the order would be a guess)."""
    p = Path(folder)
    if not p.is_dir():
        raise InputError(f"image folder not found: {p}", code=ErrorCode.INVALID_PARAMETER)
    numbered: dict[int, Path] = {}
    for child in p.iterdir():
        if child.name.startswith(".") or child.suffix.lower() not in IMAGE_SUFFIXES or not child.is_file():
            continue
        match = _NUMBER.search(child.stem)
        if match is None:
            raise InputError(f"{child} has no frame number in its name (an image folder's frames are numbered: "
                             "0001.png, frame_0002.png, ...)", code=ErrorCode.INVALID_PARAMETER)
        number = int(match.group(1))
        if number in numbered:
            raise InputError(f"{numbered[number].name} and {child.name} have the same frame number {number}",
                             code=ErrorCode.INVALID_PARAMETER)
        numbered[number] = child
    return [numbered[n] for n in sorted(numbered)]


def check_images(paths: Sequence[PathLike]) -> None:
    """Refuse a folder with an image in another format before any is decoded (16 bytes of each are read)."""
    for path in paths:
        try:
            with open(path, "rb") as fp:
                prefix = fp.read(16)
        except OSError as exc:
            raise InputError(f"not a readable image: {path} ({exc.strerror or exc})",
                             code=ErrorCode.INVALID_IMAGE) from None
        check_image_format(prefix, path)


def read_images(paths: Sequence[PathLike]) -> Iterator[np.ndarray]:
    """Yield the images at `paths` one at a time as uint8 RGB `[H, W, 3]` arrays, all of one size."""
    size: tuple[int, ...] | None = None
    for path in paths:
        frame = read_png(path)
        if size is not None and frame.shape != size:
            raise InputError(f"{path} is {frame.shape[1]}x{frame.shape[0]}, the folder's first image "
                             f"{size[1]}x{size[0]}", code=ErrorCode.FRAME_SIZE_MISMATCH)
        size = frame.shape
        yield frame
