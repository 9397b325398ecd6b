"""Interpolation jobs over any backend: a frame pair to a PNG, a video to a video at twice the rate.

A backend is anything with `interpolate_pair(frame0, frame1, seed) -> frame`: the split HTTP client,
or `LocalBackend` (both stages in this process, the reference). Frames stream through: the video is
decoded one frame at a time and at most `window` pairs are in flight, so memory does not grow with
the video's length, and pair k+1 is at the cloud while pair k is at the edge.

Nothing is written at the output path until the job is complete (a temporary name, renamed at the end),
and a video job is resumable: its state next to the output (`edensplit.client.resume`) lets the same job,
run again, go on from the last completed frame. Pairs run on daemon threads, so an interrupted job's
process exits at once instead of waiting for requests still in flight.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from tqdm import tqdm

from edensplit.client.resume import JobState, input_identity
from edensplit.errors import ErrorCode, InputError
from edensplit.model import LocalPipeline, noise_seed
from edensplit.video import VideoWriter, probe_video, read_frames, read_png, write_png

T = TypeVar("T")


class PairBackend(Protocol):
    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int, index: int) -> np.ndarray:
        """The middle frame of pair `index`, two uint8 RGB [H, W, 3] frames, with noise seed `seed`."""


class LocalBackend:
    """Both stages in this process: `edensplit interpolate --local`. A video's frames are each encoded once,
    their temporal keys/values computed once (`LocalPipeline.video_pair`, keyed by frame index)."""

    def __init__(self, pipeline: LocalPipeline):
        self.pipeline = pipeline

    def begin_video(self, start: int = 0) -> None:
        self.pipeline.begin_video()  # frames are keyed by index: a resumed video may start anywhere

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int, index: int = 0) -> np.ndarray:
        return self.pipeline.video_pair(frame0, frame1, seed, index)


def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> Future[T]:
    """Run fn(*args) on a daemon thread: a job stopped meanwhile (Ctrl-C, an error) does not wait for it."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to whoever waits for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="edensplit-pair", daemon=True).start()
    return future


def interpolate_stream(backend: PairBackend, frames: Iterable[np.ndarray], base_seed: int = 0,
                       window: int = 2, start: int = 0) -> Iterator[tuple[np.ndarray, bool]]:
    """Yield (frame, generated) in output order f_start, m, f_start+1, m, ..., f_last.

    `frames` begins at input frame `start` (0, or where a resumed job goes on). The middle frame of pair
    (k, k+1) uses noise seed `noise_seed(base_seed, k)` (the contract's rule). A backend that keeps
    per-video state (a frame-once session) has `begin_video()`, called first (with `start` when not 0).
    """
    begin = getattr(backend, "begin_video", None)
    if begin is not None:
        begin(start) if start else begin()
    it = iter(frames)
    prev = next(it, None)
    if prev is None:
        return
    pending: deque[tuple[Future[np.ndarray], np.ndarray]] = deque()
    yield prev, False
    for k, frame in enumerate(it, start=start):
        if frame.shape != prev.shape:
            raise InputError(f"frame {k + 1} is {frame.shape[1]}x{frame.shape[0]}, frame {k} "
                             f"{prev.shape[1]}x{prev.shape[0]}", code=ErrorCode.FRAME_SIZE_MISMATCH)
        pending.append((_in_daemon_thread(backend.interpolate_pair, prev, frame, noise_seed(base_seed, k), k), frame))
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
    resumed_from: int = 0  # generated frames a previous run of the job had done


class _Keeping:
    """A backend whose generated frames are kept in the job's state by the pair's own thread as they arrive (the
    PNG encoding overlaps the other pairs and the video writing)."""

    def __init__(self, backend: PairBackend, state: JobState):
        self.backend, self.state = backend, state

    def begin_video(self, start: int = 0) -> None:
        begin = getattr(self.backend, "begin_video", None)
        if begin is not None:
            begin(start) if start else begin()

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int, index: int) -> np.ndarray:
        frame = self.backend.interpolate_pair(frame0, frame1, seed, index)
        self.state.commit(index, frame)
        return frame


def _keep_copy(source: Path, target: Path) -> None:
    """`target` as a copy of `source` (a hard link where the filesystem allows: no second write)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        target.write_bytes(source.read_bytes())


def interpolate_video(backend: PairBackend, video_path: str | Path, output_dir: str | Path, *, seed: int = 0,
                      codec: str = "libx264", crf: int = 18, save_frames: bool = False, progress: bool = True,
                      window: int = 2, filename: str = "interpolated.mp4", resume: bool = False,
                      fingerprint: Mapping[str, Any] | None = None, say: Callable[[str], None] | None = None
                      ) -> JobResult:
    """Interpolate every consecutive pair of a video; write it at exactly twice the input rate.

    The video is written under a temporary name and renamed to `output_dir/filename` once complete. Generated
    frames are kept in the job's state as they come (see edensplit.client.resume); with `resume`, a state
    left by an earlier run of the same job (same input, seed and `fingerprint`: the options that change the
    frames) is continued from its last frame. `say` hears what happens to a saved state (resumed, or
    another job's and dropped)."""
    info = probe_video(video_path)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generated_dir = out_dir / "generated" if save_frames else None
    if generated_dir:
        generated_dir.mkdir(exist_ok=True)
    state = JobState(out_dir / filename, {"input": input_identity(video_path), "seed": seed, **(fingerprint or {})},
                     resume=resume, say=say)
    done = state.open()
    try:
        result = _write_video(backend, video_path, info, state, done, seed=seed, codec=codec, crf=crf,
                              generated_dir=generated_dir, progress=progress, window=window)
    except InputError:
        state.discard()  # the input cannot make this job: nothing to resume
        raise
    finally:
        state.close()
    return result


def _write_video(backend: PairBackend, video_path: str | Path, info: Any, state: JobState, done: int, *, seed: int,
                 codec: str, crf: int, generated_dir: Path | None, progress: bool, window: int) -> JobResult:
    """The video job proper: the saved frames written again, then the rest streamed through `backend`."""
    started, frames_in, frames_out = time.perf_counter(), 0, 0
    total = info.frames - 1 if info.frames else None
    with VideoWriter(state.partial, info.rate * 2, info.width, info.height, codec=codec, crf=crf) as writer:
        frames = iter(read_frames(video_path))
        for k in range(done):  # what an earlier run did: input frame k, then generated frame k
            frame = next(frames, None)
            middle = None if frame is None else state.read(k, frame.shape)
            if middle is None:  # a shorter input than recorded, or an unreadable frame: done again from here
                done = k
                frames = itertools.chain([] if frame is None else [frame], frames)
                break
            writer.write(frame)
            writer.write(middle)
            if generated_dir:
                _keep_copy(state.frame_path(k), generated_dir / f"{k:06d}.png")
            frames_in, frames_out = frames_in + 1, frames_out + 2
        pair = done
        bar = tqdm(total=total, initial=done, unit="pair", desc="interpolating", disable=not progress, leave=False)
        for frame, generated in interpolate_stream(_Keeping(backend, state), frames, seed, window, start=done):
            writer.write(frame)
            frames_out += 1
            if generated:
                if generated_dir:
                    _keep_copy(state.frame_path(pair), generated_dir / f"{pair:06d}.png")
                pair += 1
                bar.update()
            else:
                frames_in += 1
        bar.close()
    if frames_in < 2:
        raise InputError(f"{video_path} has {frames_in} frame(s); interpolation needs at least 2",
                         code=ErrorCode.INVALID_PARAMETER)
    output = state.finish()
    return JobResult(output, frames_in, frames_out, time.perf_counter() - started,
                     generated_dir, resumed_from=done)


def interpolate_pair_files(backend: PairBackend, frame0_path: str | Path, frame1_path: str | Path,
                           output_dir: str | Path, *, seed: int = 0) -> JobResult:
    """Interpolate two image files; write `interpolated.png` (under a temporary name until it is whole). A pair
    is one request, so there is nothing to resume: a rerun sends it again."""
    frames = []
    for path in (frame0_path, frame1_path):
        if not Path(path).is_file():
            raise InputError(f"image not found: {path}", code=ErrorCode.INVALID_PARAMETER)
        frames.append(read_png(path))
    if frames[0].shape != frames[1].shape:
        raise InputError(f"{frame0_path} is {frames[0].shape[1]}x{frames[0].shape[0]} but {frame1_path} is "
                         f"{frames[1].shape[1]}x{frames[1].shape[0]}", code=ErrorCode.FRAME_SIZE_MISMATCH)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "interpolated.png"
    output.unlink(missing_ok=True)  # an older result there would look like this job's
    started = time.perf_counter()
    middle = backend.interpolate_pair(frames[0], frames[1], noise_seed(seed, 0), 0)
    partial = out_dir / ".interpolated.png.partial"
    write_png(partial, middle)
    os.replace(partial, output)
    return JobResult(output, 2, 1, time.perf_counter() - started)
