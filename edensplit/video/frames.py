"""The frame contract every video module shares: contiguous uint8 RGB `[H, W, 3]` arrays, checked in one place."""

from __future__ import annotations

import os

import numpy as np

from edensplit.errors import ErrorCode, InputError

__all__ = ["PathLike", "check_frame"]

PathLike = str | os.PathLike[str]
"""A file or folder path, as the video modules take it."""


def check_frame(frame: np.ndarray, what: str = "frame") -> np.ndarray:
    """`frame` as a contiguous uint8 `[H, W, 3]` array, or an InputError saying what is wrong."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} {list(frame.shape)}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InputError(f"{what} must be a uint8 [H, W, 3] RGB array, got {desc}", code=ErrorCode.INVALID_PARAMETER)
    return np.ascontiguousarray(frame)
