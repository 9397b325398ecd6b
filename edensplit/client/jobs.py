"""Interpolation jobs over any backend: a frame pair to a PNG, a video to a video at twice the rate.

A backend is anything with `interpolate_pair(frame0, frame1, seed) -> frame`: the split HTTP client,
or `LocalBackend` (both stages in this process, the reference). Frames stream through: the video is
decoded one frame at a time and at most `window` pairs are in flight, so memory does not grow with
the video's length, and pair k+1 is at the cloud while pair k is at the edge.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from edensplit.errors import ErrorCode, InputError
from edensplit.model import LocalPipeline, noise_seed
from edensplit.video import VideoWriter, probe_video, read_frames, read_png, write_png


class PairBackend(Protocol):
    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int, index: int) -> np.ndarray:
        """The middle frame of pair `index`, two uint8 RGB [H, W, 3] frames, with noise seed `seed`."""


class LocalBackend:
    """Both stages in this process: `edensplit interpolate --local`."""

    def __init__(self, pipeline: LocalPipeline):
        self.pipeline = pipeline

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int, index: int = 0) -> np.ndarray:
        return self.pipeline.interpolate(frame0, frame1, seed=seed)


def interpolate_stream(backend: PairBackend, frames: Iterable[np.ndarray], base_seed: int = 0,
                       window: int = 2) -> Iterator[tuple[np.ndarray, bool]]:
    """Yield (frame, generated) in output order f0, m01, f1, m12, ..., f_last.

    The middle frame of pair (k, k+1) uses noise seed `noise_seed(base_seed, k)` (the contract's rule).
    A backend that keeps per-video state (a frame-once session) has `begin_video()`, called first.
    """
    begin = getattr(backend, "begin_video", None)
    if begin is not None:
        begin()
    it = iter(frames)
    prev = next(it, None)
    if prev is None:
        return
    pending: deque[tuple[Future[np.ndarray], np.ndarray]] = deque()
    yield prev, False
    with ThreadPoolExecutor(max_workers=window, thread_name_prefix="edensplit-pair") as pool:
        for k, frame in enumerate(it):
            if frame.shape != prev.shape:
                raise InputError(f"frame {k + 1} is {frame.shape[1]}x{frame.shape[0]}, frame {k} "
                                 f"{prev.shape[1]}x{prev.shape[0]}", code=ErrorCode.FRAME_SIZE_MISMATCH)
            pending.append((pool.submit(backend.interpolate_pair, prev, frame, noise_seed(base_seed, k), k), frame))
            prev = frame
            while len(pending) >= window:
                future, right = pending.popleft()
                yield future.result(), True
                yield right, False
        while pending:
            future, right = pending.popleft()
            yield future.result(), True
            yield right, False


@dataclass(frozen=True)
class JobResult:
    output: Path
    frames_in: int
    frames_out: int
    seconds: float
    generated_dir: Path | None = None


def interpolate_video(backend: PairBackend, video_path: str | Path, output_dir: str | Path, *, seed: int = 0,
                      codec: str = "libx264", crf: int = 18, save_frames: bool = False, progress: bool = True,
                      window: int = 2, filename: str = "interpolated.mp4") -> JobResult:
    """Interpolate every consecutive pair of a video; write it at exactly twice the input rate."""
    info = probe_video(video_path)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generated_dir = out_dir / "generated" if save_frames else None
    if generated_dir:
        generated_dir.mkdir(exist_ok=True)
    started, frames_in, frames_out, pair = time.perf_counter(), 0, 0, 0
    total = info.frames - 1 if info.frames else None
    bar = tqdm(total=total, unit="pair", desc="interpolating", disable=not progress, leave=False)
    with VideoWriter(out_dir / filename, info.rate * 2, info.width, info.height, codec=codec, crf=crf) as writer:
        for frame, generated in interpolate_stream(backend, read_frames(video_path), seed, window):
            writer.write(frame)
            frames_out += 1
            if generated:
                if generated_dir:
                    write_png(generated_dir / f"{pair:06d}.png", frame)
                pair += 1
                bar.update()
            else:
                frames_in += 1
    bar.close()
    if frames_in < 2:
        raise InputError(f"{video_path} has {frames_in} frame(s); interpolation needs at least 2",
                         code=ErrorCode.INVALID_PARAMETER)
    return JobResult(out_dir / filename, frames_in, frames_out, time.perf_counter() - started, generated_dir)


def interpolate_pair_files(backend: PairBackend, frame0_path: str | Path, frame1_path: str | Path,
                           output_dir: str | Path, *, seed: int = 0) -> JobResult:
    """Interpolate two image files; write `interpolated.png`."""
    frames = []
    for path in (frame0_path, frame1_path):
        if not Path(path).is_file():
            raise InputError(f"image not found: {path}", code=ErrorCode.INVALID_PARAMETER)
        frames.append(read_png(path))
    if frames[0].shape != frames[1].shape:
        raise InputError(f"{frame0_path} is {frames[0].shape[1]}x{frames[0].shape[0]} but {frame1_path} is "
                         f"{frames[1].shape[1]}x{frames[1].shape[0]}", code=ErrorCode.FRAME_SIZE_MISMATCH)
    started = time.perf_counter()
    middle = backend.interpolate_pair(frames[0], frames[1], noise_seed(seed, 0), 0)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = write_png(out_dir / "interpolated.png", middle)
    return JobResult(output, 2, 1, time.perf_counter() - started)
