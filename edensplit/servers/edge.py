"""The edge server: encodings in, the generated middle frame out (DiT sampling + decoder).

- POST /api/v1/interpolate: a pair's enc_out blob (the user's JSON, or the blob as a binary body
  with options as query parameters) -> the frame (JSON envelope with a base64 PNG, a PNG, or a
  binary frames container).
- POST /api/v1/sessions/{id}/frames/{k}: frame-once video sessions: one frame's encoding in; the
  edge keeps it and interpolates (k-1, k) from its cache.
- POST /api/v1/interpolate_frames: flow B, the edge as proxy: raw frames in, the edge calls the
  cloud itself, only the generated frame goes back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from edensplit.client.http import CloudClient
from edensplit.errors import EdenError, ErrorCode
from edensplit.model import (
    INTERPOLATE,
    Eden,
    FrameEncoding,
    Sampler,
    frame_difference,
    interpolate,
    make_noise,
    to_uint8,
)
from edensplit.model.config import IGNORED_MODEL_ARGS
from edensplit.model.seeds import MAX_SEED
from edensplit.servers.app import Runtime, create_app
from edensplit.servers.cloud import (
    PAIR,
    SINGLE,
    check_frames,
    frames_body,
    frames_from_container,
    frames_from_json,
    read_frames_request,
)
from edensplit.servers.runtime import ModelRuntime
from edensplit.servers.schemas import (
    EncodeRequest,
    Envelope,
    InterpolateData,
    InterpolateOptions,
    InterpolateRequest,
    SessionFrameRequest,
    inline_schema,
    parse_body,
)
from edensplit.servers.sessions import SessionStore
from edensplit.servers.stage import JSON, media_type, response_format, serve, unsupported
from edensplit.servers.ws import WsReply, WsRequest, serve_websocket
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
from edensplit.wire.container import read_header
from edensplit.wire.frames import FORMAT as FRAMES_FORMAT

PNG = "image/png"
ANSWER_TYPES = (FRAMES_MEDIA_TYPE, PNG)
SESSION_WAIT_S = 60.0  # how long a request waits for its predecessor frame while another request brings it


def _invalid(message: str, code: ErrorCode = ErrorCode.INVALID_PARAMETER) -> EdenError:
    return EdenError(message, code=code)


# -- options --------------------------------------------------------------------------------------

@dataclass
class Options:
    """A request's sampling options, before validation against the model and the encodings."""

    difference: float | None = None
    seed: int | None = None
    num_steps: int | None = None
    method: str | None = None
    vae_scaler: float | None = None
    vae_shift: float | None = None
    model_args: dict[str, Any] | None = None
    ph: int | None = None
    pw: int | None = None


def _cast(value: Any, kind: type, name: str) -> Any:
    if value is None:
        return None
    if kind is str:
        return str(value)
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):
        raise _invalid(f"{name}={value!r} is not a valid {kind.__name__}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise _invalid(f"{name}={value!r} is not a valid {kind.__name__}") from None


FLAT_OPTIONS = {"difference": float, "seed": int, "num_steps": int, "method": str, "vae_scaler": float,
                "vae_shift": float}


def options_from_flat(values: Mapping[str, Any]) -> Options:
    """Options from query parameters or a binary message header (strings or JSON scalars)."""
    return Options(**{k: _cast(values.get(k), kind, k) for k, kind in FLAT_OPTIONS.items()})


def options_from_json(req: InterpolateOptions) -> Options:
    """Options from the user's JSON shape (sampling_config, metadata.ph/pw, model_args)."""
    meta, sampling = req.metadata or {}, req.sampling_config
    return Options(difference=req.difference, seed=req.seed, vae_scaler=req.vae_scaler, vae_shift=req.vae_shift,
                   num_steps=sampling.num_steps if sampling else None, method=sampling.method if sampling else None,
                   model_args=getattr(req, "model_args", None), ph=_cast(meta.get("ph"), int, "metadata.ph"),
                   pw=_cast(meta.get("pw"), int, "metadata.pw"))


def check_encoding(model: Eden, enc: FrameEncoding) -> None:
    if enc.cond_dit.shape[-1] != model.args.hidden_dim:
        raise _invalid(f"enc_out has hidden size {enc.cond_dit.shape[-1]}, the loaded model "
                       f"{model.args.hidden_dim}: cloud and edge run different models", ErrorCode.MODEL_MISMATCH)


@dataclass
class InterpolateJob:
    """A validated request: two frames' encodings and everything the sampler needs."""

    enc0: FrameEncoding
    enc1: FrameEncoding
    difference: float
    seed: int
    sampler: Sampler
    vae_scaler: float | None
    vae_shift: float | None
    request_id: str
    answer: str = JSON
    started: float = field(default_factory=time.perf_counter)


def make_job(model: Eden, enc0: FrameEncoding, enc1: FrameEncoding, opts: Options, default_difference: float | None,
             request_id: str, answer: str = JSON) -> InterpolateJob:
    """Validate options against the loaded model and the encodings; refuse with a specific code."""
    if opts.model_args:
        ours = model.args.as_dict()
        bad = [f"{k}: request {v!r}, server {ours.get(k)!r}" for k, v in opts.model_args.items()
               if k not in IGNORED_MODEL_ARGS and (k not in ours or ours[k] != v)]
        if bad:
            raise _invalid("model_args do not match the loaded model: " + "; ".join(bad), ErrorCode.MODEL_MISMATCH)
    check_encoding(model, enc0)
    check_encoding(model, enc1)
    if enc0.geometry != enc1.geometry:
        raise _invalid(f"the two frames' encodings differ in size ({enc0.geometry.height}x{enc0.geometry.width} vs "
                       f"{enc1.geometry.height}x{enc1.geometry.width})", ErrorCode.SHAPE_MISMATCH)
    grid = enc0.geometry.grid
    if (opts.ph is not None and opts.ph != grid[0]) or (opts.pw is not None and opts.pw != grid[1]):
        raise _invalid(f"metadata ph/pw ({opts.ph}, {opts.pw}) do not match the enc_out grid {grid}",
                       ErrorCode.SHAPE_MISMATCH)
    difference = default_difference if opts.difference is None else opts.difference
    if difference is None or not math.isfinite(difference) or abs(difference) > 1:
        raise _invalid(f"difference must be the raw mean cosine similarity in [-1, 1], got {difference!r}")
    seed = 0 if opts.seed is None else opts.seed
    if not 0 <= seed <= MAX_SEED:
        raise _invalid(f"seed must be an integer in [0, 2**64), got {seed!r}")
    for name in ("vae_scaler", "vae_shift"):
        value = getattr(opts, name)
        if value is not None and not math.isfinite(value):
            raise _invalid(f"{name} must be finite, got {value!r}")
    if opts.vae_scaler is not None and opts.vae_scaler <= 0:
        raise _invalid(f"vae_scaler must be > 0, got {opts.vae_scaler!r}")
    sampler = Sampler(2 if opts.num_steps is None else opts.num_steps, opts.method or "euler")
    return InterpolateJob(enc0, enc1, float(difference), seed, sampler, opts.vae_scaler, opts.vae_shift,
                          request_id, answer)


def pair_job(model: Eden, encoded: EncodedFrames, opts: Options, request_id: str, answer: str = JSON) -> InterpolateJob:
    enc = encoded.encoding
    return make_job(model, enc[0], enc[1], opts, encoded.difference, request_id, answer)


# -- the model work and the answer ----------------------------------------------------------------

def generate(model: Eden, jobs: Sequence[InterpolateJob]) -> list[np.ndarray]:
    """The edge's model work for B pairs of one batch key: noise from each seed, sample, decode -> uint8 frames."""
    first = jobs[0]
    noise = torch.cat([make_noise(j.seed, j.enc0.geometry.latent_tokens, model.args.latent_dim) for j in jobs])
    try:
        out = interpolate(model, FrameEncoding.cat([j.enc0 for j in jobs]), FrameEncoding.cat([j.enc1 for j in jobs]),
                          torch.tensor([j.difference for j in jobs]), noise, first.sampler,
                          vae_scaler=first.vae_scaler, vae_shift=first.vae_shift)
    except EdenError:
        raise
    except Exception as exc:
        raise EdenError(f"sampling failed: {type(exc).__name__}: {exc}", code=ErrorCode.MODEL_ERROR) from exc
    return list(to_uint8(out))


def batch_key(job: InterpolateJob) -> Hashable:
    """Pairs that may share a model call: same size, sampler, VAE constants and wire precision."""
    return job.enc0.geometry, job.sampler, job.vae_scaler, job.vae_shift, job.enc0.cond_dit.dtype


def frame_metadata(frame: np.ndarray, job: InterpolateJob) -> dict[str, Any]:
    return {"processing_time": round(time.perf_counter() - job.started, 6), "request_id": job.request_id,
            "seed": job.seed, "height": frame.shape[0], "width": frame.shape[1]}


def frame_response(frame: np.ndarray, job: InterpolateJob) -> Response:
    """The generated frame in the format the caller asked for."""
    meta = frame_metadata(frame, job)
    headers = {"X-Processing-Time": str(meta["processing_time"])}
    if job.answer == PNG:
        return Response(encode_png(frame), media_type=PNG, headers=headers)
    if job.answer == FRAMES_MEDIA_TYPE:
        return Response(pack_frames({"frame": frame}, {"request_id": job.request_id, "seed": str(job.seed)}),
                        media_type=FRAMES_MEDIA_TYPE, headers=headers)
    data = {"generated_frame": b64encode(encode_png(frame)), "metadata": meta}
    return JSONResponse({"status": "success", "data": data, "error": None})


class EdgeStage:
    """What every edge API shares: predict = generate (batchable), encode_response = the frame."""

    def predict(self, model: Eden, jobs: Sequence[InterpolateJob]) -> list[np.ndarray]:
        return generate(model, jobs)

    def batch_key(self, job: InterpolateJob) -> Hashable:
        return batch_key(job)

    def encode_response(self, result: np.ndarray, job: InterpolateJob) -> Response:
        return frame_response(result, job)


class InterpolateAPI(EdgeStage):
    """POST /api/v1/interpolate: a pair's blob in."""

    async def decode_request(self, request: Request, model: Eden) -> InterpolateJob:
        kind = media_type(request)
        answer = response_format(request, ANSWER_TYPES, kind == BLOB_MEDIA_TYPE)
        if kind == JSON:
            req = parse_body(InterpolateRequest, await request.body())
            blob, opts = b64decode_field(req.enc_out, "enc_out"), options_from_json(req)
        elif kind == BLOB_MEDIA_TYPE:
            blob, opts = await request.body(), options_from_flat(request.query_params)
        else:
            raise unsupported(request, (JSON, BLOB_MEDIA_TYPE))
        encoded = await run_in_threadpool(unpack_encoding, blob, frames=2)
        return pair_job(model, encoded, opts, request.state.request_id, answer)


class SessionFrameAPI(EdgeStage):
    """POST /api/v1/sessions/{id}/frames/{k}: store frame k's encoding; interpolate (k-1, k) when asked."""

    async def decode_request(self, request: Request, model: Eden) -> InterpolateJob | None:
        session_id, index = request.path_params["session_id"], int(request.path_params["index"])
        kind = media_type(request)
        answer = response_format(request, ANSWER_TYPES, kind in (BLOB_MEDIA_TYPE, FRAMES_MEDIA_TYPE))
        blob = pixels = None
        if kind == JSON:
            req = parse_body(SessionFrameRequest, await request.body())
            blob, pixels = await session_input(req)
            opts, wanted = options_from_json(req), req.interpolate
        elif kind in (BLOB_MEDIA_TYPE, FRAMES_MEDIA_TYPE):
            body = await request.body()
            if kind == BLOB_MEDIA_TYPE:
                blob = body
            else:
                pixels = frames_from_container(body, SINGLE)[0][0]
            opts = options_from_flat(request.query_params)
            wanted = _cast(request.query_params.get("interpolate"), str, "interpolate")
            wanted = None if wanted is None else wanted.lower() in ("1", "true", "yes")
        else:
            raise unsupported(request, (JSON, BLOB_MEDIA_TYPE, FRAMES_MEDIA_TYPE))
        return await session_job(model, request.app, session_id, index, opts, wanted, request.state.request_id,
                                 answer, blob=blob, pixels=pixels)


async def session_input(req: SessionFrameRequest) -> tuple[bytes | None, np.ndarray | None]:
    """A JSON session frame carries an encoding (flow A) or the frame itself (flow B): exactly one."""
    if (req.enc_out is None) == (req.frame is None):
        raise _invalid("a session frame carries exactly one of 'enc_out' (flow A) and 'frame' (flow B)",
                       ErrorCode.INVALID_REQUEST)
    if req.enc_out is not None:
        return b64decode_field(req.enc_out, "enc_out"), None
    return None, (await run_in_threadpool(frames_from_json, {"frame": req.frame}, SINGLE))[0]


async def session_job(model: Eden, app: FastAPI, session_id: str, index: int, opts: Options, wanted: bool | None,
                      request_id: str, answer: str, *, blob: bytes | None = None,
                      pixels: np.ndarray | None = None) -> InterpolateJob | None:
    """Store frame `index` (its encoding, or flow B: its pixels, encoded at the cloud); return the job
    interpolating (index-1, index), or None for a store-only frame."""
    if not session_id or len(session_id) > 128 or index < 0:
        raise _invalid("a session id of 1-128 characters and a frame index >= 0 are required")
    sessions: SessionStore = app.state.sessions
    async with sessions.incoming(session_id, index):
        if pixels is not None:
            encoding = (await encode_at_cloud(app, [pixels], request_id)).encoding
        else:
            encoding = (await run_in_threadpool(unpack_encoding, blob, frames=1)).encoding
        check_encoding(model, encoding)
        await sessions.put(session_id, index, encoding, pixels)
    if not (index > 0 if wanted is None else wanted):
        return None
    if index == 0:
        raise _invalid("frame 0 has no predecessor to interpolate from")
    needs_difference = _invalid("a session frame needs the pair's raw 'difference' (flow A: the client holds both "
                                "frames' pixels; flow B sends the frames themselves)")
    if opts.difference is None and pixels is None:
        raise needs_difference
    previous = await sessions.get(session_id, index - 1, SESSION_WAIT_S)
    if opts.difference is None:
        if previous.pixels is None:
            raise needs_difference
        opts.difference = float((await run_in_threadpool(frame_difference, previous.pixels, pixels))[0])
    return make_job(model, previous.encoding, encoding, opts, None, request_id, answer)


class FlowBAPI(EdgeStage):
    """POST /api/v1/interpolate_frames: raw frames in; the edge asks the cloud for the encoding itself."""

    async def decode_request(self, request: Request, model: Eden) -> InterpolateJob:
        kind = media_type(request)
        answer = response_format(request, ANSWER_TYPES, kind == FRAMES_MEDIA_TYPE)
        frames, _ = await read_frames_request(request, PAIR)
        opts = options_from_flat(request.query_params)
        return await proxy_job(request.app, model, frames, opts, request.state.request_id, answer)


async def encode_at_cloud(app: FastAPI, frames: list[np.ndarray], request_id: str) -> EncodedFrames:
    """Flow B: the edge asks the cloud (binary, float32) for a pair's or one frame's encoding."""
    cloud: CloudClient = app.state.cloud_client
    call = cloud.encode if len(frames) == 2 else cloud.encode_frame
    try:
        encoded = await run_in_threadpool(lambda: call(*frames, request_id=request_id))
    except EdenError as exc:
        raise EdenError(f"the cloud failed to encode: {exc.message}", code=ErrorCode.UPSTREAM_ERROR,
                        details={"cloud_code": str(exc.code)}) from None
    return await run_in_threadpool(unpack_encoding, encoded.raw, frames=len(frames))


async def proxy_job(app: FastAPI, model: Eden, frames: list[np.ndarray], opts: Options, request_id: str,
                    answer: str) -> InterpolateJob:
    """Flow B, a pair: encode it at the cloud and build the interpolation job."""
    return pair_job(model, await encode_at_cloud(app, frames, request_id), opts, request_id, answer)


# -- routes ---------------------------------------------------------------------------------------

EDGE_STAGE = EdgeStage()
router = APIRouter(prefix="/api/v1", tags=["edge"])
ws_router = APIRouter()
INTERPOLATE_API = InterpolateAPI()
SESSION_API = SessionFrameAPI()
FLOW_B_API = FlowBAPI()

_OPTIONS_DOC = "options as query parameters: seed, num_steps, method, difference, vae_scaler, vae_shift"
_interpolate_body = {"requestBody": {"required": True, "content": {
    JSON: {"schema": inline_schema(InterpolateRequest)},
    BLOB_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary",
                                 "description": f"the enc_out blob of a pair; {_OPTIONS_DOC}"}},
}}}
_session_body = {"requestBody": {"required": True, "content": {
    JSON: {"schema": inline_schema(SessionFrameRequest)},
    BLOB_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary", "description":
                                 f"flow A: one frame's enc_out blob (/encode_frame); {_OPTIONS_DOC}, interpolate"}},
    FRAMES_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary", "description":
                                   "flow B: a frames container with the frame itself ('frame'); the edge has the cloud "
                                   f"encode it and computes the difference; {_OPTIONS_DOC}, interpolate"}},
}}}
_ANSWERS = (f"`Accept: {PNG}` or `{FRAMES_MEDIA_TYPE}` (the default for a binary request) answers with the frame "
            "itself instead of the JSON envelope.")


@router.post("/interpolate", response_model=Envelope[InterpolateData], openapi_extra=_interpolate_body,
             summary="Sample and decode the middle frame from a pair's enc_out blob", description=_ANSWERS)
async def interpolate_route(request: Request, rt: Runtime) -> Response:
    return await serve(INTERPOLATE_API, request, rt)


@router.post("/sessions/{session_id}/frames/{index}", response_model=Envelope[InterpolateData],
             openapi_extra=_session_body, summary="Frame-once video session: send frame k's encoding once",
             description="Stores frame k's encoding; for k > 0 interpolates (k-1, k) with the given raw `difference` "
                         "and `seed` and answers with the frame (409 SESSION_NOT_FOUND if the edge no longer holds "
                         f"frame k-1: send it again with interpolate=false). {_ANSWERS}")
async def session_frame_route(session_id: str, index: int, request: Request, rt: Runtime) -> Response:
    async with rt.admission():
        job = await SESSION_API.decode_request(request, rt.require_model())
        if job is None:
            return JSONResponse({"status": "success", "data": {"session_id": session_id, "stored": index},
                                 "error": None})
        frame = await rt.predict(SESSION_API, job)
        return await run_in_threadpool(SESSION_API.encode_response, frame, job)


@router.delete("/sessions/{session_id}", summary="Forget a video session")
async def drop_session(session_id: str, request: Request) -> dict[str, Any]:
    return {"status": "success", "data": {"dropped": request.app.state.sessions.drop(session_id)}, "error": None}


@router.post("/interpolate_frames", response_model=Envelope[InterpolateData],
             openapi_extra=frames_body(EncodeRequest, PAIR),
             summary="Flow B: raw frames in, the edge calls the cloud itself",
             description=f"The same inputs as the cloud's /encode; {_OPTIONS_DOC}. {_ANSWERS}")
async def interpolate_frames_route(request: Request, rt: Runtime) -> Response:
    return await serve(FLOW_B_API, request, rt)


# -- WebSocket ------------------------------------------------------------------------------------

def frame_reply(frame: np.ndarray, job: InterpolateJob, binary: bool) -> WsReply:
    meta = frame_metadata(frame, job)
    if binary:
        return WsReply(meta, data=pack_frames({"frame": frame}))
    return WsReply(meta, payload={"generated_frame": b64encode(encode_png(frame))})


async def ws_interpolate(req: WsRequest, app: FastAPI, rt: ModelRuntime) -> WsReply:
    model = rt.require_model()
    if req.binary:
        blob, opts = req.payload, options_from_flat(req.header)
    else:
        parsed = parse_body(InterpolateRequest, req.body)
        blob, opts = b64decode_field(parsed.enc_out, "enc_out"), options_from_json(parsed)
    encoded = await run_in_threadpool(unpack_encoding, blob, frames=2)
    job = pair_job(model, encoded, opts, req.request_id)
    frame = await rt.predict(EDGE_STAGE, job)
    return await run_in_threadpool(frame_reply, frame, job, req.binary)


async def ws_session_frame(req: WsRequest, app: FastAPI, rt: ModelRuntime) -> WsReply:
    model, body = rt.require_model(), req.body
    session_id, index = _cast(body.get("session_id"), str, "session_id"), _cast(body.get("index"), int, "index")
    if session_id is None or index is None:
        raise _invalid("a session_frame message needs session_id and index", ErrorCode.INVALID_REQUEST)
    blob = pixels = None
    if req.binary:  # the payload says what it is: a frames container (flow B) or an enc_out blob (flow A)
        if read_header(req.payload, "payload")[1].get("format") == FRAMES_FORMAT:
            pixels = frames_from_container(req.payload, SINGLE)[0][0]
        else:
            blob = req.payload
        opts, wanted = options_from_flat(req.header), req.header.get("interpolate")
    else:
        parsed = parse_body(SessionFrameRequest, body)
        blob, pixels = await session_input(parsed)
        opts, wanted = options_from_json(parsed), parsed.interpolate
    job = await session_job(model, app, session_id, index, opts, wanted, req.request_id, JSON, blob=blob,
                            pixels=pixels)
    if job is None:
        return WsReply({"session_id": session_id, "stored": index, "request_id": req.request_id})
    frame = await rt.predict(EDGE_STAGE, job)
    return await run_in_threadpool(frame_reply, frame, job, req.binary)


async def ws_interpolate_frames(req: WsRequest, app: FastAPI, rt: ModelRuntime) -> WsReply:
    model = rt.require_model()
    if req.binary:
        frames, _ = frames_from_container(req.payload, PAIR)
        opts = options_from_flat(req.header)
    else:
        frames = await run_in_threadpool(frames_from_json, req.body, PAIR)
        opts = options_from_json(parse_body(InterpolateOptions, req.body))
    check_frames(frames)
    job = await proxy_job(app, model, frames, opts, req.request_id, JSON)
    frame = await rt.predict(EDGE_STAGE, job)
    return await run_in_threadpool(frame_reply, frame, job, req.binary)


EDGE_WS_HANDLERS = {"interpolate": ws_interpolate, "session_frame": ws_session_frame,
                    "interpolate_frames": ws_interpolate_frames}


@ws_router.websocket("/ws/interpolate")
async def ws_interpolate_route(websocket: WebSocket) -> None:
    """interpolate, session_frame (frame-once) and interpolate_frames (flow B) messages; see docs/protocol.md."""
    await serve_websocket(websocket, EDGE_WS_HANDLERS)


def create_edge_app(settings: ServerSettings | None = None, model: Eden | None = None) -> FastAPI:
    """The edge app; with `model`, that model is used instead of loading one from the settings."""
    app = create_app(INTERPOLATE, "edensplit edge (EDEN sampler + decoder)", settings)
    settings = app.state.settings
    app.state.runtime.model = model
    app.state.sessions = SessionStore(settings.session_ttl_s, settings.max_sessions)
    app.state.cloud_client = CloudClient(settings.cloud_server_url, payload="binary")  # flow B
    app.include_router(router)
    app.include_router(ws_router)
    return app


app = create_edge_app()
