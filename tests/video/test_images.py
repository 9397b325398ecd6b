"""PNG frames and numbered image folders, written and read back."""

from __future__ import annotations

import numpy as np
import pytest

from edensplit.errors import ErrorCode, InputError
from edensplit.video.images import list_images, read_images, read_png, write_png
from edensplit.video.sample import _sample_frame


def test_png_round_trip_is_exact(tmp_path):
    frame = np.random.default_rng(2).integers(0, 256, (47, 63, 3), dtype=np.uint8)
    path = write_png(tmp_path / "f.png", frame)
    out = read_png(path)
    assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, frame)
    with pytest.raises(InputError, match="image file not found"):
        read_png(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="not a readable image") as err:
        read_png(bad)
    assert err.value.code == ErrorCode.INVALID_IMAGE


def test_image_folders_are_read_in_frame_number_order(tmp_path):
    frames = [_sample_frame(k, 32, 24) for k in range(12)]
    for k, frame in enumerate(frames):
        write_png(tmp_path / f"frame_{k + 1}.png", frame)  # frame_1 ... frame_12: 10 sorts after 9
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    images = list_images(tmp_path)
    assert [p.name for p in images] == [f"frame_{k + 1}.png" for k in range(12)]
    np.testing.assert_array_equal(np.stack(list(read_images(images))), np.stack(frames))
    write_png(tmp_path / "cover.png", frames[0])
    with pytest.raises(InputError, match="cover.png has no frame number"):
        list_images(tmp_path)
    (tmp_path / "cover.png").unlink()
    write_png(tmp_path / "frame_0001.png", frames[0])
    with pytest.raises(InputError, match="same frame number 1"):
        list_images(tmp_path)
    with pytest.raises(InputError, match="image folder not found"):
        list_images(tmp_path / "missing")
    small = write_png(tmp_path / "x.png", frames[0][:10])
    with pytest.raises(InputError, match="is 32x10, the folder's first image 32x24"):
        list(read_images([images[0], small]))
