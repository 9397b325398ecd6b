"""The two stages and the data contract between them.

encode stage (cloud):  frames -> `FrameEncoding` (tokens, per-frame stats, geometry), one frame at a
                       time, so a frame's encoding is bit-for-bit the same whatever batch it came in
                       and can be reused for both pairs it belongs to; plus `frame_difference` for a pair.
interpolate stage (edge): two `FrameEncoding`s + raw difference + noise -> the middle frame.
`LocalPipeline` runs both in one process: the reference every split result is compared against.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edensplit.errors import ErrorCode, InputError
from edensplit.model.eden import ENCODE, INTERPOLATE, Eden, FrameContext
from edensplit.model.seeds import make_noise

STD_EPS = 1e-8
REFERENCE_GRID = (0.0, 0.75, 1.0)
MAX_STEPS = 64
# A frame's cosine similarity with itself can round to 1 + 1 ulp in float32 (solid frames): every check of a
# difference accepts [-1, 1] widened by this much, and the value is used as is, unclamped, as the reference does.
DIFFERENCE_LIMIT = 1.0 + 1e-6


def is_valid_difference(value: float) -> bool:
    """A raw mean cosine similarity: finite and within [-1, 1] up to float32 rounding."""
    return math.isfinite(value) and abs(value) <= DIFFERENCE_LIMIT
METHODS = ("euler", "heun")


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


def geometry_for(model: Eden, height: int, width: int) -> Geometry:
    return Geometry(height, width, model.args.pad_multiple, model.args.patch_size)


def as_frames(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 RGB [H, W, 3] / [B, H, W, 3] (numpy or torch) or float [B, 3, H, W] in [0, 1] -> float32 [B, 3, H, W]."""
    if isinstance(frames, np.ndarray):  # a read-only array (decoded from bytes) is copied, not wrapped
        x = torch.from_numpy(np.ascontiguousarray(frames) if frames.flags.writeable else np.array(frames))
    else:
        x = frames
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise InputError(f"uint8 frames must be [H, W, 3] or [B, H, W, 3] RGB, got {tuple(x.shape)}",
                             code=ErrorCode.SHAPE_MISMATCH)
        return x.permute(0, 3, 1, 2).float() / 255
    if x.is_floating_point():
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"float frames must be [B, 3, H, W], got {tuple(x.shape)}", code=ErrorCode.SHAPE_MISMATCH)
        return x.float()
    raise InputError(f"frames must be uint8 or floating point, got {x.dtype}")


def to_uint8(x: Tensor) -> np.ndarray:
    """Float frames [B, 3, H, W] -> uint8 [B, H, W, 3] by floor(clamp(x, 0, 1) * 255 + 0.5)."""
    u8 = torch.floor(x.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()


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
        geometries = {p.geometry for p in parts}
        if len(geometries) != 1:
            raise InputError("can only batch encodings of frames of one size", code=ErrorCode.SHAPE_MISMATCH)
        return FrameEncoding(*(torch.cat([getattr(p, f) for p in parts])
                               for f in ("cond_dit", "cond_dec", "mean", "std")), parts[0].geometry)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FrameEncoding:
        return FrameEncoding(self.cond_dit.to(device, dtype), self.cond_dec.to(device, dtype),
                             self.mean.to(device), self.std.to(device), self.geometry)


def _require(model: Eden, stage: str) -> None:
    if stage not in model.stages:
        raise InputError(f"this model was loaded without the {stage} stage's weights",
                         code=ErrorCode.INTERNAL_ERROR)


@torch.inference_mode()
def encode_frames(model: Eden, frames: np.ndarray | Tensor, batched: bool = False) -> FrameEncoding:
    """The encode stage: pad, normalise per frame, run the conditioning encoder. One frame at a time is the
    exact mode (a frame's encoding never depends on what it was sent with); `batched` runs all frames as one
    call (a GPU's fast path: the same values up to float rounding)."""
    _require(model, ENCODE)
    x = as_frames(frames).to(model.device)
    geo = geometry_for(model, x.shape[-2], x.shape[-1])
    top, bottom, left, right = geo.padding
    padded = F.pad(x, (left, right, top, bottom), mode="replicate")
    if batched:
        mean = padded.mean(dim=(1, 2, 3))
        std = padded.flatten(1).std(dim=1) + STD_EPS
        dit, dec = model.encode_tokens(((padded - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)).to(model.dtype))
        return FrameEncoding(dit, dec, mean, std, geo)
    dits, decs, means, stds = [], [], [], []
    for frame in padded.split(1):
        mean, std = frame.mean(), frame.std() + STD_EPS
        dit, dec = model.encode_tokens(((frame - mean) / std).to(model.dtype))
        dits.append(dit)
        decs.append(dec)
        means.append(mean)
        stds.append(std)
    return FrameEncoding(torch.cat(dits), torch.cat(decs), torch.stack(means), torch.stack(stds), geo)


@torch.inference_mode()
def frame_difference(frame0: np.ndarray | Tensor, frame1: np.ndarray | Tensor) -> Tensor:
    """Raw mean cosine similarity over pixels of two unpadded frames -> [B] float32 (the API's 'difference')."""
    x0, x1 = as_frames(frame0), as_frames(frame1)
    if x0.shape != x1.shape:
        raise InputError(f"the two frames differ in size: {tuple(x0.shape[-2:])} vs {tuple(x1.shape[-2:])}",
                         code=ErrorCode.FRAME_SIZE_MISMATCH)
    return F.cosine_similarity(x0, x1, dim=1, eps=1e-8).mean(dim=(1, 2))


def normalise_difference(raw: Tensor, cos_sim_mean: float, cos_sim_std: float) -> Tensor:
    """What the model consumes: (raw - cos_sim_mean) / cos_sim_std."""
    return (raw.float() - cos_sim_mean) / cos_sim_std


@dataclass(frozen=True)
class Sampler:
    """The ODE sampler. 2 steps is the reference grid (0, 0.75, 1); other counts use a uniform grid."""

    num_steps: int = 2
    method: str = "euler"
    time_grid: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown sampling method {self.method!r}; use one of {', '.join(METHODS)}")
        if not isinstance(self.num_steps, int) or not 1 <= self.num_steps <= MAX_STEPS:
            raise InputError(f"num_steps must be an integer from 1 to {MAX_STEPS}, got {self.num_steps!r}")
        n = self.num_steps
        grid = REFERENCE_GRID if n == 2 else tuple(i / n for i in range(n + 1))
        object.__setattr__(self, "time_grid", grid)

    def run(self, velocity: Callable[[Tensor, float], Tensor], x: Tensor,
            trace: list[Tensor] | None = None, check: Callable[[], None] | None = None) -> Tensor:
        """Integrate dx/dt = v(x, t) over the grid from the noise x; `trace` collects each step's state;
        `check`, called before each step, may raise to stop (a deadline passed, the caller went away)."""
        for t0, t1 in itertools.pairwise(self.time_grid):
            if check is not None:
                check()
            dt = t1 - t0
            v = velocity(x, t0)
            if self.method == "heun":
                v = 0.5 * (v + velocity(x + dt * v, t1))
            x = x + dt * v
            if trace is not None:
                trace.append(x)
        return x


REFERENCE_SAMPLER = Sampler()


@torch.inference_mode()
def frame_context(model: Eden, enc: FrameEncoding) -> FrameContext:
    """`Eden.frame_context` of encoded frames, on the model's device and in its dtype (see there)."""
    _require(model, INTERPOLATE)
    enc = enc.to(model.device, model.dtype)
    return model.frame_context(enc.cond_dit, enc.cond_dec, enc.geometry.grid)


def cat_contexts(contexts: Sequence[FrameContext]) -> FrameContext:
    """Frames' contexts joined along the batch, block by block (a batch of pairs)."""
    if len(contexts) == 1:
        return contexts[0]
    return ([torch.cat(kv) for kv in zip(*(c[0] for c in contexts), strict=True)],
            [torch.cat(kv) for kv in zip(*(c[1] for c in contexts), strict=True)])


@torch.inference_mode()
def interpolate(model: Eden, enc0: FrameEncoding, enc1: FrameEncoding, difference: Tensor, noise: Tensor,
                sampler: Sampler = REFERENCE_SAMPLER, *, vae_scaler: float | None = None,
                vae_shift: float | None = None, trace: dict[str, object] | None = None,
                check: Callable[[], None] | None = None,
                contexts: tuple[FrameContext, FrameContext] | None = None) -> Tensor:
    """The interpolate stage: B pairs of encodings -> middle frames [B, 3, H, W], float in [0, 1].

    `difference` is the raw mean cosine similarity [B]; `noise` the initial latents [B, M, L].
    `trace`, when given, receives the sampler states ("latents") and "decoded_padded"; `check` is called
    between sampler steps and before decoding, and may raise to stop the work. `contexts`, the two frames'
    `frame_context`s when the caller keeps them (a video's frames), saves computing them again.
    """
    _require(model, INTERPOLATE)
    geo, B = enc0.geometry, len(enc0)
    if enc1.geometry != geo or len(enc1) != B:
        raise InputError("the two encodings must hold the same number of frames of one size",
                         code=ErrorCode.SHAPE_MISMATCH)
    expected = (B, geo.latent_tokens, model.args.latent_dim)
    if tuple(noise.shape) != expected:
        raise InputError(f"noise must have shape {list(expected)}, got {list(noise.shape)}",
                         code=ErrorCode.SHAPE_MISMATCH)
    if tuple(difference.shape) != (B,):
        raise InputError(f"difference must have shape [{B}], got {list(difference.shape)}",
                         code=ErrorCode.SHAPE_MISMATCH)
    cfg = model.config
    scaler = cfg.vae_scaler if vae_scaler is None else vae_scaler
    shift = cfg.vae_shift if vae_shift is None else vae_shift
    device, dtype, grid = model.device, model.dtype, geo.grid
    enc0, enc1 = enc0.to(device, dtype), enc1.to(device, dtype)

    diff = normalise_difference(difference.to(device), cfg.cos_sim_mean, cfg.cos_sim_std)
    diff_emb = model.condition(diff)
    ctx0, ctx1 = contexts or (frame_context(model, enc0), frame_context(model, enc1))
    ctx = list(zip(ctx0[0], ctx1[0], strict=True))

    def velocity(x: Tensor, t: float) -> Tensor:
        return model.velocity(x, torch.full((B,), t, device=device), diff_emb, ctx, grid)

    states: list[Tensor] | None = [] if trace is not None else None
    x = sampler.run(velocity, noise.to(device, dtype), states, check)
    if check is not None:
        check()
    z = x / scaler + shift
    dec_ctx = list(zip(ctx0[1], ctx1[1], strict=True))
    img = model.decode(z, dec_ctx, grid).float()
    mean = ((enc0.mean + enc1.mean) / 2).view(B, 1, 1, 1)
    std = ((enc0.std + enc1.std) / 2).view(B, 1, 1, 1)
    img = img * std + mean
    if trace is not None:
        trace["latents"], trace["decoded_padded"] = states, img
    top, _, left, _ = geo.padding
    return img.clamp(0, 1)[..., top: top + geo.height, left: left + geo.width]


class LocalPipeline:
    """Both stages in one process: frame0, frame1 -> middle frame. The split's reference.

    For a video (`video_pair`), each frame is encoded once and its temporal keys/values computed once,
    kept for the next pair it belongs to: the same frames as pair at a time, bit for bit."""

    KEEP = 4  # frames of the current video kept (pairs in flight come in any order within a small window)

    def __init__(self, model: Eden, sampler: Sampler = REFERENCE_SAMPLER):
        self.model = model
        self.sampler = sampler
        self._frames: OrderedDict[int, tuple[FrameEncoding, FrameContext]] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # frames encoded and contextualised by `video_pair`, for tests

    def begin_video(self) -> None:
        with self._lock:
            self._frames.clear()

    def _frame(self, index: int, frame: np.ndarray | Tensor) -> tuple[FrameEncoding, FrameContext]:
        with self._lock:
            held = self._frames.get(index)
        if held is None:  # computed outside the lock: two threads may both compute it, to the same values
            enc = encode_frames(self.model, frame)
            held = (enc, frame_context(self.model, enc))
            with self._lock:
                self.computed += 1
                self._frames[index] = held
                while len(self._frames) > self.KEEP:
                    self._frames.popitem(last=False)
        return held

    def video_pair(self, frame0: np.ndarray | Tensor, frame1: np.ndarray | Tensor, seed: int, index: int
                   ) -> np.ndarray:
        """Pair (index, index + 1) of the current video -> the middle frame, uint8 [H, W, 3]."""
        (enc0, ctx0), (enc1, ctx1) = self._frame(index, frame0), self._frame(index + 1, frame1)
        noise = self.noise_for(seed, enc0.geometry)
        out = interpolate(self.model, enc0, enc1, frame_difference(frame0, frame1), noise, self.sampler,
                          contexts=(ctx0, ctx1))
        return to_uint8(out)[0]

    def noise_for(self, seed: int, geometry: Geometry) -> Tensor:
        return make_noise(seed, geometry.latent_tokens, self.model.args.latent_dim)

    def interpolate_batch(self, frames0: np.ndarray | Tensor, frames1: np.ndarray | Tensor,
                          seeds: Sequence[int]) -> np.ndarray:
        """B pairs of one size with one noise seed each -> uint8 [B, H, W, 3]."""
        enc0, enc1 = encode_frames(self.model, frames0), encode_frames(self.model, frames1)
        if len(seeds) != len(enc0):
            raise InputError(f"{len(enc0)} pairs need {len(enc0)} seeds, got {len(seeds)}")
        noise = torch.cat([self.noise_for(s, enc0.geometry) for s in seeds])
        out = interpolate(self.model, enc0, enc1, frame_difference(frames0, frames1), noise, self.sampler)
        return to_uint8(out)

    def interpolate(self, frame0: np.ndarray | Tensor, frame1: np.ndarray | Tensor, seed: int = 0) -> np.ndarray:
        """One pair of uint8 [H, W, 3] frames -> the middle frame, uint8 [H, W, 3]."""
        return self.interpolate_batch(frame0, frame1, [seed])[0]
