"""Interpolation jobs over any backend: a frame pair to a PNG; a video, or a folder of numbered images, to
2, 4 or 8 times the frame rate.

A backend (`edensplit.client.backends.Backend`) is the split clients of `edensplit.client.flows`, or
`LocalBackend` (both stages in this process, the reference). A job's options are one `JobSpec`. Frames stream
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from edensplit.client.backends import Backend
from edensplit.client.multiply import Item, StreamStats, level_backends, multiply
from edensplit.client.outputs import FolderSink, PreviewSheet, TimedFrames, VideoSink, keep_copy, write_png_whole
from edensplit.client.progress import Meter, Progress, Timings, metered, server_timings
from edensplit.client.rates import levels_of
from edensplit.client.resume import JobState, folder_identity, input_identity
from edensplit.client.scenes import SceneDetector
from edensplit.client.spec import JobResult, JobSpec
from edensplit.errors import EdenError, ErrorCode, InputError
from edensplit.model.seeds import noise_seed
from edensplit.video.images import list_images, read_images, read_png
from edensplit.video.reading import probe_video, read_frames
from edensplit.video.writing import VideoWriter


def interpolate_stream(backend: Backend, frames: Iterator[np.ndarray] | Sequence[np.ndarray], base_seed: int = 0,
                       window: int = 2, start: int = 0) -> Iterator[tuple[np.ndarray, bool]]:
    """Yield (frame, generated) in output order f_start, m, f_start+1, m, ..., f_last: every pair interpolated.

    `frames` begin at input frame `start` (0, or where a resumed job goes on). The middle frame of pair
    (k, k+1) uses noise seed `noise_seed(base_seed, k)` (the contract's rule). A backend that keeps
    per-video state (a frame-once session) has `begin_video(start)`, called before its first pair.
    `edensplit.client.multiply.multiply` is the general form (multipliers, scene cuts, resumed pairs).
    """
    for item in multiply([backend], frames, 2, base_seed=base_seed, window=window, start=start):
        yield item.frame, item.generated


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


def interpolate_video(backend: Backend, video_path: str | Path, output_dir: str | Path, spec: JobSpec | None = None,
                      **options: Any) -> JobResult:
    """Interpolate a video to `spec.multi` (2, 4, 8) times its frame rate, exactly (30000/1001 -> 60000/1001 at 2x).

    Every input pair (k, k+1) gets multi - 1 frames between (`edensplit.client.multiply`), or, with scene
    detection, the earlier frame repeated at a scene cut or between bit-equal frames. The audio and subtitle
    streams are carried over (`copy_streams`). The video is written under a temporary name and renamed to
    `output_dir/filename` once complete. Generated frames are kept in the job's state as they come (see
    edensplit.client.resume); with `resume`, a state left by an earlier run of the same job is continued from
    its last input pair. `options` change single fields of `spec` (`JobSpec`)."""
    spec = JobSpec.of(spec, **options)
    info = probe_video(video_path)
    source = _Source(lambda: read_frames(video_path), info.width, info.height, info.frames_estimate,
                     input_identity(video_path), info.rate, info.start, Path(video_path), str(video_path))
    return _run_job(backend, source, Path(output_dir), spec, spec.filename, info.rate * spec.multi)


def interpolate_folder(backend: Backend, input_dir: str | Path, output_dir: str | Path, spec: JobSpec | None = None,
                       **options: Any) -> JobResult:
    """Interpolate a folder of numbered images (`edensplit.video.images.list_images`): numbered PNGs out, in
    `output_dir/folder_name/` (000000.png, ...), multi (n - 1) + 1 of them; with `fps`, also a video at that
    rate (`output_dir/video_name`). Otherwise as `interpolate_video`: scene cuts and still frames, resumable,
    written under temporary names until complete."""
    spec = JobSpec.of(spec, **options)
    images = list_images(input_dir)
    if len(images) < 2:
        raise InputError(f"{input_dir} has {len(images)} numbered image(s); interpolation needs at least 2",
                         code=ErrorCode.INVALID_PARAMETER)
    first = read_png(images[0])
    source = _Source(lambda: read_images(images), first.shape[1], first.shape[0], len(images),
                     folder_identity(input_dir, images), name=str(input_dir))
    return _run_job(backend, source, Path(output_dir), spec, spec.folder_name, spec.fps,
                    video=spec.video_name if spec.fps else None)


def _run_job(backend: Backend, source: _Source, out_dir: Path, spec: JobSpec, filename: str,
             video_rate: Fraction | None, video: str | None = None) -> JobResult:
    """A video or folder job: state opened, outputs written, state finished (or discarded on a bad input)."""
    levels_of(spec.multi)  # refuse another multiplier before touching anything
    out_dir.mkdir(parents=True, exist_ok=True)
    generated_dir = out_dir / "generated" if spec.save_frames else None
    if generated_dir is not None and generated_dir.is_symlink():
        raise EdenError(f"refusing to write --save_frames through the symbolic link {generated_dir} (to "
                        f"{os.readlink(generated_dir)})", code=ErrorCode.INVALID_PARAMETER)
    extra = [out_dir / video] if video else []
    state = JobState(out_dir / filename, {"input": source.identity, **spec.identity()}, resume=spec.resume,
                     say=spec.say, extra=extra)
    done = state.open()  # a state path that is not this user's private folder is refused here, untouched
    try:
        if generated_dir is not None:
            generated_dir.mkdir(exist_ok=True)
        result = _write(backend, source, spec, state, done, out_dir, extra, video_rate, generated_dir)
    except InputError:
        state.discard()  # the input cannot make this job: nothing to resume
        raise
    finally:
        state.close()
    return result


def _write(backend: Backend, source: _Source, spec: JobSpec, state: JobState, done: int, out_dir: Path,
           extra: list[Path], video_rate: Fraction | None, generated_dir: Path | None) -> JobResult:
    """The job proper: the saved frames written again, the rest streamed through the backend's levels."""
    started = time.perf_counter()
    multi, progress = spec.multi, spec.progress
    detector = SceneDetector(spec.scene_threshold) if spec.scene_detect else None
    per = multi - 1
    pairs_done = done // per
    state.drop_from(pairs_done * per)  # a pair is done when all its generated frames are
    shape = (source.height, source.width, 3)
    timings, meter, stats = Timings(), Meter(), StreamStats()
    sinks: list[FolderSink | VideoSink] = []
    notes: tuple[str, ...] = ()
    total = multi * (source.count - 1) + 1 if source.count else None
    mode = progress if isinstance(progress, str) else ("auto" if progress else "off")
    bar = Progress(total, mode=mode, meter=meter)
    sheet = PreviewSheet(multi) if spec.preview else None
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
            sinks.append(FolderSink(state.partial))
        if video_rate is not None and (source.video is not None or extra):
            target = state.partial if source.video is not None else state.partial_for(extra[0])
            writer = VideoWriter(target, video_rate, source.width, source.height, codec=spec.codec, crf=spec.crf,
                                 pix_fmt=spec.pix_fmt, copy_from=source.video if spec.copy_streams else None,
                                 start=source.start, say=spec.say)
            notes = tuple(writer.copier.notes) if writer.copier is not None else ()
            sinks.append(VideoSink(writer))
        with metered(backend, meter) as flow_a:
            backends, shared = level_backends(backend, levels_of(multi))
            frames = TimedFrames(source.frames(), timings, "read")
            stream = multiply(backends, frames, multi, base_seed=spec.seed, window=spec.window, detector=detector,
                              known=known, done=pairs_done, keep=keep, stats=stats, tracker=shared)
            for item in stream:
                kept = state.frame_path(number(item)) if item.generated else None
                write_started = time.perf_counter()
                for sink in sinks:
                    sink.write(item.frame, kept)
                if kept is not None and generated_dir is not None:
                    keep_copy(kept, generated_dir / kept.name)
                timings.add("write", time.perf_counter() - write_started)
                frames_out += 1
                frames_in += not item.generated
                bar.update(frames_out)
                if spec.watch is not None:
                    spec.watch(frames_out, bar.total, item.frame, item.generated)
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


def interpolate_pair_files(backend: Backend, frame0_path: str | Path, frame1_path: str | Path,
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
    write_png_whole(output, middle)  # a new temporary file, renamed: never a link planted in out_dir
    return JobResult(output, 2, 1, time.perf_counter() - started, sent_pairs=1)

