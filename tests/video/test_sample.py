"""The synthetic sample clip: the asked size, rate and length, moving every frame, the same bits every time."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from edensplit.video.reading import VideoInfo, probe_video, read_frames
from edensplit.video.sample import make_sample_clip, sample_middle_frame


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


def test_the_true_middle_frame_is_the_picture_half_way(tmp_path):
    """The red disc (moving right 3 px a frame) of the middle frame is half way between its places in k and k + 1;
    the lossless clip's frames are the same drawing at whole times."""
    frames = list(read_frames(make_sample_clip(tmp_path / "s.mkv", n_frames=3, width=96, height=64)))

    def disc_x(img: np.ndarray) -> float:
        red = (img[..., 0] > 200) & (img[..., 1] < 110) & (img[..., 2] < 110)
        return float(np.nonzero(red)[1].mean())

    middle = sample_middle_frame(1, 96, 64)
    assert disc_x(frames[2]) - disc_x(frames[1]) == pytest.approx(3, abs=0.3)
    assert disc_x(middle) == pytest.approx((disc_x(frames[1]) + disc_x(frames[2])) / 2, abs=0.3)
    assert not np.array_equal(middle, frames[1]) and not np.array_equal(middle, frames[2])
