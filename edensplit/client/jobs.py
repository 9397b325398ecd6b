"""Interpolation jobs over any backend: a frame pair to a PNG; a video, or a folder of numbered images, to
2, 4 or 8 times the frame rate.

A backend is anything with `interpolate_pair(frame0, frame1, seed, index) -> frame`: the split clients of
`edensplit.client.flows`, or `LocalBackend` (both stages in this process, the reference). Frames stream
through: the input is decoded one frame at a time, each level of midpoints has at most `window` pairs in
flight (`edensplit.client.multiply`), and the output is written as the frames come, so memory does not grow
with the input's length, and pair k+1 is at the cloud while pair k is at the edge.

A video or folder job, by default, does not ask the model across a scene cut or between two bit-equal frames
(`edensplit.client.scenes`): it repeats the earlier frame and sends nothing. A video's audio and subtitle
streams go into the output unchanged (`edensplit.video.streams.StreamCopier`).

Nothing is written at the output path until the job is complete (a temporary name, renamed at the end),
and a job is resumable: its state next to the output (`edensplit.client.resume`) lets the same job, run
again, go on from the last completed input pair. Pairs run on daemon threads, so an interrupted job's
process exits at once instead of waiting for requests still in flight.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edensplit.client.multiply import (
    Item,
    LocalBackend,
    PairBackend,
    StreamStats,
    level_backends,
    levels_of,
    multiply,
)
from edensplit.client.progress import Meter, Progress, Timings, metered, server_timings
from edensplit.client.resume import JobState, folder_identity, input_identity
from edensplit.client.scenes import DEFAULT_THRESHOLD, SceneDetector
from edensplit.errors import ErrorCode, InputError
from edensplit.model.seeds import noise_seed
from edensplit.video.images import list_images, read_images, read_png, write_png
from edensplit.video.reading import probe_video, read_frames
from edensplit.video.sheet import save_contact_sheet
from edensplit.video.writing import VideoWriter

__all__ = [
    "JobResult", "LocalBackend", "PairBackend", "interpolate_folder", "interpolate_pair_files", "interpolate_stream",
    "interpolate_video",
]

PREVIEW_PAIRS = 4
"""Input pairs shown in a --preview sheet (the first ones)."""
PREVIEW_WIDTH = 320
"""Frames wider than this are scaled down to it in a --preview sheet."""
PNG_LEVEL = 1
"""zlib level of the PNGs an image-folder job writes (lossless either way; 1 is ~3x faster than 6)."""


def interpolate_stream(backend: PairBackend, frames: Iterator[np.ndarray] | Sequence[np.ndarray], base_seed: int = 0,
                       window: int = 2, start: int = 0) -> Iterator[tuple[np.ndarray, bool]]:
    """Yield (frame, generated) in output order f_start, m, f_start+1, m, ..., f_last: every pair interpolated.

    `frames` begin at input frame `start` (0, or where a resumed job goes on). The middle frame of pair
    (k, k+1) uses noise seed `noise_seed(base_seed, k)` (the contract's rule). A backend that keeps
    per-video state (a frame-once session) has `begin_video(start)`, called before its first pair.
    `edensplit.client.multiply.multiply` is the general form (multipliers, scene cuts, resumed pairs).
    """
    for item in multiply([backend], frames, 2, base_seed=base_seed, window=window, start=start):
        yield item.frame, item.generated


@dataclass(frozen=True)
class JobResult:
    output: Path
    frames_in: int
    frames_out: int
    seconds: float
    generated_dir: Path | None = None
    resumed_from: int = 0  # generated frames a previous run of the job had done
    multi: int = 2
    rate: Fraction | None = None  # the output video's frame rate
    cuts: int = 0  # input pairs at a scene cut: earlier frame repeated
    stills: int = 0  # input pairs of bit-equal frames: earlier frame repeated
    sent_pairs: int = 0  # pairs the backend was asked for (all levels)
    timings: Timings = field(default_factory=Timings)
    notes: tuple[str, ...] = ()  # what had to be converted to fit the output container
    video: Path | None = None  # an image-folder job's video, with --fps
    preview: Path | None = None


def _keep_copy(source: Path, target: Path) -> None:
    """`target` as a copy of `source` (a hard link where the filesystem allows: no second write)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        target.write_bytes(source.read_bytes())


class _Timed:
    """An iterator whose `next()` time is added to a stage."""

    def __init__(self, it: Iterator[np.ndarray], timings: Timings, stage: str):
        self.it, self.timings, self.stage = it, timings, stage

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> np.ndarray:
        started = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.timings.add(self.stage, time.perf_counter() - started)


class _Preview:
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
        partial = path.with_name(f".{path.name}.partial")
        save_contact_sheet(partial, self.rows, labels=labels)
        os.replace(partial, path)
        return path


@dataclass
class _Source:
    """An input: a fresh frame iterator from frame 0, its size, rate (videos), count (maybe estimated)."""

    frames: Callable[[], Iterator[np.ndarray]]
    width: int
    height: int
    count: int | None
    identity: dict[str, Any]
    rate: Fraction | None = None
    start: Fraction = Fraction(0)
    video: Path | None = None  # a video input (its audio and subtitles are carried over)
    name: str = "input"


class _FolderSink:
    """Numbered PNGs into a folder: input frames written, generated ones linked from the job's state."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.written = folder, 0

    def write(self, frame: np.ndarray, kept: Path | None) -> None:
        target = self.folder / f"{self.written:06d}.png"
        if kept is not None:
            _keep_copy(kept, target)
        else:
            write_png(target, frame, compress_level=PNG_LEVEL)
        self.written += 1

    def close(self) -> None:
        """Nothing to flush."""

    def abort(self) -> None:
        """Nothing to drop: the folder is written again by a rerun."""


class _VideoSink:
    """A VideoWriter taking frames with their kept copies (which it does not need)."""

    def __init__(self, writer: VideoWriter):
        self.writer = writer

    def write(self, frame: np.ndarray, kept: Path | None) -> None:
        self.writer.write(frame)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def interpolate_video(backend: PairBackend, video_path: str | Path, output_dir: str | Path, *, seed: int = 0,
                      codec: str = "libx264", crf: int = 18, save_frames: bool = False, progress: bool | str = True,
                      window: int = 2, filename: str = "interpolated.mp4", resume: bool = False,
                      fingerprint: Mapping[str, Any] | None = None, say: Callable[[str], None] | None = None,
                      multi: int = 2, scene_detect: bool = True, scene_threshold: float = DEFAULT_THRESHOLD,
                      pix_fmt: str | None = None, preview: bool = False, copy_streams: bool = True) -> JobResult:
    """Interpolate a video to `multi` (2, 4, 8) times its frame rate, exactly (30000/1001 -> 60000/1001 at 2x).

    Every input pair (k, k+1) gets multi - 1 frames between (`edensplit.client.multiply`), or, with
    `scene_detect`, the earlier frame repeated at a scene cut or between bit-equal frames. The audio and
    subtitle streams are carried over (`copy_streams`). The video is written under a temporary name and
    renamed to `output_dir/filename` once complete. Generated frames are kept in the job's state as they
    come (see edensplit.client.resume); with `resume`, a state left by an earlier run of the same job (same
    input, seed, multiplier, scene options and `fingerprint`: the options that change the frames) is
    continued from its last input pair. `say` hears what happens to a saved state and what had to be
    converted. `progress`: True/"auto" (a bar on a terminal, else a plain line every few seconds on stderr),
    "bar", "lines", or False. `preview` also writes `preview.png`: the first pairs' frames side by side."""
    info = probe_video(video_path)
    source = _Source(lambda: read_frames(video_path), info.width, info.height, info.frames_estimate,
                     input_identity(video_path), info.rate, info.start, Path(video_path), str(video_path))
    return _run_job(backend, source, Path(output_dir), filename=filename, video_rate=info.rate * multi, seed=seed,
                    codec=codec, crf=crf, pix_fmt=pix_fmt, save_frames=save_frames, progress=progress,
                    window=window, resume=resume, fingerprint=fingerprint, say=say, multi=multi,
                    scene_detect=scene_detect, scene_threshold=scene_threshold, preview=preview,
                    copy_streams=copy_streams)


def interpolate_folder(backend: PairBackend, input_dir: str | Path, output_dir: str | Path, *, seed: int = 0,
                       multi: int = 2, fps: Fraction | None = None, codec: str = "libx264", crf: int = 18,
                       pix_fmt: str | None = None, save_frames: bool = False, progress: bool | str = True,
                       window: int = 2, resume: bool = False, fingerprint: Mapping[str, Any] | None = None,
                       say: Callable[[str], None] | None = None, scene_detect: bool = True,
                       scene_threshold: float = DEFAULT_THRESHOLD, preview: bool = False,
                       folder_name: str = "interpolated", video_name: str = "interpolated.mp4") -> JobResult:
    """Interpolate a folder of numbered images (`edensplit.video.images.list_images`): numbered PNGs out, in
    `output_dir/folder_name/` (000000.png, ...), multi (n - 1) + 1 of them; with `fps`, also a video at that
    rate (`output_dir/video_name`). Otherwise as `interpolate_video`: scene cuts and still frames, resumable,
    written under temporary names until complete."""
    images = list_images(input_dir)
    if len(images) < 2:
        raise InputError(f"{input_dir} has {len(images)} numbered image(s); interpolation needs at least 2",
                         code=ErrorCode.INVALID_PARAMETER)
    first = read_png(images[0])
    source = _Source(lambda: read_images(images), first.shape[1], first.shape[0], len(images),
                     folder_identity(input_dir, images), name=str(input_dir))
    return _run_job(backend, source, Path(output_dir), filename=folder_name,
                    video=video_name if fps else None, video_rate=fps, seed=seed, codec=codec, crf=crf,
                    pix_fmt=pix_fmt, save_frames=save_frames, progress=progress, window=window, resume=resume,
                    fingerprint=fingerprint, say=say, multi=multi, scene_detect=scene_detect,
                    scene_threshold=scene_threshold, preview=preview, copy_streams=False)


def _run_job(backend: PairBackend, source: _Source, out_dir: Path, *, filename: str, video_rate: Fraction | None,
             seed: int, codec: str, crf: int, pix_fmt: str | None, save_frames: bool, progress: bool | str,
             window: int, resume: bool, fingerprint: Mapping[str, Any] | None, say: Callable[[str], None] | None,
             multi: int, scene_detect: bool, scene_threshold: float, preview: bool, copy_streams: bool,
             video: str | None = None) -> JobResult:
    """A video or folder job: state opened, outputs written, state finished (or discarded on a bad input)."""
    levels_of(multi)  # refuse another multiplier before touching anything
    out_dir.mkdir(parents=True, exist_ok=True)
    generated_dir = out_dir / "generated" if save_frames else None
    if generated_dir:
        generated_dir.mkdir(exist_ok=True)
    detection: dict[str, Any] = {"scene_detect": scene_detect}
    if scene_detect:
        detection["scene_threshold"] = scene_threshold
    extra = [out_dir / video] if video else []
    state = JobState(out_dir / filename, {"input": source.identity, "seed": seed, "multi": multi, **detection,
                                          **(fingerprint or {})}, resume=resume, say=say, extra=extra)
    done = state.open()
    try:
        result = _write(backend, source, state, done, out_dir, extra, video_rate=video_rate, seed=seed, codec=codec,
                        crf=crf, pix_fmt=pix_fmt, generated_dir=generated_dir, progress=progress, window=window,
                        say=say, multi=multi, detector=SceneDetector(scene_threshold) if scene_detect else None,
                        preview=preview, copy_streams=copy_streams)
    except InputError:
        state.discard()  # the input cannot make this job: nothing to resume
        raise
    finally:
        state.close()
    return result


def _write(backend: PairBackend, source: _Source, state: JobState, done: int, out_dir: Path, extra: list[Path], *,
           video_rate: Fraction | None, seed: int, codec: str, crf: int, pix_fmt: str | None,
           generated_dir: Path | None, progress: bool | str, window: int, say: Callable[[str], None] | None,
           multi: int, detector: SceneDetector | None, preview: bool, copy_streams: bool) -> JobResult:
    """The job proper: the saved frames written again, the rest streamed through the backend's levels."""
    started = time.perf_counter()
    per = multi - 1
    pairs_done = done // per
    state.drop_from(pairs_done * per)  # a pair is done when all its generated frames are
    shape = (source.height, source.width, 3)
    timings, meter, stats = Timings(), Meter(), StreamStats()
    sinks: list[_FolderSink | _VideoSink] = []
    notes: tuple[str, ...] = ()
    total = multi * (source.count - 1) + 1 if source.count else None
    mode = progress if isinstance(progress, str) else ("auto" if progress else "off")
    bar = Progress(total, mode=mode, meter=meter)
    sheet = _Preview(multi) if preview else None
    frames_in = frames_out = 0
    finished = False

    def known(k: int) -> list[np.ndarray] | None:
        frames = []
        for j in range(per):
            frame = state.read(k * per + j, shape)
            if frame is None:  # unreadable, or another size: done again from here
                return None
            frames.append(frame)
        return frames

    def number(item: Item) -> int:
        """The generated frame's number: pair k's frames are k * (multi - 1) + 0 ... multi - 2."""
        assert item.plan is not None
        k = item.plan.index
        return k * per + int((item.pos - k) * multi) - 1

    def keep(item: Item) -> None:
        state.commit(number(item), item.frame)

    try:
        if source.video is None:
            sinks.append(_FolderSink(state.partial))
        if video_rate is not None and (source.video is not None or extra):
            target = state.partial if source.video is not None else state.partial_for(extra[0])
            writer = VideoWriter(target, video_rate, source.width, source.height, codec=codec, crf=crf,
                                 pix_fmt=pix_fmt, copy_from=source.video if copy_streams else None,
                                 start=source.start, say=say)
            notes = tuple(writer.copier.notes) if writer.copier is not None else ()
            sinks.append(_VideoSink(writer))
        with metered(backend, meter) as flow_a:
            backends, shared = level_backends(backend, levels_of(multi))
            frames = _Timed(source.frames(), timings, "read")
            stream = multiply(backends, frames, multi, base_seed=seed, window=window, detector=detector,
                              known=known, done=pairs_done, keep=keep, stats=stats, tracker=shared)
            for item in stream:
                kept = state.frame_path(number(item)) if item.generated else None
                write_started = time.perf_counter()
                for sink in sinks:
                    sink.write(item.frame, kept)
                if kept is not None and generated_dir is not None:
                    _keep_copy(kept, generated_dir / kept.name)
                timings.add("write", time.perf_counter() - write_started)
                frames_out += 1
                frames_in += not item.generated
                bar.update(frames_out)
                if sheet is not None:
                    sheet.add(item)
        if frames_in < 2:
            raise InputError(f"{source.name} has {frames_in} frame(s); interpolation needs at least 2",
                             code=ErrorCode.INVALID_PARAMETER)
        close_started = time.perf_counter()
        for sink in sinks:
            sink.close()
        timings.add("write", time.perf_counter() - close_started)
        finished = True
    finally:
        bar.close(finished=finished)
        if not finished:
            for sink in sinks:
                with contextlib.suppress(Exception):  # already failing: the partial output is redone
                    sink.abort()
    video_out = extra[0] if extra else None
    output = state.finish()
    preview_path = sheet.save(out_dir / "preview.png") if sheet is not None else None
    if detector is not None:
        timings.add("scene detection", detector.seconds)
    if stats.keep_seconds:
        timings.add("keep", stats.keep_seconds)
    if meter.servers:
        server_timings(timings, meter, flow_a=flow_a)
    elif sum(stats.sent):
        timings.add("interpolate", stats.model_seconds)
        timings.notes["interpolate"] = "encode and interpolate in this process"
    timings.wall = time.perf_counter() - started
    counts = detector.counts if detector is not None else None
    return JobResult(output, frames_in, frames_out, timings.wall, generated_dir, resumed_from=pairs_done * per,
                     multi=multi, rate=video_rate, cuts=counts.cuts if counts else 0,
                     stills=counts.stills if counts else 0, sent_pairs=sum(stats.sent), timings=timings,
                     notes=notes, video=video_out, preview=preview_path)


def interpolate_pair_files(backend: PairBackend, frame0_path: str | Path, frame1_path: str | Path,
                           output_dir: str | Path, *, seed: int = 0) -> JobResult:
    """Interpolate two image files; write `interpolated.png` (under a temporary name until it is whole). A pair
    is one request, so there is nothing to resume: a rerun sends it again. An explicit pair always runs the
    model (no scene detection)."""
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
    return JobResult(output, 2, 1, time.perf_counter() - started, sent_pairs=1)

