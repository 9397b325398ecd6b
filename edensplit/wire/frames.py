"""The raw-frames container of the binary fast path: named uint8 RGB frames in one safetensors body.

Used for two frames in one binary request and for frames coming back from the edge: no base64 and no
image codec on either side, and it is as safe to read as the enc_out blob (no code, checked header).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import safetensors.numpy

from edensplit.errors import ErrorCode, InputError, WireError
from edensplit.wire.container import METADATA_KEY, check_format, load, pack, pack_answer, read_header
from edensplit.wire.images import MAX_PIXELS, check_pixels

FORMAT = "edensplit.frames"
VERSION = "1"
FRAMES_MEDIA_TYPE = "application/vnd.edensplit.frames+safetensors"
RESERVED = frozenset(("format", "version"))
WHAT = "frames container"
FRAME_DTYPE = "U8"  # safetensors' name of uint8


def _is_frame(array: object) -> bool:
    return (isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
            and array.shape[0] >= 1 and array.shape[1] >= 1 and array.shape[0] * array.shape[1] <= MAX_PIXELS)


def pack_frames(frames: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Named uint8 RGB [H, W, 3] frames (+ str metadata) -> container bytes."""
    return pack(*_checked(frames, metadata))


def frames_answer(frames: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> memoryview:
    """`pack_frames`' bytes laid out in an `answer_buffer`: a server's frames answer (written straight into a
    shared-memory segment when the answer goes there)."""
    return pack_answer(*_checked(frames, metadata), FRAMES_MEDIA_TYPE)


def _checked(frames: dict[str, np.ndarray], metadata: dict[str, str] | None
             ) -> tuple[dict[str, tuple[str, tuple[int, ...], memoryview]], dict[str, str]]:
    """The frames as the container's (dtype, shape, bytes) and its metadata, each checked."""
    metadata = dict(metadata or {})
    if not frames:
        raise InputError("a frames container needs at least one frame")
    for name, frame in frames.items():
        if not isinstance(name, str) or not name or name == METADATA_KEY:
            raise InputError(f"invalid frame name {name!r}")
        if not _is_frame(frame):
            raise InputError(f"frame {name} must be uint8 [H, W, 3] RGB, got {getattr(frame, 'dtype', type(frame))} "
                             f"{getattr(frame, 'shape', '')}", code=ErrorCode.SHAPE_MISMATCH)
    clash = sorted(RESERVED & metadata.keys())
    if clash:
        raise InputError(f"frames metadata may not use the reserved keys {clash}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InputError("frames metadata must map str to str")
    arrays = {name: (FRAME_DTYPE, frame.shape, memoryview(np.ascontiguousarray(frame)).cast("B"))
              for name, frame in frames.items()}
    return arrays, {"format": FORMAT, "version": VERSION, **metadata}


def _frame_view(buffer: bytearray | memoryview, dtype: str, shape: list[int], count: int, offset: int
                ) -> np.ndarray | None:
    """uint8 items of `buffer` as an array (its memory, not a copy); None for another dtype (refused later)."""
    return np.frombuffer(buffer, np.uint8, count, offset).reshape(shape) if dtype == FRAME_DTYPE else None


def unpack_frames(data: bytes | bytearray | memoryview, names: Sequence[str], max_pixels: int | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Container bytes -> (exactly the frames `names`, uint8 [H, W, 3], in that order; the caller's metadata).
    `max_pixels`, a caller's budget for all frames together, is checked from the header, before loading. From
    writable memory (a request body as the servers read it, a segment taken from shared memory), the frames are
    views of it, not copies."""
    header, metadata = read_header(data, WHAT)
    check_format(metadata, FORMAT, VERSION, WHAT)
    check_pixels(sum(math.prod(entry["shape"][:2]) for entry in header.values()), max_pixels, WHAT)
    arrays = load(data, WHAT, safetensors.numpy.load, _frame_view)
    if set(arrays) != set(names):
        raise WireError(f"{WHAT} holds frames {sorted(arrays)}, expected {sorted(names)}", code=ErrorCode.INVALID_BLOB)
    for name in names:
        if not _is_frame(arrays[name]):
            raise WireError(f"{WHAT}: frame {name} must be uint8 [H, W, 3] RGB, got {arrays[name].dtype} "
                            f"{list(arrays[name].shape)}", code=ErrorCode.INVALID_BLOB)
    frames = {name: np.ascontiguousarray(arrays[name]) for name in names}
    return frames, {k: v for k, v in metadata.items() if k not in RESERVED}
