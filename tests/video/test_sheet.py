"""Contact sheets: layout, labels and the PNG written."""

from __future__ import annotations

import numpy as np
import pytest

from edensplit.errors import InputError
from edensplit.video.images import read_png
from edensplit.video.sheet import _BACKGROUND, GAP, HEADER, contact_sheet, save_contact_sheet


def test_contact_sheet_shape_and_layout(tmp_path):
    a = np.full((48, 64, 3), 200, np.uint8)
    b = np.full((40, 60, 3), 100, np.uint8)
    sheet = contact_sheet([[a, b, a], [b, a]])
    assert sheet.dtype == np.uint8
    assert sheet.shape == (2 * 48 + 3 * GAP, 3 * 64 + 4 * GAP, 3)
    assert (sheet[GAP: GAP + 48, GAP: GAP + 64] == 200).all()
    assert (sheet[0:GAP] == _BACKGROUND).all()
    x1 = GAP + 64 + GAP
    assert (sheet[GAP: GAP + 40, x1: x1 + 60] == 100).all()
    labelled = contact_sheet([[a, a, a]], labels=["frame k", "middle", "frame k+1"])
    assert labelled.shape == (HEADER + 48 + 2 * GAP, 3 * 64 + 4 * GAP, 3)
    assert (labelled[:HEADER] != _BACKGROUND).any()  # some text was drawn
    np.testing.assert_array_equal(labelled[HEADER:], contact_sheet([[a, a, a]]))
    with pytest.raises(InputError):
        contact_sheet([[a]], labels=["one", "two"])
    with pytest.raises(InputError):
        contact_sheet([])
    path = save_contact_sheet(tmp_path / "sheet.png", [[a, b]], labels=["a", "b"])
    assert read_png(path).shape == (HEADER + 48 + 2 * GAP, 2 * 64 + 3 * GAP, 3)
