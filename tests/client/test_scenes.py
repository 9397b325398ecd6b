"""The scene-cut metric on generated footage: camera pans (slow, fast, sub-pixel, at several sizes), a talking head
and the sample clip are not cuts; a hard cut between two shots is; bit-equal frames are stills.

Measured cut scores (see edensplit.client.scenes), the largest within a shot and the cut itself:

| size     | sample clip | pans 2-8 px/frame | pan 1/8 width/frame | talking head | hard cut |
|----------|-------------|-------------------|---------------------|--------------|----------|
| 96x72    | 0.13        | 0.05              | 0.02                | 0.08         | 1.57     |
| 256x144  | 0.05        | 0.08              | 0.04                | 0.04         | 1.33     |
| 428x240  | 0.03        | 0.09              | 0.05                | 0.04         | 1.45     |
| 854x480  | 0.02        | 0.11              | 0.04                | 0.04         | 1.44     |

(The sample clip at 64x48 and 70x40: 0.17.) The default threshold, 0.5, sits ~3x above the worst motion and ~2.7x
below the weakest cut measured.
"""

from __future__ import annotations

import numpy as np
import pytest

from edensplit.client.scenes import CUT, DEFAULT_THRESHOLD, STILL, SceneDetector, frame_cut_score, thumbnail
from edensplit.video.sample import _sample_frame
from tests.media import cut_frames, pan_frames, talking_head_frames

SIZES = [(96, 72), (256, 144), (854, 480)]


def scores(frames: list[np.ndarray]) -> list[float]:
    return [frame_cut_score(a, b) for a, b in zip(frames, frames[1:], strict=False)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("speed", [2.0, 3.0, 8.0, "eighth"])
def test_a_camera_pan_is_not_a_cut(size, speed):
    width, height = size
    pixels = width / 8 if speed == "eighth" else speed  # an eighth of the frame a frame: a whip pan
    frames = pan_frames(8, width, height, speed=pixels)
    assert max(scores(frames)) < DEFAULT_THRESHOLD / 3
    detector = SceneDetector()
    assert [detector.classify(a, b) for a, b in zip(frames, frames[1:], strict=False)] == [None] * 7
    assert detector.counts.cuts == 0 and detector.highest_kept < DEFAULT_THRESHOLD / 3


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_talking_head_is_not_a_cut(size):
    frames = talking_head_frames(12, *size)
    assert max(scores(frames)) < DEFAULT_THRESHOLD / 5


@pytest.mark.parametrize("size", [(96, 72), (64, 48), (256, 144), (70, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_sample_clip_has_no_cut(size):
    """The clip the existing tests compare with --local (conftest: 96x72; test_jobs: 64x48; the demo: 256x144)."""
    frames = [_sample_frame(k, *size) for k in range(100 if size == (96, 72) else 12)]
    assert max(scores(frames)) < DEFAULT_THRESHOLD / 2


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_hard_cut_is_a_cut_and_only_the_cut(size):
    frames = cut_frames(4, 4, *size)
    detector = SceneDetector()
    found = [detector.classify(a, b) for a, b in zip(frames, frames[1:], strict=False)]
    assert found == [None, None, None, CUT, None, None, None]
    assert detector.counts.cuts == 1 and detector.lowest_cut is not None
    assert detector.lowest_cut > 2 * DEFAULT_THRESHOLD > 4 * detector.highest_kept


def test_bit_equal_frames_are_still_and_a_threshold_moves_the_line():
    frames = talking_head_frames(3, 96, 72)
    detector = SceneDetector()
    assert detector.classify(frames[0], frames[0].copy()) == STILL
    assert detector.classify(frames[0], frames[1]) is None
    assert detector.counts.stills == 1
    strict = SceneDetector(threshold=0.001)  # anything that moves is a "cut" at a threshold this low
    assert strict.classify(frames[1], frames[2]) == CUT
    with pytest.raises(ValueError, match="positive"):
        SceneDetector(threshold=0)


def test_thumbnails_are_small_and_each_frame_is_thumbnailed_once(monkeypatch):
    frame = _sample_frame(0, 854, 480)
    assert thumbnail(frame).shape == (36, 64)
    assert thumbnail(_sample_frame(0, 40, 30)).shape == (30, 40)  # narrower frames keep their size
    import edensplit.client.scenes as scenes

    made = []
    real = scenes.thumbnail
    monkeypatch.setattr(scenes, "thumbnail", lambda f: made.append(1) or real(f))
    detector = SceneDetector()
    frames = [_sample_frame(k, 96, 72) for k in range(5)]
    for a, b in zip(frames, frames[1:], strict=False):
        detector.classify(a, b)
    assert len(made) == 5
