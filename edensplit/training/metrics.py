"""Quality measures of a middle frame against the truth: PSNR, SSIM and where the moving objects landed.

`psnr` and `ssim` take uint8 [H, W, 3] frames (or float [B, 3, H, W] tensors in [0, 1] for `ssim_map`, which the
training losses use too). `object_offsets` finds each tracked object of a synthetic triplet in a predicted middle
frame: the blend of I0 and I1 shows two half-strength ghosts of a moving object, and this measure says how far
from the truth the better-matching one lies.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edensplit.training.synthetic import Triplet

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2
MIN_VISIBLE_PX = 12.0  # an object less visible than this in the true middle frame is not measured
SEARCH_MARGIN = 3  # px searched beyond the object's own motion


def psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (capped at 100 dB for identical ones)."""
    mse = np.mean((pred.astype(np.float64) - truth.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gaussian(size: int, sigma: float, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(x: Tensor, y: Tensor) -> Tensor:
    """SSIM map [B, C, H', W'] of images [B, C, H, W] in [0, 1]: an 11x11 Gaussian window (sigma 1.5), valid
    positions only, per channel (Wang et al. 2004); differentiable."""
    g = _gaussian(SSIM_WINDOW, SSIM_SIGMA, x)
    rows, cols = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(z: Tensor) -> Tensor:  # separable, channels folded into the batch (grouped convolutions are slow)
        b, c, h, w = z.shape
        out = F.conv2d(F.conv2d(z.reshape(b * c, 1, h, w), rows), cols)
        return out.view(b, c, *out.shape[-2:])

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return ((2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (sxx + syy + SSIM_C2))


def ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM of two uint8 [H, W, 3] images over the RGB channels."""
    def tensor(img: np.ndarray) -> Tensor:
        return torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255

    return float(ssim_map(tensor(pred), tensor(truth)).mean())


def _foreground(frame: np.ndarray, without: np.ndarray) -> np.ndarray:
    """How much a frame differs from the true middle frame without one object: sum over RGB of |difference|."""
    return np.abs(frame.astype(np.float32) - without.astype(np.float32)).sum(axis=-1) / 255


def locate(frame: np.ndarray, template: np.ndarray, radius: int) -> np.ndarray:
    """The shift (dx, dy) within +-radius px at which `template` [H, W] best matches `frame` [H, W] (both
    foreground maps): the least sum of squared differences over the template's bounding box, refined to sub-pixel
    by a parabola on each axis."""
    ys, xs = np.nonzero(template > 0)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    kernel = torch.from_numpy(np.ascontiguousarray(template[y0:y1, x0:x1]))[None, None].double()
    window = np.pad(frame, radius)[y0: y1 + 2 * radius, x0: x1 + 2 * radius]
    window = torch.from_numpy(np.ascontiguousarray(window))[None, None].double()
    # sum (f - t)^2 = sum f^2 - 2 sum f t + sum t^2, the last the same for every shift
    cost = (F.conv2d(window**2, torch.ones_like(kernel)) - 2 * F.conv2d(window, kernel))[0, 0].numpy()
    iy, ix = np.unravel_index(np.argmin(cost), cost.shape)

    def refine(left: float, centre: float, right: float) -> float:
        curve = left - 2 * centre + right
        return 0.0 if curve <= 0 else float(np.clip(0.5 * (left - right) / curve, -0.5, 0.5))

    n = cost.shape[0]
    dy = refine(cost[iy - 1, ix], cost[iy, ix], cost[iy + 1, ix]) if 0 < iy < n - 1 else 0.0
    dx = refine(cost[iy, ix - 1], cost[iy, ix], cost[iy, ix + 1]) if 0 < ix < n - 1 else 0.0
    return np.array([ix - radius + dx, iy - radius + dy])


def object_offsets(pred: np.ndarray, triplet: Triplet) -> list[float]:
    """For each tracked object visible in the true middle frame: how far (px) from its true place it is in `pred`
    (uint8 [H, W, 3]).

    The object's true foreground map (the true middle frame's difference from the same frame rendered without the
    object) is slid over the predicted frame's foreground map within the object's own motion plus a margin; the
    best match's shift (least squared difference) is the error. A frame with the object in place scores 0; of the
    blend's two half-strength ghosts, each matches better than the empty place between them, so the best lies
    about half the motion off.
    """
    if triplet.masks is None or triplet.without is None:
        raise ValueError("the centroid measure needs a triplet generated with extras=True")
    truth = triplet.frames[1]
    errors = []
    for k in np.flatnonzero(triplet.tracked):
        if triplet.masks[k].sum() < MIN_VISIBLE_PX:
            continue
        template = _foreground(truth, triplet.without[k]) * (triplet.masks[k] > 0.5)
        if not template.any():
            continue
        c = triplet.centroids[k]
        radius = int(math.ceil(max(np.hypot(*(c[0] - c[1])), np.hypot(*(c[2] - c[1]))))) + SEARCH_MARGIN
        shift = locate(_foreground(pred, triplet.without[k]), template, radius)
        errors.append(float(np.hypot(*shift)))
    return errors
