"""The cloud server: frames in, the conditioning encoder's `enc_out` blob out.

POST /api/v1/encode takes two frames as JSON (base64 PNG/JPEG), multipart uploads, or one binary
frames container, and answers with a JSON envelope (base64 blob) or the blob itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from edensplit.errors import EdenError, ErrorCode
from edensplit.model import ENCODE, Eden, encode_frames, frame_difference
from edensplit.servers.app import Runtime, create_app
from edensplit.servers.schemas import EncodeData, EncodeRequest, Envelope
from edensplit.servers.stage import (
    JSON,
    MULTIPART,
    media_type,
    query_value,
    response_format,
    serve,
    unsupported,
)
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


def check_pair(frame0: np.ndarray, frame1: np.ndarray, image_size: Any = None) -> None:
    """Both frames the same size, and that size the declared `image_size` [H, W] if one was sent."""
    if frame0.shape != frame1.shape:
        raise EdenError(f"frame0 is {frame0.shape[1]}x{frame0.shape[0]} but frame1 is "
                        f"{frame1.shape[1]}x{frame1.shape[0]} (width x height); both must be the same size",
                        code=ErrorCode.FRAME_SIZE_MISMATCH)
    if image_size is not None and tuple(image_size) != frame0.shape[:2]:
        raise EdenError(f"image_size {list(image_size)} does not match the frames' [H, W] {list(frame0.shape[:2])}",
                        code=ErrorCode.FRAME_SIZE_MISMATCH)


async def read_frame_pair(request: Request) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Two uint8 RGB frames and the metadata from a JSON, multipart or binary frames request."""
    kind = media_type(request)
    if kind == JSON:
        body = await request.body()
        try:
            req = EncodeRequest.model_validate_json(body)
        except ValidationError as exc:
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            raise EdenError(f"the request does not match the schema: {where}",
                            code=ErrorCode.INVALID_REQUEST) from None

        def decode() -> tuple[np.ndarray, np.ndarray]:
            return (decode_image(b64decode_field(req.frame0, "frame0"), "frame0"),
                    decode_image(b64decode_field(req.frame1, "frame1"), "frame1"))

        frame0, frame1 = await run_in_threadpool(decode)
        check_pair(frame0, frame1, req.image_size)
        return frame0, frame1, req.metadata or {}
    if kind == MULTIPART:
        form = await request.form()
        files = {}
        for name in ("frame0", "frame1"):
            part = form.get(name)
            if not isinstance(part, UploadFile):
                raise EdenError(f"multipart upload needs a file part named {name!r}", code=ErrorCode.INVALID_REQUEST)
            files[name] = await part.read()
        frame0, frame1 = await run_in_threadpool(
            lambda: (decode_image(files["frame0"], "frame0"), decode_image(files["frame1"], "frame1")))
        metadata = _json_field(form.get("metadata"))
        check_pair(frame0, frame1, metadata.pop("image_size", None))
        return frame0, frame1, metadata
    if kind == FRAMES_MEDIA_TYPE:
        frames, metadata = unpack_frames(await request.body(), ("frame0", "frame1"))
        check_pair(frames["frame0"], frames["frame1"])
        return frames["frame0"], frames["frame1"], dict(metadata)
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
    frames: np.ndarray  # [2, H, W, 3] uint8
    wire_dtype: str
    request_id: str
    answer: str  # JSON or BLOB_MEDIA_TYPE
    started: float


@dataclass
class EncodeResult:
    blob: bytes
    grid: tuple[int, int]
    difference: float


class EncodeAPI:
    """Cloud stage: decode frames, run the encoder, answer with the enc_out blob."""

    async def decode_request(self, request: Request, model: Eden) -> EncodeJob:
        started = time.perf_counter()
        answer = response_format(request, (BLOB_MEDIA_TYPE,), media_type(request) == FRAMES_MEDIA_TYPE)
        wire_dtype = query_value(request, "wire_dtype", str, "float32")
        if wire_dtype not in WIRE_DTYPES:
            raise EdenError(f"wire_dtype {wire_dtype!r} is not one of {', '.join(WIRE_DTYPES)}",
                            code=ErrorCode.INVALID_PARAMETER)
        frame0, frame1, _ = await read_frame_pair(request)
        return EncodeJob(np.stack([frame0, frame1]), wire_dtype, request.state.request_id, answer, started)

    def predict(self, model: Eden, job: EncodeJob) -> EncodeResult:
        try:
            enc = encode_frames(model, job.frames)
            difference = float(frame_difference(job.frames[0], job.frames[1])[0])
        except EdenError:
            raise
        except Exception as exc:
            raise EdenError(f"the encoder failed: {type(exc).__name__}: {exc}", code=ErrorCode.ENCODE_ERROR) from exc
        blob = pack_encoding(enc, difference, job.wire_dtype, extra={"request_id": job.request_id})
        return EncodeResult(blob, enc.geometry.grid, difference)

    def encode_response(self, result: EncodeResult, job: EncodeJob) -> Response:
        elapsed = round(time.perf_counter() - job.started, 6)
        if job.answer == BLOB_MEDIA_TYPE:
            return Response(result.blob, media_type=BLOB_MEDIA_TYPE, headers={"X-Processing-Time": str(elapsed)})
        height, width = job.frames.shape[1:3]
        data = {"enc_out": b64encode(result.blob), "enc_out_size": len(result.blob),
                "metadata": {"ph": result.grid[0], "pw": result.grid[1], "height": height, "width": width,
                             "wire_dtype": job.wire_dtype, "difference": result.difference,
                             "processing_time": elapsed, "request_id": job.request_id}}
        return JSONResponse({"status": "success", "data": data, "error": None})


router = APIRouter(prefix="/api/v1", tags=["cloud"])
ENCODE_API = EncodeAPI()

_encode_body = {"requestBody": {"required": True, "content": {
    JSON: {"schema": EncodeRequest.model_json_schema()},
    MULTIPART: {"schema": {"type": "object", "required": ["frame0", "frame1"], "properties": {
        "frame0": {"type": "string", "format": "binary"}, "frame1": {"type": "string", "format": "binary"},
        "metadata": {"type": "string", "description": "JSON object; may carry image_size [H, W]"}}}},
    FRAMES_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary",
                                   "description": "frames container with uint8 tensors frame0, frame1"}},
}}}


@router.post("/encode", response_model=Envelope[EncodeData], openapi_extra=_encode_body,
             summary="Encode a frame pair into the enc_out blob",
             description="Query `wire_dtype` = float32 (exact, default), float16 or bfloat16. "
                         f"`Accept: {BLOB_MEDIA_TYPE}` (or a binary request) answers with the raw blob.")
async def encode(request: Request, rt: Runtime) -> Response:
    return await serve(ENCODE_API, request, rt)


def create_cloud_app(settings: ServerSettings | None = None, model: Eden | None = None) -> FastAPI:
    """The cloud app; with `model`, that model is used instead of loading one from the settings."""
    app = create_app(ENCODE, "edensplit cloud (EDEN encoder)", settings)
    app.state.runtime.model = model
    app.include_router(router)
    return app


app = create_cloud_app()
