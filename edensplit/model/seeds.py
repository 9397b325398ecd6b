"""The determinism contract's noise rule: which seed, and so which noise, each generated frame uses.

The frame at time k + t between input frames k and k+1 (t a dyadic fraction in (0, 1)) uses
noise seed `S + k + 2**32 * c(t)`, where c enumerates 1/2; 1/4, 3/4; 1/8, 3/8, 5/8, 7/8; ...
A frame's noise therefore depends neither on the transport, nor the batch, nor the multiplier.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import Tensor

MAX_SEED = 2**64 - 1


def dyadic_index(t: Fraction) -> int:
    """c(t): 0 for 1/2, 1 and 2 for 1/4 and 3/4, 3..6 for 1/8..7/8, and so on."""
    t = Fraction(t)
    den = t.denominator
    if not 0 < t < 1 or den & (den - 1):
        raise ValueError(f"t must be a dyadic fraction strictly between 0 and 1, got {t}")
    return den // 2 - 1 + (t.numerator - 1) // 2


def noise_seed(base_seed: int, k: int, t: Fraction = Fraction(1, 2)) -> int:
    """The noise seed of the frame at time k + t for a job with base seed `base_seed`."""
    seed = base_seed + k + 2**32 * dyadic_index(t)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"noise seed {seed} is outside [0, 2**64)")
    return seed


def make_noise(seed: int, latent_tokens: int, latent_dim: int) -> Tensor:
    """The sampler's initial latents [1, M, L] for a noise seed, always drawn on the CPU."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, latent_tokens, latent_dim), generator=generator)
