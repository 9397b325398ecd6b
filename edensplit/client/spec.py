"""A job's spec (every option a video or image-folder job takes, in one object) and its result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from edensplit.client.progress import Timings
from edensplit.client.scenes import DEFAULT_THRESHOLD


@dataclass(frozen=True)
class JobSpec:
    """What a job does. Frames: the base `seed`, the multiplier `multi` (2, 4, 8), scene detection
    (`scene_detect`, `scene_threshold`). Outputs: the video's `codec`, `crf`, `pix_fmt`, audio and subtitles
    copied (`copy_streams`), its `filename` (a video job) or the numbered PNGs' `folder_name` and, at `fps`, a
    video `video_name` (a folder job); `save_frames` (the generated frames as PNGs too), `preview` (a sheet of
    the first pairs). Running: `window` pairs in flight per level, `progress` (True/"auto", "bar", "lines",
    False), `resume` an earlier run of the same job (same input and `fingerprint`: the options that change the
    frames), `say` hears what happens to a saved state and what had to be converted, and `watch` sees each frame
    written: (frames written, the total expected or None, the frame, whether it was generated); what it raises
    stops the job (a page's cancel)."""

    seed: int = 0
    multi: int = 2
    scene_detect: bool = True
    scene_threshold: float = DEFAULT_THRESHOLD
    codec: str = "libx264"
    crf: int = 18
    pix_fmt: str | None = None
    copy_streams: bool = True
    filename: str = "interpolated.mp4"
    folder_name: str = "interpolated"
    video_name: str = "interpolated.mp4"
    fps: Fraction | None = None
    save_frames: bool = False
    preview: bool = False
    window: int = 2
    progress: bool | str = True
    resume: bool = False
    fingerprint: Mapping[str, Any] | None = None
    say: Callable[[str], None] | None = field(default=None, compare=False)
    watch: Callable[[int, int | None, Any, bool], None] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, spec: JobSpec | None = None, **options: Any) -> JobSpec:
        """`spec` (or the defaults) with `options` changed; an option no job takes is a TypeError."""
        return dataclasses.replace(spec or cls(), **options)

    def identity(self) -> dict[str, Any]:
        """What makes a resumed job the same job: the options that change the frames."""
        detection: dict[str, Any] = {"scene_detect": self.scene_detect}
        if self.scene_detect:
            detection["scene_threshold"] = self.scene_threshold
        return {"seed": self.seed, "multi": self.multi, **detection, **(self.fingerprint or {})}


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
