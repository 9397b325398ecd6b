"""The synthetic sample clip: the asked size, rate and length, moving every frame, the same bits every time."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from edensplit.video.reading import VideoInfo, probe_video, read_frames
from edensplit.video.sample import make_sample_clip


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_make_sample_clip(tmp_path, suffix):
    rate = Fraction(30000, 1001)
    path = make_sample_clip(tmp_path / f"sample{suffix}", n_frames=8, width=96, height=64, rate=rate)
    assert path.is_file()
    assert probe_video(path) == VideoInfo(96, 64, rate, None if suffix == ".mkv" else 8)
    frames = list(read_frames(path))
    assert len(frames) == 8
    for a, b in zip(frames, frames[1:], strict=False):
        assert np.abs(a.astype(np.int16) - b).mean() > 0.5  # things move every frame
    if suffix == ".mkv":  # lossless: the same clip twice is the same bits
        again = make_sample_clip(tmp_path / "again.mkv", n_frames=8, width=96, height=64, rate=rate)
        np.testing.assert_array_equal(np.stack(frames), np.stack(list(read_frames(again))))
