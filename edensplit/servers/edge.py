"""The edge server: an `enc_out` blob in, the generated middle frame out (DiT sampling + decoder).

POST /api/v1/interpolate takes the user's JSON (base64 blob plus options) or the blob itself as a
binary body (options as query parameters), and answers with a JSON envelope (base64 PNG), a PNG,
or a binary frames container.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from edensplit.errors import EdenError, ErrorCode
from edensplit.model import INTERPOLATE, Eden, Sampler, interpolate, make_noise, to_uint8
from edensplit.model.config import IGNORED_MODEL_ARGS
from edensplit.model.seeds import MAX_SEED
from edensplit.servers.app import Runtime, create_app
from edensplit.servers.schemas import Envelope, InterpolateData, InterpolateRequest
from edensplit.servers.stage import JSON, media_type, query_value, response_format, serve, unsupported
from edensplit.settings import ServerSettings
from edensplit.wire import (
    BLOB_MEDIA_TYPE,
    FRAMES_MEDIA_TYPE,
    EncodedFrames,
    b64decode_field,
    b64encode,
    encode_png,
    pack_frames,
    unpack_encoding,
)

PNG = "image/png"
INTERPOLATE_TYPES = (JSON, BLOB_MEDIA_TYPE)
ANSWER_TYPES = (FRAMES_MEDIA_TYPE, PNG)


def _param(code: ErrorCode, message: str) -> EdenError:
    return EdenError(message, code=code)


@dataclass
class InterpolateJob:
    """A validated request: the pair's encodings and everything the sampler needs."""

    encoded: EncodedFrames
    difference: float
    seed: int
    sampler: Sampler
    vae_scaler: float | None
    vae_shift: float | None
    request_id: str
    answer: str = JSON
    started: float = 0.0


def check_options(model: Eden, encoded: EncodedFrames, *, difference: float | None, seed: int | None,
                  num_steps: int | None, method: str | None, vae_scaler: float | None, vae_shift: float | None,
                  model_args: dict[str, Any] | None = None, ph: int | None = None,
                  pw: int | None = None) -> tuple[float, int, Sampler]:
    """Validate a request's overrides against the loaded model and the blob; return difference, seed, sampler."""
    if model_args:
        ours = model.args.as_dict()
        bad = [f"{k}: request {v!r}, server {ours[k]!r}" for k, v in model_args.items()
               if k not in IGNORED_MODEL_ARGS and (k not in ours or ours[k] != v)]
        if bad:
            raise _param(ErrorCode.MODEL_MISMATCH, "model_args do not match the loaded model: " + "; ".join(bad))
    if encoded.encoding.cond_dit.shape[-1] != model.args.hidden_dim:
        raise _param(ErrorCode.MODEL_MISMATCH, f"enc_out has hidden size {encoded.encoding.cond_dit.shape[-1]}, "
                     f"the loaded model {model.args.hidden_dim}: cloud and edge run different models")
    grid = encoded.encoding.geometry.grid
    if (ph is not None and ph != grid[0]) or (pw is not None and pw != grid[1]):
        raise _param(ErrorCode.SHAPE_MISMATCH, f"metadata ph/pw ({ph}, {pw}) do not match the enc_out grid {grid}")
    if difference is None:
        difference = encoded.difference
    if difference is None or not math.isfinite(difference) or abs(difference) > 1:
        raise _param(ErrorCode.INVALID_PARAMETER,
                     f"difference must be the raw mean cosine similarity in [-1, 1], got {difference!r}")
    seed = 0 if seed is None else seed
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise _param(ErrorCode.INVALID_PARAMETER, f"seed must be an integer in [0, 2**64), got {seed!r}")
    for name, value in (("vae_scaler", vae_scaler), ("vae_shift", vae_shift)):
        if value is not None and not math.isfinite(value):
            raise _param(ErrorCode.INVALID_PARAMETER, f"{name} must be finite, got {value!r}")
    if vae_scaler is not None and vae_scaler <= 0:
        raise _param(ErrorCode.INVALID_PARAMETER, f"vae_scaler must be > 0, got {vae_scaler!r}")
    sampler = Sampler(2 if num_steps is None else num_steps, method or "euler")  # InputError: INVALID_PARAMETER
    return float(difference), seed, sampler


def generate(model: Eden, job: InterpolateJob) -> np.ndarray:
    """The edge's model work for one pair: noise from the seed, sample, decode -> uint8 [H, W, 3]."""
    enc = job.encoded.encoding
    noise = make_noise(job.seed, enc.geometry.latent_tokens, model.args.latent_dim)
    try:
        out = interpolate(model, enc[0], enc[1], torch.tensor([job.difference]), noise, job.sampler,
                          vae_scaler=job.vae_scaler, vae_shift=job.vae_shift)
    except EdenError:
        raise
    except Exception as exc:
        raise EdenError(f"sampling failed: {type(exc).__name__}: {exc}", code=ErrorCode.MODEL_ERROR) from exc
    return to_uint8(out)[0]


def frame_response(frame: np.ndarray, job: InterpolateJob) -> Response:
    """The generated frame in the format the caller asked for."""
    elapsed = round(time.perf_counter() - job.started, 6)
    headers = {"X-Processing-Time": str(elapsed)}
    if job.answer == PNG:
        return Response(encode_png(frame), media_type=PNG, headers=headers)
    if job.answer == FRAMES_MEDIA_TYPE:
        return Response(pack_frames({"frame": frame}, {"request_id": job.request_id, "seed": str(job.seed)}),
                        media_type=FRAMES_MEDIA_TYPE, headers=headers)
    data = {"generated_frame": b64encode(encode_png(frame)),
            "metadata": {"processing_time": elapsed, "request_id": job.request_id, "seed": job.seed,
                         "height": frame.shape[0], "width": frame.shape[1]}}
    return JSONResponse({"status": "success", "data": data, "error": None})


class InterpolateAPI:
    """Edge stage: validate the blob and options, sample and decode, answer with the frame."""

    async def decode_request(self, request: Request, model: Eden) -> InterpolateJob:
        started = time.perf_counter()
        kind = media_type(request)
        answer = response_format(request, ANSWER_TYPES, kind == BLOB_MEDIA_TYPE)
        if kind == JSON:
            try:
                req = InterpolateRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
                raise _param(ErrorCode.INVALID_REQUEST, f"the request does not match the schema: {where}") from None
            encoded = unpack_encoding(b64decode_field(req.enc_out, "enc_out"), frames=2)
            meta = req.metadata or {}
            sampling = req.sampling_config
            options = dict(difference=req.difference, seed=req.seed, vae_scaler=req.vae_scaler,
                           vae_shift=req.vae_shift, model_args=req.model_args, ph=meta.get("ph"),
                           pw=meta.get("pw"), num_steps=sampling.num_steps if sampling else None,
                           method=sampling.method if sampling else None)
        elif kind == BLOB_MEDIA_TYPE:
            encoded = unpack_encoding(await request.body(), frames=2)
            q = request.query_params
            options = dict(difference=query_value(request, "difference", float),
                           seed=query_value(request, "seed", int), vae_scaler=query_value(request, "vae_scaler", float),
                           vae_shift=query_value(request, "vae_shift", float),
                           num_steps=query_value(request, "num_steps", int), method=q.get("method"))
        else:
            raise unsupported(request, INTERPOLATE_TYPES)
        difference, seed, sampler = check_options(model, encoded, **options)
        return InterpolateJob(encoded, difference, seed, sampler, options["vae_scaler"], options["vae_shift"],
                              request.state.request_id, answer, started)

    def predict(self, model: Eden, job: InterpolateJob) -> np.ndarray:
        return generate(model, job)

    def encode_response(self, result: np.ndarray, job: InterpolateJob) -> Response:
        return frame_response(result, job)


router = APIRouter(prefix="/api/v1", tags=["edge"])
INTERPOLATE_API = InterpolateAPI()

_interpolate_body = {"requestBody": {"required": True, "content": {
    JSON: {"schema": InterpolateRequest.model_json_schema()},
    BLOB_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary", "description":
                                 "the enc_out blob; options as query parameters seed, num_steps, method, "
                                 "difference, vae_scaler, vae_shift"}},
}}}


@router.post("/interpolate", response_model=Envelope[InterpolateData], openapi_extra=_interpolate_body,
             summary="Sample and decode the middle frame from an enc_out blob",
             description=f"`Accept: {PNG}` or `{FRAMES_MEDIA_TYPE}` (the default for a binary request) answers "
                         "with the frame itself instead of the JSON envelope.")
async def interpolate_route(request: Request, rt: Runtime) -> Response:
    return await serve(INTERPOLATE_API, request, rt)


def create_edge_app(settings: ServerSettings | None = None, model: Eden | None = None) -> FastAPI:
    """The edge app; with `model`, that model is used instead of loading one from the settings."""
    app = create_app(INTERPOLATE, "edensplit edge (EDEN sampler + decoder)", settings)
    app.state.runtime.model = model
    app.include_router(router)
    return app


app = create_edge_app()
