"""A stand-in for EDEN, for measuring the serving path (EDENSPLIT_STAND_IN_MODEL=1, `edensplit bench --mode overhead`):
the same interface and the full-size model's shapes, and no network behind them. The cloud answers an encoding of
the right shape (zeros, made once per frame size), the edge samples nothing and decodes a checkerboard: what is
left to time is everything around the model (packing, sockets, parsing, budget, replays, sessions, rendering,
frame I/O).

It can never pass for EDEN: it is refused beside MODEL_PATH, /health says `"stand_in": true`, the start-up line
says it, and its frames are a checkerboard, not interpolations.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from edensplit.model.config import EdenConfig
from edensplit.model.eden import ALL_STAGES, FrameContext
from edensplit.model.encoding import FrameEncoding, Geometry

KEPT_SIZES = 2  # frame sizes whose zero encodings are kept
STAND_IN = "stand-in (no model: EDENSPLIT_STAND_IN_MODEL=1, for measuring the serving path)"


class StandIn:
    """EDEN's interface (what edensplit.model.stages calls) with its shapes, and nothing computed: the stages hand a
    whole encoding (`encode`) and a whole frame (`frames`) to it without their own arithmetic."""

    def __init__(self, config: EdenConfig, stages: Iterable[str] = ALL_STAGES, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.config, self.args = config, config.model_args
        self.stages = frozenset(stages)
        self.device, self.dtype = torch.device(device), dtype
        self.weights_source = STAND_IN
        self.weights_digest = self.weights_name = "stand-in"
        self.weights_repository = self.weights_revision = None
        self.stand_in = True
        self._boards: dict[Geometry, Tensor] = {}
        self._zeros: dict[Geometry, tuple[Tensor, Tensor]] = {}  # encodings' tokens by frame size, latest last

    def encode(self, batch: int, geometry: Geometry) -> FrameEncoding:
        """`batch` frames' encoding, zeros of the full-size shapes (mean 0, std 1): views of zeros made once per
        frame size, so that a call writes nothing (as a model on a GPU writes nothing in the host's memory) and
        what is timed around it is not slowed by a pass of the stand-in's own. Nothing writes into an encoding."""
        kept = self._zeros.pop(geometry, None)
        if kept is None or kept[0].shape[0] < batch:
            shape = (batch, geometry.tokens, self.args.hidden_dim)
            kept = (torch.zeros(shape, device=self.device, dtype=self.dtype),
                    torch.zeros(shape, device=self.device, dtype=self.dtype))
        self._zeros[geometry] = kept  # the latest last: the oldest size goes first
        while len(self._zeros) > KEPT_SIZES:
            del self._zeros[next(iter(self._zeros))]
        return FrameEncoding(kept[0][:batch], kept[1][:batch], torch.zeros(batch), torch.ones(batch), geometry)

    def frames(self, batch: int, geometry: Geometry) -> Tensor:
        """`batch` checkerboards [B, 3, H, W] in [0, 1] of 16-pixel squares: visibly not interpolations."""
        board = self._boards.get(geometry)
        if board is None:
            ys, xs = torch.arange(geometry.height) // 16, torch.arange(geometry.width) // 16
            board = self._boards[geometry] = ((ys[:, None] + xs[None, :]) % 2).float() * 0.6 + 0.2
        return board.expand(batch, 3, *board.shape)

    def encode_tokens(self, x_norm: Tensor) -> tuple[Tensor, Tensor]:
        """Padded frames [B, 3, H', W'] -> zeros (cond_dit, cond_dec), each [B, N, D]: the right shape."""
        p = self.args.patch_size
        shape = (x_norm.shape[0], (x_norm.shape[-2] // p) * (x_norm.shape[-1] // p), self.args.hidden_dim)
        return (torch.zeros(shape, device=self.device, dtype=self.dtype),
                torch.zeros(shape, device=self.device, dtype=self.dtype))

    def frame_context(self, cond_dit: Tensor, cond_dec: Tensor, grid: tuple[int, int]) -> FrameContext:
        """One empty tensor per block, batch-shaped (so contexts still join into batches and are sized as EDEN's)."""
        empty = torch.zeros(cond_dit.shape[0], 0, device=self.device, dtype=self.dtype)
        return ([empty] * self.args.dit_depth, [empty] * self.args.decoder_depth)

    def condition(self, difference: Tensor) -> Tensor:
        return torch.zeros(difference.shape[0], self.args.hidden_dim, device=self.device, dtype=self.dtype)

    def velocity(self, x: Tensor, t: Tensor, diff_emb: Tensor, ctx: list[tuple[Tensor, Tensor]],
                 grid: tuple[int, int]) -> Tensor:
        return torch.zeros_like(x)

    def decode(self, z: Tensor, ctx: list[tuple[Tensor, Tensor]], grid: tuple[int, int]) -> Tensor:
        """A checkerboard [B, 3, H', W'] of 16-pixel squares (normalised, as EDEN's decoder answers): visibly no
        interpolation."""
        p = self.args.patch_size
        ys = torch.arange(grid[0] * p, device=self.device) // 16
        xs = torch.arange(grid[1] * p, device=self.device) // 16
        board = ((ys[:, None] + xs[None, :]) % 2).to(self.dtype) * 2 - 1
        return board.expand(z.shape[0], 3, *board.shape).clone()
