"""The model computes the reference EDEN: every golden case, every intermediate the vectors store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig
from edensplit.model.seeds import make_noise
from edensplit.model.stages import encode_frames, frame_difference, interpolate, normalise_difference
from tests.conftest import fixture_checkpoint

CASES = ["tiny_70x100", "tiny_96x128"]


def max_err(ours: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(ours.detach().cpu().numpy().reshape(ref.shape) - ref).max())


@pytest.fixture(scope="module", params=CASES)
def case(request, fixtures_dir):
    meta = json.loads((fixtures_dir / f"{request.param}.json").read_text())
    arrays = dict(np.load(fixtures_dir / f"{request.param}.npz"))
    config = EdenConfig.from_dict(meta)
    model = load_model(fixture_checkpoint(fixtures_dir, request.param), config)
    return meta, arrays, config, model


def test_encode_stage_matches_reference(case):
    meta, ref, config, model = case
    enc0, enc1 = encode_frames(model, ref["frame0_u8"]), encode_frames(model, ref["frame1_u8"])
    assert enc0.geometry.padded_size == (meta["padded_height"], meta["padded_width"])
    assert max_err(torch.cat([enc0.cond_dit, enc1.cond_dit]), ref["cond_dit"]) < 1e-5
    assert max_err(torch.cat([enc0.cond_dec, enc1.cond_dec]), ref["cond_dec"]) < 1e-5
    assert max_err((enc0.mean + enc1.mean) / 2, ref["stats_mean"]) < 1e-6
    assert max_err((enc0.std + enc1.std) / 2, ref["stats_std"]) < 1e-6
    raw = frame_difference(ref["frame0_u8"], ref["frame1_u8"])
    assert max_err(normalise_difference(raw, config.cos_sim_mean, config.cos_sim_std), ref["difference"]) < 1e-6


def test_noise_seed_reproduces_reference_noise(case):
    meta, ref, _, _ = case
    noise = make_noise(meta["noise_seed"], ref["noise"].shape[1], ref["noise"].shape[2])
    assert torch.equal(noise, torch.from_numpy(ref["noise"]))


def test_sampler_steps_decoder_and_output_match_reference(case):
    meta, ref, _, model = case
    enc0, enc1 = encode_frames(model, ref["frame0_u8"]), encode_frames(model, ref["frame1_u8"])
    raw = frame_difference(ref["frame0_u8"], ref["frame1_u8"])
    trace: dict = {}
    out = interpolate(model, enc0, enc1, raw, torch.from_numpy(ref["noise"]), trace=trace)
    t075, t1 = trace["latents"]
    assert max_err(t075, ref["latents_t075"]) < 1e-5
    assert max_err(t1, ref["latents_t1"]) < 1e-5
    assert max_err(trace["decoded_padded"], ref["decoded_padded"]) < 1e-5
    assert out.shape == (1, 3, meta["height"], meta["width"])
    assert max_err(out, ref["output"]) <= 1e-4
