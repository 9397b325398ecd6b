"""Where a job's frames go: numbered PNGs into a folder, a video (`VideoWriter`), the --preview sheet of the
first pairs, and hard-linked copies of the frames the job's state keeps.

The output directory may be shared: a file is written there under a new, unpredictable temporary name created
exclusively (`O_EXCL|O_NOFOLLOW`) and renamed into place, so a link planted at a predictable name is never
written through."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from edensplit.client.multiply import Item
from edensplit.client.progress import Timings
from edensplit.video.frames import check_frame
from edensplit.video.images import write_png
from edensplit.video.sheet import contact_sheet
from edensplit.video.writing import VideoWriter

PREVIEW_PAIRS = 4
"""Input pairs shown in a --preview sheet (the first ones)."""
PREVIEW_WIDTH = 320
"""Frames wider than this are scaled down to it in a --preview sheet."""
PNG_LEVEL = 1
"""zlib level of the PNGs an image-folder job writes (lossless either way; 1 is ~3x faster than 6)."""


_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def keep_copy(source: Path, target: Path) -> None:
    """`target` as a copy of `source` (a hard link where the filesystem allows: no second write). A link at
    `target` is removed, not followed."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:  # made meanwhile: not overwritten
        raise
    except OSError:  # no hard links here
        with os.fdopen(os.open(target, _EXCLUSIVE, 0o666), "wb") as fp:
            fp.write(source.read_bytes())


def write_png_whole(target: Path, frame: np.ndarray, compress_level: int = 6) -> Path:
    """Write `frame` as the PNG `target`, whole or not at all: into a new temporary file next to it (an
    unpredictable name, created exclusively, never through a link), renamed over `target`."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.partial")
    try:
        with os.fdopen(os.open(tmp, _EXCLUSIVE, 0o666), "wb") as fp:
            Image.fromarray(check_frame(frame)).save(fp, format="PNG", compress_level=compress_level)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


class TimedFrames:
    """An iterator whose `next()` time is added to a stage."""

    def __init__(self, it: Iterator[np.ndarray], timings: Timings, stage: str):
        self.it, self.timings, self.stage = it, timings, stage

    def __iter__(self) -> TimedFrames:
        return self

    def __next__(self) -> np.ndarray:
        started = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.timings.add(self.stage, time.perf_counter() - started)


class PreviewSheet:
    """The first PREVIEW_PAIRS input pairs' rows: frame k, its generated frames, frame k+1 (scaled down)."""

    def __init__(self, multi: int):
        self.multi, self.rows, self.row = multi, [], []  # type: ignore[var-annotated]

    def add(self, item: Item) -> None:
        if len(self.rows) >= PREVIEW_PAIRS:
            return
        frame = item.frame
        if frame.shape[1] > PREVIEW_WIDTH:
            height = max(round(frame.shape[0] * PREVIEW_WIDTH / frame.shape[1]), 1)
            frame = np.asarray(Image.fromarray(frame).resize((PREVIEW_WIDTH, height), Image.Resampling.BILINEAR))
        self.row.append(frame)
        if not item.generated and len(self.row) > 1:
            self.rows.append(self.row)
            self.row = [frame]

    def save(self, path: Path) -> Path | None:
        if not self.rows:
            return None
        labels = ["frame k"] + [f"t={Fraction(j, self.multi)}" for j in range(1, self.multi)] + ["frame k+1"]
        return write_png_whole(path, contact_sheet(self.rows, labels=labels))


class FolderSink:
    """Numbered PNGs into a folder: input frames written, generated ones linked from the job's state."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.written = folder, 0

    def write(self, frame: np.ndarray, kept: Path | None) -> None:
        target = self.folder / f"{self.written:06d}.png"
        if kept is not None:
            keep_copy(kept, target)
        else:
            write_png(target, frame, compress_level=PNG_LEVEL)
        self.written += 1

    def close(self) -> None:
        """Nothing to flush."""

    def abort(self) -> None:
        """Nothing to drop: the folder is written again by a rerun."""


class VideoSink:
    """A VideoWriter taking frames with their kept copies (which it does not need)."""

    def __init__(self, writer: VideoWriter):
        self.writer = writer

    def write(self, frame: np.ndarray, kept: Path | None) -> None:
        self.writer.write(frame)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()
