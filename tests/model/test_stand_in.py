"""The stand-in of EDENSPLIT_STAND_IN_MODEL=1 (benchmarks of the serving path): the full-size shapes through the real
stages and servers, nothing computed, and no way to take it for EDEN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from edensplit.errors import ConfigError
from edensplit.model.eden import ENCODE, INTERPOLATE
from edensplit.model.loading import load_model_for
from edensplit.model.seeds import make_noise
from edensplit.model.stages import encode_frames, interpolate, to_uint8
from edensplit.servers.edge.service import create_edge_app
from edensplit.settings import ModelSettings, ServerSettings
from tests.conftest import loaded


def test_it_has_the_full_size_shapes_and_makes_checkerboards(caplog):
    settings = ModelSettings(edensplit_stand_in_model=True)
    cloud, edge = load_model_for({ENCODE}, settings), load_model_for({INTERPOLATE}, settings)
    assert "STAND-IN MODEL" in caplog.text and "not interpolations" in caplog.text
    frames = np.random.default_rng(0).integers(0, 256, (2, 480, 854, 3), dtype=np.uint8)
    enc = encode_frames(cloud, frames)
    assert tuple(enc.cond_dit.shape) == (2, 30 * 54, 768) and enc.geometry.grid == (30, 54)  # 480x854 padded
    out = to_uint8(interpolate(edge, enc[:1], enc[1:], torch.tensor([0.5]), make_noise(0, enc.geometry.latent_tokens,
                                                                                       16)))[0]
    assert out.shape == (480, 854, 3)
    assert set(np.unique(out)) == {51, 204} and out[0, 0, 0] != out[0, 16, 0]  # a checkerboard, not a frame


def test_its_calls_write_nothing_the_encodings_are_zeros_made_once_per_size():
    cloud = load_model_for({ENCODE}, ModelSettings(edensplit_stand_in_model=True))
    frames = np.zeros((2, 64, 96, 3), dtype=np.uint8)
    first, again, one = encode_frames(cloud, frames), encode_frames(cloud, frames), encode_frames(cloud, frames[:1])
    assert again.cond_dit.data_ptr() == first.cond_dit.data_ptr() == one.cond_dit.data_ptr()  # no new tokens
    assert one.cond_dit.shape[0] == 1 and not first.cond_dit.any() and not first.cond_dec.any()
    assert first.cond_dec.data_ptr() != first.cond_dit.data_ptr()  # two tensors, as EDEN's
    for height in (128, 192):  # other sizes: the oldest size's zeros go
        encode_frames(cloud, np.zeros((1, height, 96, 3), dtype=np.uint8))
    assert encode_frames(cloud, frames).cond_dit.data_ptr() != first.cond_dit.data_ptr()


def test_it_is_refused_beside_a_checkpoint_and_says_so_in_health(tmp_path):
    with pytest.raises(ConfigError, match="STAND_IN"):
        load_model_for({ENCODE}, ModelSettings(edensplit_stand_in_model=True, model_path=tmp_path / "eden.pt"))
    settings = ServerSettings(edensplit_stand_in_model=True, warmup=False)
    with TestClient(create_edge_app(settings)) as edge:
        health = loaded(edge).get("/health").json()
    assert health["stand_in"] is True and health["weights_digest"] == "stand-in" and health["ready"] is True
