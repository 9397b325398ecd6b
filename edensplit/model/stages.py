"""The two stages as plain functions over a stateless model.

encode stage (cloud):  frames -> `FrameEncoding` (tokens, per-frame stats, geometry), one frame at a
                       time, so a frame's encoding is bit-for-bit the same whatever batch it came in
                       and can be reused for both pairs it belongs to; plus `frame_difference` for a pair.
interpolate stage (edge): two `FrameEncoding`s + raw difference + noise -> the middle frame.
The contract between them is in `encoding.py`, the sampler in `sampler.py`, both in one process in
`pipeline.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edensplit.errors import ErrorCode, InputError
from edensplit.model.eden import ENCODE, INTERPOLATE, Eden, FrameContext
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.model.sampler import REFERENCE_SAMPLER, Sampler
from edensplit.model.stand_in import StandIn

STD_EPS = 1e-8
COSINE_EPS = 1e-8  # F.cosine_similarity's eps: a black pixel's norm
BAND_ROWS = 32  # rows of a frame per step of `frame_difference` (a 1080p band's temporaries: under 1 MB each)
SUM_PIECE = 32767  # values per torch sum in `mean_of`: below torch's parallel grain (32768), one thread


def geometry_for(model: Eden, height: int, width: int) -> Geometry:
    """A height x width frame's Geometry under this model's padding multiple and patch size."""
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
    """Float frames [B, 3, H, W] -> uint8 [B, H, W, 3] by floor(clamp(x, 0, 1) * 255 + 0.5).

    The value is clamped, scaled and offset in place and truncated by the cast to uint8 (floor, since it is
    non-negative); on the CPU BAND_ROWS rows at a time, so the temporaries stay in cache (a 1080p frame took five
    full-frame float32 temporaries, 2x the time); the same bits either way."""
    B, C, H, W = x.shape
    if x.device.type != "cpu":  # one kernel per step on a GPU, then one copy of the uint8 frames to the host
        return uint8_on_device(x).cpu().numpy()
    out = torch.empty((B, H, W, C), dtype=torch.uint8)
    for top in range(0, H, BAND_ROWS):
        out[:, top: top + BAND_ROWS].copy_(_levels(x[:, :, top: top + BAND_ROWS]).permute(0, 2, 3, 1))
    return out.numpy()


def uint8_on_device(x: Tensor) -> Tensor:
    """`to_uint8`'s frames [B, H, W, 3] where `x` is (a GPU: one kernel per step), not copied to the host."""
    return _levels(x).permute(0, 2, 3, 1).contiguous()


def _levels(x: Tensor) -> Tensor:
    """floor(clamp(x, 0, 1) * 255 + 0.5) as uint8, same layout: the cast truncates a non-negative value."""
    return x.float().clamp(0, 1).mul_(255).add_(0.5).to(torch.uint8)


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
    if isinstance(model, StandIn):  # measuring the serving path: the shapes, none of the arithmetic
        shape = frames.shape
        batch, (height, width) = (1 if len(shape) == 3 else shape[0]), shape[-3:-1] if shape[-1] == 3 else shape[-2:]
        return model.encode(batch, geometry_for(model, height, width))
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
    """Raw mean cosine similarity over pixels of two unpadded frames -> [B] float32 (the API's 'difference').

    The client (flow A sessions), the cloud, the edge (flow B) and `--local` each compute it, so it depends on the
    pixels alone, never on the process's torch thread count or the batch: each pixel's similarity is torch's float32
    value computed in numpy (`cosine_map`), and the mean is torch's float32 sum and division, the sum taken in
    pieces that torch never splits across threads (`mean_of`). Below torch's parallel grain (32768 pixels, e.g.
    the golden cases) that is the reference's own arithmetic, bit for bit."""
    if _uint8_frames(frame0) and _uint8_frames(frame1):
        similarity = _cosine_map_in_bands(frame0, frame1)
    else:
        x0, x1 = pixel_planes(frame0), pixel_planes(frame1)
        if x0.shape != x1.shape:
            raise InputError(f"the two frames differ in size: {tuple(x0.shape[-2:])} vs {tuple(x1.shape[-2:])}",
                             code=ErrorCode.FRAME_SIZE_MISMATCH)
        similarity = cosine_map(x0, x1)
    return torch.from_numpy(np.array([mean_of(frame) for frame in similarity], dtype=np.float32))


def _uint8_frames(frames: np.ndarray | Tensor) -> bool:
    return isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim in (3, 4)


def _cosine_map_in_bands(frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
    """`cosine_map` of uint8 frames, BAND_ROWS rows at a time into one float32 map: each pixel's value depends on
    that pixel alone, so the bits are the same, while the temporaries stay small enough to be reused rather than
    mapped afresh (a whole 1080p frame's took ~100 MB of new pages per pair: page faults, which also queue behind
    any other thread of the process mapping or unmapping memory, e.g. shared-memory segments)."""
    u0, u1 = (f[None] if f.ndim == 3 else f for f in (frame0, frame1))
    for frames in (u0, u1):
        if frames.shape[-1] != 3:
            pixel_planes(frames)  # raises its error for frames that are not RGB
    if u0.shape != u1.shape:  # as the whole-frame path compares them (batch included)
        raise InputError(f"the two frames differ in size: {u0.shape[1:3]} vs {u1.shape[1:3]}",
                         code=ErrorCode.FRAME_SIZE_MISMATCH)
    out = np.empty(u0.shape[:3], np.float32)
    for top in range(0, u0.shape[1], BAND_ROWS):
        rows = slice(top, top + BAND_ROWS)
        out[:, rows] = cosine_map(pixel_planes(u0[:, rows]), pixel_planes(u1[:, rows]))
    return out


def mean_of(values: np.ndarray) -> np.float32:
    """float32 values -> their float32 mean: torch's float32 sum of each piece of SUM_PIECE values (fewer than torch's
    parallel grain, so summed on one thread whatever the thread count), the pieces' sums added exactly and rounded
    to float32, then divided by the count in float32 (what torch's mean does)."""
    flat = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).ravel())
    total = math.fsum(float(piece.sum()) for piece in flat.split(SUM_PIECE))
    return np.float32(total) / np.float32(flat.numel())


def pixel_planes(frames: np.ndarray | Tensor) -> np.ndarray:
    """What `as_frames` makes of frames, as a contiguous numpy float32 [B, 3, H, W] (uint8 numpy frames without
    torch: the same IEEE division by 255)."""
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8):
        return np.ascontiguousarray(as_frames(frames).detach().cpu().numpy())
    u8 = frames[None] if frames.ndim == 3 else frames
    if u8.ndim != 4 or u8.shape[-1] != 3:
        raise InputError(f"uint8 frames must be [H, W, 3] or [B, H, W, 3] RGB, got {tuple(frames.shape)}",
                         code=ErrorCode.SHAPE_MISMATCH)
    planes = np.empty((u8.shape[0], 3, u8.shape[1], u8.shape[2]), np.float32)
    for c in range(3):
        np.divide(u8[..., c], np.float32(255), out=planes[:, c], dtype=np.float32)
    return planes


def cosine_map(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Per-pixel cosine similarity of float32 frames [B, 3, H, W] -> [B, H, W] float32, operation by operation as
    torch's CPU kernel computes `F.cosine_similarity(x0, x1, dim=1, eps=1e-8)` (each norm by fused multiply-adds,
    clamped to eps; each frame divided by its norm; the products summed in channel order), in numpy's
    element-wise IEEE operations: the same bits whatever the thread count, batch or machine."""
    def norm(x: np.ndarray) -> np.ndarray:
        squares = _fma32(x[:, 2], x[:, 2], _fma32(x[:, 1], x[:, 1], x[:, 0] * x[:, 0]))
        return np.maximum(np.sqrt(squares), np.float32(COSINE_EPS))

    n0, n1 = norm(x0), norm(x1)
    products = [(x0[:, c] / n0) * (x1[:, c] / n1) for c in range(3)]
    return (products[0] + products[1]) + products[2]


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a * b + c as a fused multiply-add: the product is exact in float64, the sum rounded to float64, then
    to float32. The two roundings equal one for all 2**24 colours of uint8 frames (checked exhaustively: no float64
    sum lands on a float32 tie); other float inputs may rarely differ from a hardware FMA, never between runs."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def normalise_difference(raw: Tensor, cos_sim_mean: float, cos_sim_std: float) -> Tensor:
    """What the model consumes: (raw - cos_sim_mean) / cos_sim_std."""
    return (raw.float() - cos_sim_mean) / cos_sim_std


@torch.inference_mode()
def frame_context(model: Eden, enc: FrameEncoding) -> FrameContext:
    """`Eden.frame_context` of encoded frames, on the model's device and in its dtype (see there)."""
    _require(model, INTERPOLATE)
    # the stand-in reads no token: they go to its device as they came (a GPU's copy), not converted to its dtype
    enc = enc.to(model.device) if isinstance(model, StandIn) else enc.to(model.device, model.dtype)
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
    if isinstance(model, StandIn):  # measuring the serving path: a frame of the right size, no sampling
        return model.frames(B, geo)
    cfg = model.config
    scaler = cfg.vae_scaler if vae_scaler is None else vae_scaler
    shift = cfg.vae_shift if vae_shift is None else vae_shift
    device, dtype, grid = model.device, model.dtype, geo.grid

    diff = normalise_difference(difference.to(device), cfg.cos_sim_mean, cfg.cos_sim_std)
    diff_emb = model.condition(diff)
    # the tokens go to the device (and the model's dtype) only to make contexts: kept ones need none of them moved
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
    mean = ((enc0.mean.to(device) + enc1.mean.to(device)) / 2).view(B, 1, 1, 1)
    std = ((enc0.std.to(device) + enc1.std.to(device)) / 2).view(B, 1, 1, 1)
    img = img * std + mean
    if trace is not None:
        trace["latents"], trace["decoded_padded"] = states, img
    top, _, left, _ = geo.padding
    return img.clamp(0, 1)[..., top: top + geo.height, left: left + geo.width]
