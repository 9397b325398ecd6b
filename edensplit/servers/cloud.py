"""The cloud server: frames in, the conditioning encoder's `enc_out` blob out.

POST /api/v1/encode takes two frames as JSON (base64 PNG/JPEG), multipart uploads, or one binary
frames container, and answers with a JSON envelope (base64 blob) or the blob itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from edensplit.errors import EdenError, ErrorCode
from edensplit.model import ENCODE, Eden, encode_frames, frame_difference
from edensplit.servers.app import Runtime, create_app
from edensplit.servers.runtime import ModelRuntime
from edensplit.servers.schemas import EncodeData, EncodeFrameRequest, EncodeRequest, Envelope, inline_schema, parse_body
from edensplit.servers.stage import (
    JSON,
    MULTIPART,
    media_type,
    query_value,
    response_format,
    serve,
    unsupported,
)
from edensplit.servers.ws import Handler, WsReply, WsRequest, serve_websocket
from edensplit.settings import ServerSettings
from edensplit.wire import (
    BLOB_MEDIA_TYPE,
    FRAMES_MEDIA_TYPE,
    WIRE_DTYPES,
    b64decode_field,
    b64encode,
    decode_image,
    pack_encoding,
    unpack_frames,
)

ENCODE_TYPES = (JSON, MULTIPART, FRAMES_MEDIA_TYPE)


def check_frames(frames: list[np.ndarray], image_size: Any = None) -> None:
    """All frames the same size, and that size the declared `image_size` [H, W] if one was sent."""
    frame0, frame1 = frames[0], frames[-1]
    if frame0.shape != frame1.shape:
        raise EdenError(f"frame0 is {frame0.shape[1]}x{frame0.shape[0]} but frame1 is "
                        f"{frame1.shape[1]}x{frame1.shape[0]} (width x height); both must be the same size",
                        code=ErrorCode.FRAME_SIZE_MISMATCH)
    if image_size is not None and tuple(image_size) != frame0.shape[:2]:
        raise EdenError(f"image_size {list(image_size)} does not match the frames' [H, W] {list(frame0.shape[:2])}",
                        code=ErrorCode.FRAME_SIZE_MISMATCH)


PAIR = ("frame0", "frame1")
SINGLE = ("frame",)


def frames_from_json(payload: dict[str, Any], names: tuple[str, ...]) -> list[np.ndarray]:
    """Decode base64 PNG/JPEG fields `names` of a JSON object (the JSON API and WS JSON messages)."""
    missing = [n for n in names if not isinstance(payload.get(n), str)]
    if missing:
        raise EdenError(f"missing base64 image field(s): {', '.join(missing)}", code=ErrorCode.INVALID_REQUEST)
    return [decode_image(b64decode_field(payload[n], n), n) for n in names]


def frames_from_container(data: bytes, names: tuple[str, ...]) -> tuple[list[np.ndarray], dict[str, str]]:
    """Frames `names` from a binary frames container (the binary fast path and WS binary messages)."""
    frames, metadata = unpack_frames(data, names)
    return [frames[n] for n in names], dict(metadata)


async def read_frames_request(request: Request, names: tuple[str, ...] = PAIR) -> tuple[list[np.ndarray], dict]:
    """uint8 RGB frames `names` and the metadata from a JSON, multipart or binary frames request."""
    kind = media_type(request)
    if kind == JSON:
        body = await request.body()
        req = parse_body(EncodeRequest if names == PAIR else EncodeFrameRequest, body)
        frames = await run_in_threadpool(frames_from_json, req.model_dump(), names)
        check_frames(frames, req.image_size)
        return frames, req.metadata or {}
    if kind == MULTIPART:
        form = await request.form()
        files = {}
        for name in names:
            part = form.get(name)
            if not isinstance(part, UploadFile):
                raise EdenError(f"multipart upload needs a file part named {name!r}", code=ErrorCode.INVALID_REQUEST)
            files[name] = await part.read()
        frames = await run_in_threadpool(lambda: [decode_image(files[n], n) for n in names])
        metadata = _json_field(form.get("metadata"))
        check_frames(frames, metadata.pop("image_size", None))
        return frames, metadata
    if kind == FRAMES_MEDIA_TYPE:
        frames, metadata = frames_from_container(await request.body(), names)
        check_frames(frames)
        return frames, metadata
    raise unsupported(request, ENCODE_TYPES)


def _json_field(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw if isinstance(raw, str) else "")
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise EdenError("the multipart 'metadata' field must be a JSON object", code=ErrorCode.INVALID_REQUEST)
    return value


@dataclass
class EncodeJob:
    frames: np.ndarray  # [F, H, W, 3] uint8: a pair (F = 2) or one video frame (F = 1)
    wire_dtype: str
    request_id: str
    answer: str = JSON  # JSON or BLOB_MEDIA_TYPE
    started: float = field(default_factory=time.perf_counter)


@dataclass
class EncodeResult:
    blob: bytes
    grid: tuple[int, int]
    difference: float | None  # for a pair only


def check_wire_dtype(wire_dtype: Any) -> str:
    if wire_dtype not in WIRE_DTYPES:
        raise EdenError(f"wire_dtype {wire_dtype!r} is not one of {', '.join(WIRE_DTYPES)}",
                        code=ErrorCode.INVALID_PARAMETER)
    return wire_dtype


def encode_job(model: Eden, job: EncodeJob) -> EncodeResult:
    """The cloud's model work: encode F frames (and a pair's difference) into one enc_out blob."""
    try:
        enc = encode_frames(model, job.frames)
        difference = float(frame_difference(job.frames[0], job.frames[1])[0]) if len(job.frames) == 2 else None
    except EdenError:
        raise
    except Exception as exc:
        raise EdenError(f"the encoder failed: {type(exc).__name__}: {exc}", code=ErrorCode.ENCODE_ERROR) from exc
    blob = pack_encoding(enc, difference, job.wire_dtype, extra={"request_id": job.request_id})
    return EncodeResult(blob, enc.geometry.grid, difference)


def encode_metadata(result: EncodeResult, job: EncodeJob) -> dict[str, Any]:
    height, width = job.frames.shape[1:3]
    meta = {"ph": result.grid[0], "pw": result.grid[1], "height": height, "width": width,
            "wire_dtype": job.wire_dtype, "enc_out_size": len(result.blob),
            "processing_time": round(time.perf_counter() - job.started, 6), "request_id": job.request_id}
    if result.difference is not None:
        meta["difference"] = result.difference
    return meta


class EncodeAPI:
    """Cloud stage: decode frames, run the encoder, answer with the enc_out blob (F = len(names))."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    async def decode_request(self, request: Request, model: Eden) -> EncodeJob:
        answer = response_format(request, (BLOB_MEDIA_TYPE,), media_type(request) == FRAMES_MEDIA_TYPE)
        wire_dtype = check_wire_dtype(query_value(request, "wire_dtype", str, "float32"))
        frames, _ = await read_frames_request(request, self.names)
        return EncodeJob(np.stack(frames), wire_dtype, request.state.request_id, answer)

    def predict(self, model: Eden, jobs: Sequence[EncodeJob]) -> list[EncodeResult]:
        return [encode_job(model, job) for job in jobs]

    def batch_key(self, job: EncodeJob) -> None:
        return None  # the encoder is one convolution per frame: nothing to gain

    def encode_response(self, result: EncodeResult, job: EncodeJob) -> Response:
        meta = encode_metadata(result, job)
        if job.answer == BLOB_MEDIA_TYPE:
            return Response(result.blob, media_type=BLOB_MEDIA_TYPE,
                            headers={"X-Processing-Time": str(meta["processing_time"])})
        data = {"enc_out": b64encode(result.blob), "enc_out_size": len(result.blob), "metadata": meta}
        return JSONResponse({"status": "success", "data": data, "error": None})


router = APIRouter(prefix="/api/v1", tags=["cloud"])
ENCODE_API = EncodeAPI(PAIR)
ENCODE_FRAME_API = EncodeAPI(SINGLE)

def frames_body(schema: type, names: tuple[str, ...]) -> dict[str, Any]:
    """The OpenAPI request body of a frames endpoint: JSON, multipart or a frames container."""
    files = {n: {"type": "string", "format": "binary"} for n in names}
    return {"requestBody": {"required": True, "content": {
        JSON: {"schema": inline_schema(schema)},
        MULTIPART: {"schema": {"type": "object", "required": list(names), "properties": {
            **files, "metadata": {"type": "string", "description": "JSON object; may carry image_size [H, W]"}}}},
        FRAMES_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary",
                                       "description": f"frames container with uint8 tensors {', '.join(names)}"}},
    }}}


@router.post("/encode", response_model=Envelope[EncodeData], openapi_extra=frames_body(EncodeRequest, PAIR),
             summary="Encode a frame pair into the enc_out blob",
             description="Query `wire_dtype` = float32 (exact, default), float16 or bfloat16. "
                         f"`Accept: {BLOB_MEDIA_TYPE}` (or a binary request) answers with the raw blob.")
async def encode(request: Request, rt: Runtime) -> Response:
    return await serve(ENCODE_API, request, rt)


@router.post("/encode_frame", response_model=Envelope[EncodeData],
             openapi_extra=frames_body(EncodeFrameRequest, SINGLE),
             summary="Encode one video frame (frame-once sessions)",
             description="Each frame of a video is encoded once; the blob holds one frame and no difference "
                         "(the client, which holds both frames, computes it). Same options as /encode.")
async def encode_frame(request: Request, rt: Runtime) -> Response:
    return await serve(ENCODE_FRAME_API, request, rt)


# -- WebSocket ------------------------------------------------------------------------------------

def ws_encoder(api: EncodeAPI) -> Handler:
    names = api.names

    async def handle(req: WsRequest, app: FastAPI, rt: ModelRuntime) -> WsReply:
        body = req.body
        wire_dtype = check_wire_dtype(body.get("wire_dtype", "float32"))
        if req.binary:
            frames, _ = frames_from_container(req.payload, names)
        else:
            frames = await run_in_threadpool(frames_from_json, body, names)
        check_frames(frames, body.get("image_size"))
        job = EncodeJob(np.stack(frames), wire_dtype, req.request_id)
        result = await rt.predict(api, job)
        meta = encode_metadata(result, job)
        if req.binary:
            return WsReply(meta, data=result.blob)
        return WsReply(meta, payload={"enc_out": await run_in_threadpool(b64encode, result.blob),
                                      "enc_out_size": len(result.blob)})

    return handle


CLOUD_WS_HANDLERS = {"encode": ws_encoder(ENCODE_API), "encode_frame": ws_encoder(ENCODE_FRAME_API)}
ws_router = APIRouter()


@ws_router.websocket("/ws/encode")
async def ws_encode_route(websocket: WebSocket) -> None:
    """encode (a pair) and encode_frame (one frame) messages; see docs/protocol.md."""
    await serve_websocket(websocket, CLOUD_WS_HANDLERS)


def create_cloud_app(settings: ServerSettings | None = None, model: Eden | None = None) -> FastAPI:
    """The cloud app; with `model`, that model is used instead of loading one from the settings."""
    app = create_app(ENCODE, "edensplit cloud (EDEN encoder)", settings)
    app.state.runtime.model = model
    app.include_router(router)
    app.include_router(ws_router)
    return app


app = create_cloud_app()
