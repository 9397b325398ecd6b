"""Frames against reference frames: mean and max absolute difference, PSNR."""

from __future__ import annotations

import numpy as np
import pytest

from edensplit.bench.systems import frame_error


def test_frame_error():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 10
    err = frame_error([a, b], [a, a])
    assert err["max_abs"] == 10 and err["mean_abs"] == pytest.approx(10 / 96)
    assert err["psnr_db"] == pytest.approx(10 * np.log10(255 ** 2 / (100 / 96)))
    assert frame_error([a], [a]) == {"mean_abs": 0.0, "max_abs": 0.0, "psnr_db": None}
