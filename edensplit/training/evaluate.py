"""The quality of middle frames on held-out synthetic triplets: EDEN against the blend and the nearest frame.

`evaluate` runs the inference pipeline itself (`LocalPipeline`, one noise seed per triplet) and the two trivial
interpolators on the same triplets, and reports mean PSNR, SSIM and the tracked objects' mean centroid error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edensplit.model.eden import Eden
from edensplit.model.pipeline import LocalPipeline
from edensplit.training import synthetic
from edensplit.training.metrics import object_offsets, psnr, ssim

# uint8 [B, H, W, 3] pairs and the triplets' indices (EDEN's noise seeds) -> middle frames uint8 [B, H, W, 3]
Interpolator = Callable[[np.ndarray, np.ndarray, list[int]], np.ndarray]


@dataclass
class Scores:
    """Per-triplet PSNR and SSIM, and one centroid error per tracked object."""

    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    centroid: list[float] = field(default_factory=list)

    def add(self, pred: np.ndarray, triplet: synthetic.Triplet) -> None:
        truth = triplet.frames[1]
        self.psnr.append(psnr(pred, truth))
        self.ssim.append(ssim(pred, truth))
        self.centroid.extend(object_offsets(pred, triplet))

    def summary(self) -> dict[str, float]:
        return {"psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)),
                "centroid_px": float(np.mean(self.centroid)) if self.centroid else float("nan")}


def blend(frames0: np.ndarray, frames1: np.ndarray, indices: list[int] | None = None) -> np.ndarray:
    """The linear blend (I0 + I1) / 2, rounded half up."""
    return ((frames0.astype(np.uint16) + frames1 + 1) // 2).astype(np.uint8)


def nearest(frames0: np.ndarray, frames1: np.ndarray, indices: list[int] | None = None) -> np.ndarray:
    """The nearest input frame (t = 1/2 is equally near both: I0)."""
    return frames0.copy()


def eden_interpolator(model: Eden) -> Interpolator:
    """EDEN through the inference pipeline; triplet i uses noise seed i."""
    return LocalPipeline(model).interpolate_batch


def evaluate(methods: dict[str, Interpolator], seed: int, count: int, height: int, width: int,
             batch: int = 16) -> dict[str, dict[str, float]]:
    """Each method's mean scores on held-out triplets 0 .. count - 1 of stream `seed`."""
    if seed < synthetic.HELD_OUT_SEED:
        raise ValueError(f"held-out streams are seeds >= {synthetic.HELD_OUT_SEED}; {seed} is a training stream")
    scores = {name: Scores() for name in methods}
    for start in range(0, count, batch):
        group: Sequence[synthetic.Triplet] = list(
            synthetic.triplets(seed, min(batch, count - start), height, width, start=start))
        f0 = np.stack([t.frames[0] for t in group])
        f1 = np.stack([t.frames[2] for t in group])
        indices = list(range(start, start + len(group)))
        for name, method in methods.items():
            for pred, triplet in zip(method(f0, f1, indices), group, strict=True):
                scores[name].add(pred, triplet)
    return {name: s.summary() for name, s in scores.items()}


def evaluate_model(model: Eden, seed: int, count: int, height: int, width: int) -> dict[str, dict[str, float]]:
    """EDEN, the blend and the nearest frame on the same held-out triplets."""
    methods = {"eden": eden_interpolator(model), "blend": blend, "nearest": nearest}
    return evaluate(methods, seed, count, height, width)
