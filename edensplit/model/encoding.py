"""The data contract between the two stages: what the encode stage hands the interpolate stage.

`Geometry` (a frame's size, padding and token grids), `FrameEncoding` (B frames' tokens and per-frame
stats) and the pair's raw difference (a mean cosine similarity): exactly what the wire's enc_out blob carries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from edensplit.errors import ErrorCode, InputError

# A frame's cosine similarity with itself can round to 1 + 1 ulp in float32 (solid frames): every check of a
# difference accepts [-1, 1] widened by this much, and the value is used as is, unclamped, as the reference does.
DIFFERENCE_LIMIT = 1.0 + 1e-6


def is_valid_difference(value: float) -> bool:
    """A raw mean cosine similarity: finite and within [-1, 1] up to float32 rounding."""
    return math.isfinite(value) and abs(value) <= DIFFERENCE_LIMIT


@dataclass(frozen=True)
class Geometry:
    """Input size, padding to a multiple of `multiple` (edge-replicated, split before/after), token grids."""

    height: int
    width: int
    multiple: int = 32
    patch: int = 16

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InputError(f"frame size must be positive, got {self.height}x{self.width}")

    def _pad(self, x: int) -> tuple[int, int]:
        pad = ((x // self.multiple + 1) * self.multiple - x) % self.multiple
        return pad // 2, pad - pad // 2

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right)."""
        return (*self._pad(self.height), *self._pad(self.width))

    @property
    def padded_size(self) -> tuple[int, int]:
        top, bottom, left, right = self.padding
        return self.height + top + bottom, self.width + left + right

    @property
    def grid(self) -> tuple[int, int]:
        """(ph, pw): the token grid of one frame."""
        h, w = self.padded_size
        return h // self.patch, w // self.patch

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def latent_tokens(self) -> int:
        return (self.grid[0] // 2) * (self.grid[1] // 2)


@dataclass(frozen=True)
class FrameEncoding:
    """What the cloud hands the edge for B frames of one size: tokens of both branches and stats."""

    cond_dit: Tensor  # [B, N, D]
    cond_dec: Tensor  # [B, N, D]
    mean: Tensor  # [B] float32, of the padded frame
    std: Tensor  # [B] float32, unbiased, + 1e-8
    geometry: Geometry

    def __len__(self) -> int:
        return self.cond_dit.shape[0]

    def __getitem__(self, index: int | slice) -> FrameEncoding:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return FrameEncoding(self.cond_dit[index], self.cond_dec[index], self.mean[index],
                             self.std[index], self.geometry)

    @staticmethod
    def cat(parts: Sequence[FrameEncoding]) -> FrameEncoding:
        """The frames of `parts` as one encoding (one part: itself, not copied)."""
        geometries = {p.geometry for p in parts}
        if len(geometries) != 1:
            raise InputError("can only batch encodings of frames of one size", code=ErrorCode.SHAPE_MISMATCH)
        if len(parts) == 1:
            return parts[0]
        return FrameEncoding(*(torch.cat([getattr(p, f) for p in parts])
                               for f in ("cond_dit", "cond_dec", "mean", "std")), parts[0].geometry)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FrameEncoding:
        return FrameEncoding(self.cond_dit.to(device, dtype), self.cond_dec.to(device, dtype),
                             self.mean.to(device), self.std.to(device), self.geometry)
