"""Reading request bodies, whatever the transport: JSON documents against their schema, and frames sent
as JSON (base64 PNG/JPEG), multipart uploads or a binary frames container. Shared by the cloud's
encoders and the edge's flow B; all of it runs on the thread pool (see `contract.run_stage`)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError
from python_multipart import parse_form

from edensplit.errors import EdenError, ErrorCode
from edensplit.servers.contract import JSON, MULTIPART, OperationInput
from edensplit.servers.schemas import EncodeFrameRequest, EncodeRequest, ImageSize, parse_body
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, unpack_frames
from edensplit.wire.images import b64decode_field, decode_image
from edensplit.wire.nesting import check_depth

PAIR = ("frame0", "frame1")
SINGLE = ("frame",)
FRAME_TYPES = (JSON, MULTIPART, FRAMES_MEDIA_TYPE)
# What reading frames can refuse (`read_frames`): the JSON schema or a multipart body, base64, images, containers
# (INVALID_BLOB, SHAPE_MISMATCH), sizes, and frames over the pixel budget.
FRAME_ERRORS = (ErrorCode.INVALID_REQUEST, ErrorCode.INVALID_BASE64, ErrorCode.INVALID_IMAGE,
                ErrorCode.FRAME_SIZE_MISMATCH, ErrorCode.INVALID_BLOB, ErrorCode.SHAPE_MISMATCH,
                ErrorCode.PAYLOAD_TOO_LARGE)
M = TypeVar("M", bound=BaseModel)
IMAGE_SIZE = TypeAdapter(ImageSize | None)  # [H, W], as the JSON bodies' `image_size`


def parse_document(model: type[M], inp: OperationInput) -> M:
    """The JSON request (already parsed, or the body) validated against `model`; INVALID_REQUEST if not."""
    if inp.document is not None:
        return parse_body(model, dict(inp.document))
    check_depth(inp.body, "the JSON body")
    return parse_body(model, inp.body)


@dataclass
class Frames:
    """uint8 RGB frames [H, W, 3] in the order asked for, and the request's metadata."""

    frames: list[np.ndarray]
    metadata: dict[str, Any]


def read_frames(inp: OperationInput, names: tuple[str, ...], max_pixels: int | None = None) -> Frames:
    """Frames `names` from a JSON, multipart or frames-container request, checked to share one size;
    `max_pixels` bounds them all together, checked from their headers before any is decoded."""
    if inp.content_type == JSON:
        req = parse_document(EncodeRequest if names == PAIR else EncodeFrameRequest, inp)
        fields = req.model_dump()
        frames = decode_images({n: b64decode_field(fields[n], n) for n in names}, max_pixels)
        check_frames(frames, req.image_size)
        return Frames(frames, req.metadata or {})
    if inp.content_type == MULTIPART:
        files, fields = parse_multipart(inp.body, inp.content_type_header)
        missing = [n for n in names if n not in files]
        if missing:
            raise EdenError(f"multipart upload needs a file part named {missing[0]!r}", code=ErrorCode.INVALID_REQUEST)
        frames = decode_images({n: files[n] for n in names}, max_pixels)
        metadata = _json_object(fields.get("metadata"))
        try:
            image_size = IMAGE_SIZE.validate_python(metadata.pop("image_size", None))
        except ValidationError:
            raise EdenError("the multipart 'metadata' field's image_size must be [H, W], two integers",
                            code=ErrorCode.INVALID_REQUEST) from None
        check_frames(frames, image_size)
        return Frames(frames, metadata)
    if inp.content_type == FRAMES_MEDIA_TYPE:
        unpacked, metadata = unpack_frames(inp.body, names, max_pixels)
        frames = [unpacked[n] for n in names]
        check_frames(frames)
        return Frames(frames, dict(metadata))
    raise EdenError(f"unsupported content type {inp.content_type!r}", code=ErrorCode.UNSUPPORTED_MEDIA_TYPE)


def decode_images(images: dict[str, bytes], max_pixels: int | None) -> list[np.ndarray]:
    """Decode images in order, each within what is left of the request's pixel budget."""
    frames = []
    for name, data in images.items():
        frames.append(decode_image(data, name, max_pixels))
        if max_pixels is not None:
            max_pixels -= frames[-1].shape[0] * frames[-1].shape[1]
    return frames


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


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """({file part: bytes}, {field: text}) of a multipart/form-data body."""
    files: dict[str, bytes] = {}
    fields: dict[str, str] = {}

    def on_field(part: Any) -> None:
        fields[(part.field_name or b"").decode(errors="replace")] = (part.value or b"").decode(errors="replace")

    def on_file(part: Any) -> None:
        part.file_object.seek(0)
        files[(part.field_name or b"").decode(errors="replace")] = part.file_object.read()

    headers = {"Content-Type": content_type.encode("latin-1"), "Content-Length": str(len(body)).encode()}
    try:
        parse_form(headers, io.BytesIO(body), on_field, on_file)
    except Exception as exc:  # python-multipart raises its own error types, and ValueError for a bad header
        raise EdenError(f"the multipart body cannot be read: {exc}", code=ErrorCode.INVALID_REQUEST) from None
    return files, fields


def _json_object(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    check_depth(raw, "the multipart 'metadata' field")
    try:
        value = json.loads(raw)
    except ValueError:  # not JSON, or an integer too long to convert
        value = None
    if not isinstance(value, dict):
        raise EdenError("the multipart 'metadata' field must be a JSON object", code=ErrorCode.INVALID_REQUEST)
    return value
