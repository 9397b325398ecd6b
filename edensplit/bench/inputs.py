"""What every mode runs on: a generated clip, and the model's weights (random unless MODEL_PATH is set)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from edensplit.video.reading import read_frames
from edensplit.video.sample import make_sample_clip


def _model_env() -> dict[str, str]:
    """The servers' extra environment: random weights unless MODEL_PATH is set."""
    return {} if os.environ.get("MODEL_PATH") else {"EDEN_RANDOM_WEIGHTS": "1"}


def _clip_frames(size: tuple[int, int], n_frames: int, folder: Path) -> list[np.ndarray]:
    height, width = size
    clip = make_sample_clip(folder / f"clip-{height}x{width}-{n_frames}.mkv", n_frames=n_frames, width=width,
                            height=height, rate=Fraction(24))
    return list(read_frames(clip))
