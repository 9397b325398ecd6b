"""Contact sheets: rows of frames laid out in one labelled image, for looking at results side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edensplit.errors import ErrorCode, InputError
from edensplit.video.frames import PathLike, check_frame
from edensplit.video.images import write_png

__all__ = ["GAP", "HEADER", "contact_sheet", "save_contact_sheet"]

GAP = 4
"""Pixels between (and around) the cells of a contact sheet."""
HEADER = 16
"""Height of the label band at the top of a contact sheet with labels."""
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None = None) -> np.ndarray:
    """Lay rows of uint8 RGB frames out in a grid on a dark background, as one uint8 `[H, W, 3]` image.

    Every cell is as large as the largest frame (smaller frames sit top-left), with `GAP` pixels between
    and around cells: width = cols * cell_w + (cols + 1) * GAP, height = rows * cell_h + (rows + 1) * GAP,
    plus `HEADER` rows when `labels` (one per column, at most as many as columns) are given.
    """
    grid = [[check_frame(f, "contact sheet frame") for f in row] for row in rows]
    if not grid or not any(grid):
        raise InputError("contact sheet needs at least one frame", code=ErrorCode.INVALID_PARAMETER)
    n_cols = max(len(row) for row in grid)
    if labels is not None and len(labels) > n_cols:
        raise InputError(f"{len(labels)} labels for {n_cols} columns", code=ErrorCode.INVALID_PARAMETER)
    cell_h = max(f.shape[0] for row in grid for f in row)
    cell_w = max(f.shape[1] for row in grid for f in row)
    top = HEADER if labels else 0
    sheet = np.empty((top + len(grid) * cell_h + (len(grid) + 1) * GAP, n_cols * cell_w + (n_cols + 1) * GAP, 3),
                     np.uint8)
    sheet[:] = _BACKGROUND
    for i, row in enumerate(grid):
        y = top + GAP + i * (cell_h + GAP)
        for j, f in enumerate(row):
            x = GAP + j * (cell_w + GAP)
            sheet[y: y + f.shape[0], x: x + f.shape[1]] = f
    if labels:
        img = Image.fromarray(sheet)
        draw, font = ImageDraw.Draw(img), ImageFont.load_default()
        for j, text in enumerate(labels):
            draw.text((GAP + j * (cell_w + GAP), 2), str(text), fill=_TEXT, font=font)
        sheet = np.asarray(img, dtype=np.uint8).copy()
    return sheet


def save_contact_sheet(path: PathLike, rows: Sequence[Sequence[np.ndarray]],
                       labels: Sequence[str] | None = None) -> Path:
    """Write `contact_sheet(rows, labels)` to `path` as a PNG; returns the path."""
    return write_png(path, contact_sheet(rows, labels))
