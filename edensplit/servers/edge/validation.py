"""An interpolation job, validated: options against the loaded model and the encodings, each refusal
with a specific code."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.config import IGNORED_MODEL_ARGS
from edensplit.model.eden import Eden
from edensplit.model.encoding import FrameEncoding, is_valid_difference
from edensplit.model.sampler import Sampler
from edensplit.servers.contract import JSON, Cancellation
from edensplit.wire.blob import EncodedFrames
from edensplit.wire.options import OPTION_ERRORS, Options

# What reading an enc_out blob and making a job of it can refuse: base64 (JSON), the blob itself (INVALID_BLOB,
# SHAPE_MISMATCH, over the pixel budget), its fit to the loaded model, the options and the difference.
JOB_ERRORS = (ErrorCode.INVALID_BASE64, ErrorCode.INVALID_BLOB, ErrorCode.SHAPE_MISMATCH, ErrorCode.PAYLOAD_TOO_LARGE,
              ErrorCode.MODEL_MISMATCH, *OPTION_ERRORS)


@dataclass
class InterpolateJob:
    """Two frames' encodings and everything the sampler needs."""

    enc0: FrameEncoding
    enc1: FrameEncoding
    difference: float
    seed: int
    sampler: Sampler
    vae_scaler: float | None
    vae_shift: float | None
    request_id: str
    answer: str = JSON
    cancellation: Cancellation = field(default_factory=Cancellation)
    held: tuple[Any, Any] = (None, None)  # session frames of enc0/enc1, whose temporal keys/values are kept
    contexts: Any = None  # the session store's ContextCache, which keeps them
    staged: tuple[Any, Any] = (None, None)  # on a GPU: enc0/enc1's copies to it, started by the decode step
    started: float = field(default_factory=time.perf_counter)


def check_encoding(model: Eden, enc: FrameEncoding) -> None:
    """An encoding this model can sample from: its hidden size, patch and padding multiple are the model's."""
    if enc.cond_dit.shape[-1] != model.args.hidden_dim:
        raise EdenError(f"enc_out has hidden size {enc.cond_dit.shape[-1]}, the loaded model "
                        f"{model.args.hidden_dim}: cloud and edge run different models", code=ErrorCode.MODEL_MISMATCH)
    geo, args = enc.geometry, model.args
    if (geo.patch, geo.multiple) != (args.patch_size, args.pad_multiple):
        raise EdenError(f"enc_out has patch {geo.patch} and padding multiple {geo.multiple}, the loaded model "
                        f"{args.patch_size} and {args.pad_multiple}: cloud and edge run different models",
                        code=ErrorCode.MODEL_MISMATCH)


def check_model_args(model: Eden, model_args: dict[str, Any] | None) -> None:
    """model_args sent with a request must be the loaded model's (keys the model ignores aside)."""
    ours = model.args.as_dict()
    bad = [f"{k}: request {v!r}, server {ours.get(k)!r}" for k, v in (model_args or {}).items()
           if k not in IGNORED_MODEL_ARGS and (k not in ours or ours[k] != v)]
    if bad:
        raise EdenError("model_args do not match the loaded model: " + "; ".join(bad), code=ErrorCode.MODEL_MISMATCH)


def check_grid(enc: FrameEncoding, ph: Any, pw: Any) -> None:
    """metadata ph/pw, when sent, must be the encodings' token grid."""
    grid = enc.geometry.grid
    try:
        sent = tuple(None if v is None else int(v) for v in (ph, pw))
    except (TypeError, ValueError, OverflowError):
        raise EdenError(f"metadata ph/pw ({ph!r}, {pw!r}) must be integers", code=ErrorCode.INVALID_PARAMETER) from None
    if any(v is not None and v != g for v, g in zip(sent, grid, strict=True)):
        raise EdenError(f"metadata ph/pw ({ph}, {pw}) do not match the enc_out grid {grid}",
                        code=ErrorCode.SHAPE_MISMATCH)


def make_job(model: Eden, enc0: FrameEncoding, enc1: FrameEncoding, opts: Options, difference: float | None,
             request_id: str, answer: str = JSON, cancellation: Cancellation | None = None) -> InterpolateJob:
    """The job for a pair of encodings; `difference` is the pair's when the options carry none."""
    check_encoding(model, enc0)
    check_encoding(model, enc1)
    if enc0.geometry != enc1.geometry:
        raise EdenError(f"the two frames' encodings differ in size ({enc0.geometry.height}x{enc0.geometry.width} vs "
                        f"{enc1.geometry.height}x{enc1.geometry.width})", code=ErrorCode.SHAPE_MISMATCH)
    difference = difference if opts.difference is None else opts.difference
    if difference is None or not is_valid_difference(difference):
        raise EdenError(f"difference must be the raw mean cosine similarity in [-1, 1], got {difference!r}",
                        code=ErrorCode.INVALID_PARAMETER)
    sampler = Sampler(2 if opts.num_steps is None else opts.num_steps, opts.method or "euler")
    return InterpolateJob(enc0, enc1, float(difference), opts.seed or 0, sampler, opts.vae_scaler, opts.vae_shift,
                          request_id, answer, cancellation or Cancellation())


def pair_job(model: Eden, encoded: EncodedFrames, opts: Options, request_id: str, answer: str = JSON,
             cancellation: Cancellation | None = None) -> InterpolateJob:
    """The job for a pair's blob: its two encodings, its difference unless the options override it."""
    enc = encoded.encoding
    return make_job(model, enc[0], enc[1], opts, encoded.difference, request_id, answer, cancellation)
