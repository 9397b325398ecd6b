"""The sampler against a computation by hand: the grid and the Euler/Heun updates written out here,
in float64, on the model's own DiT velocity; `interpolate` (float32) must agree with it.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from edensplit.model.checkpoint import load_model
from edensplit.model.eden import Eden
from edensplit.model.encoding import FrameEncoding
from edensplit.model.sampler import Sampler
from edensplit.model.seeds import make_noise
from edensplit.model.stages import encode_frames, frame_difference, interpolate, normalise_difference
from tests.conftest import TINY_CONFIG, make_frames

# float32 `interpolate` vs the float64 computation below, max abs error measured over these six cases
# (torch CPU, latents of magnitude ~4.5, i.e. float32 rounding): sampler states 9.6e-7, decoded_padded
# 3.4e-7, output 2.8e-7. Asserted with a ~10x margin. A wrong grid or update moves the final latents
# by 0.17-0.64 (measured; asserted > 1e-2 below), so these tolerances cannot hide one.
LATENTS_TOL = 1e-5
DECODED_TOL = 5e-6
OUTPUT_TOL = 3e-6


def hand_grid(num_steps: int) -> list[float]:
    """The documented time grid: the reference (0, 0.75, 1) for 2 steps, uniform i/n otherwise."""
    return [0.0, 0.75, 1.0] if num_steps == 2 else [i / num_steps for i in range(num_steps + 1)]


def hand_interpolate(model: Eden, enc0: FrameEncoding, enc1: FrameEncoding, raw_difference: Tensor,
                     noise: Tensor, method: str, grid: list[float]) -> tuple[list[Tensor], Tensor, Tensor]:
    """(each step's latents, decoded_padded, output), from the model's velocity and decoder, updates by hand."""
    cfg, geo, B = model.config, enc0.geometry, len(enc0)
    enc0, enc1 = enc0.to("cpu", model.dtype), enc1.to("cpu", model.dtype)
    diff_emb = model.condition(normalise_difference(raw_difference, cfg.cos_sim_mean, cfg.cos_sim_std))
    (dit0, dec0), (dit1, dec1) = (model.frame_context(e.cond_dit, e.cond_dec, geo.grid) for e in (enc0, enc1))
    ctx = list(zip(dit0, dit1, strict=True))

    def v(x: Tensor, t: float) -> Tensor:
        return model.velocity(x, torch.full((B,), t, dtype=torch.float64), diff_emb, ctx, geo.grid)

    x, states = noise.to(model.dtype), []
    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        dt = t1 - t0
        if method == "euler":
            x = x + dt * v(x, t0)
        else:  # Heun: the mean of the slopes at the start and at the Euler predictor's end
            k0 = v(x, t0)
            x = x + dt * (k0 + v(x + dt * k0, t1)) / 2
        states.append(x)
    dec_ctx = list(zip(dec0, dec1, strict=True))
    img = model.decode(x / cfg.vae_scaler + cfg.vae_shift, dec_ctx, geo.grid)
    mean = ((enc0.mean + enc1.mean) / 2).double().view(B, 1, 1, 1)
    std = ((enc0.std + enc1.std) / 2).double().view(B, 1, 1, 1)
    decoded = img * std + mean
    top, _, left, _ = geo.padding
    return states, decoded, decoded.clamp(0, 1)[..., top: top + geo.height, left: left + geo.width]


@pytest.fixture(scope="module")
def inputs(tiny_model):
    """Two pairs of 40x70 frames (a batch of 2), their encodings, raw differences and noise."""
    frames = make_frames(3, 40, 70, seed=4)
    enc0, enc1 = encode_frames(tiny_model, frames[:2]), encode_frames(tiny_model, frames[1:])
    noise = torch.cat([make_noise(s, enc0.geometry.latent_tokens, 16) for s in (21, 22)])
    return enc0, enc1, frame_difference(frames[:2], frames[1:]), noise


@pytest.fixture(scope="module")
def model64():
    """The same random weights as `tiny_model` (seed 3), in float64: the by-hand reference."""
    return load_model(None, TINY_CONFIG, allow_random=True, seed=3, dtype=torch.float64)


def max_err(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@pytest.mark.parametrize(("method", "num_steps"), [("heun", 2), ("heun", 3), ("euler", 1), ("euler", 3),
                                                   ("euler", 4), ("euler", 2)])
def test_interpolate_equals_the_sampler_computed_by_hand(tiny_model, model64, inputs, method, num_steps):
    enc0, enc1, raw, noise = inputs
    trace: dict = {}
    out = interpolate(tiny_model, enc0, enc1, raw, noise, Sampler(num_steps, method), trace=trace)
    states, decoded, expected = hand_interpolate(model64, enc0, enc1, raw, noise, method, hand_grid(num_steps))
    assert len(trace["latents"]) == num_steps
    for ours, ref in zip(trace["latents"], states, strict=True):
        assert max_err(ours, ref) < LATENTS_TOL
    assert max_err(trace["decoded_padded"], decoded) < DECODED_TOL
    assert out.shape == expected.shape == (2, 3, 40, 70)
    assert max_err(out, expected) < OUTPUT_TOL


@pytest.mark.parametrize(("method", "num_steps", "wrong_method", "wrong_grid"), [
    ("heun", 2, "euler", hand_grid(2)),  # Heun's corrector dropped
    ("euler", 2, "euler", hand_grid(2)[:1] + [0.5, 1.0]),  # uniform grid where the reference one belongs
    ("euler", 3, "heun", hand_grid(3)),  # the other method
])
def test_the_comparison_tells_a_wrong_sampler_apart(tiny_model, model64, inputs, method, num_steps,
                                                    wrong_method, wrong_grid):
    """The tolerances above are far below what a wrong grid or update changes: the check can fail."""
    enc0, enc1, raw, noise = inputs
    trace: dict = {}
    interpolate(tiny_model, enc0, enc1, raw, noise, Sampler(num_steps, method), trace=trace)
    states, _, _ = hand_interpolate(model64, enc0, enc1, raw, noise, wrong_method, wrong_grid)
    assert max_err(trace["latents"][-1], states[-1]) > 1000 * LATENTS_TOL
