"""Shared fixtures: where the golden vectors live, and a tiny random-weight EDEN for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edensplit.model import EdenConfig, ModelArgs, load_model

FIXTURES = Path(os.environ.get("EDEN_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"
                               / "eden-reference"))
TINY_ARGS = ModelArgs(hidden_dim=32, num_heads=2, dit_depth=1, decoder_depth=1, qkv_bias=True)
TINY_CONFIG = EdenConfig(model_args=TINY_ARGS)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"golden fixtures not found at {FIXTURES} (set EDEN_FIXTURES)"
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_model():
    return load_model(None, TINY_CONFIG, allow_random=True, seed=3)


def make_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """n smooth, moving uint8 RGB frames [n, H, W, 3]: a gradient with a bright square sliding right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        img = np.stack([xx / width * 200, yy / height * 180, np.full_like(xx, 60.0)], axis=-1)
        x0 = (4 + 3 * i) % max(width - 12, 1)
        img[height // 3: height // 3 + 12, x0: x0 + 12] = (250, 240, 30)
        img += rng.normal(0, 4, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)
