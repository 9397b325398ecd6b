"""Still frames: PNG files (`write_png`, `read_png`) and folders of numbered images (`list_images`, `read_images`).

An image folder's frames are read one at a time, in the order of the number in their names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edensplit.errors import ErrorCode, InputError
from edensplit.video.frames import PathLike, check_frame

__all__ = ["IMAGE_SUFFIXES", "list_images", "read_images", "read_png", "write_png"]


def write_png(path: PathLike, frame: np.ndarray, compress_level: int = 6) -> Path:
    """Save a uint8 RGB `[H, W, 3]` frame as a (lossless) PNG (zlib level 0-9: 1 is ~3x faster); returns the path."""
    p = Path(path)
    Image.fromarray(check_frame(frame)).save(p, format="PNG", compress_level=compress_level)
    return p


def read_png(path: PathLike) -> np.ndarray:
    """Read a PNG (or any image Pillow opens) as a contiguous uint8 RGB `[H, W, 3]` array."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image file not found: {p}", code=ErrorCode.INVALID_PARAMETER)
    try:
        with Image.open(p) as img:
            return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    except (UnidentifiedImageError, OSError) as exc:
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
