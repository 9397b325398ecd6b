"""Request building and answer parsing, separate from how the bytes travel (HTTP or WebSocket).

One function per operation turns frames, blobs and `Options` into a transport-neutral `Call`, doing only
the work for the payload actually sent: a binary call packs a frames container or passes the blob as is
(no base64, no PNG); a JSON call builds the user's JSON document (no container packing). The transports
(`edensplit.client.http`, `edensplit.client.ws`) send a `Call` and hand back a normalised `Answer`, which
`blob_from` and `frame_from` read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from edensplit.errors import EdenError, ErrorCode
from edensplit.wire.blob import BLOB_MEDIA_TYPE, read_blob_header
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames, unpack_frames
from edensplit.wire.images import b64decode_field, b64encode, decode_image, encode_png
from edensplit.wire.options import Options
from edensplit.wire.shm import SHM_MEDIA_TYPE, Handle, take_segment

JSON = "application/json"
SESSION_HEADER = "X-Session-ID"
Payload = Literal["binary", "json"]
PAYLOADS = ("binary", "json")


@dataclass(frozen=True)
class EncodedBlob:
    """The cloud's answer: an enc_out blob (raw bytes, or the base64 text as received, passed on as is), or a
    shared-memory handle to it (a cloud on this host, `--shm`): good for one use, after which `renew` (when
    set) asks the cloud for the encoding again."""

    blob: bytes | None
    blob_b64: str | None
    grid: tuple[int, int]
    difference: float | None  # a pair's raw mean cosine similarity; None for one frame
    size: int  # bytes of the blob
    handle: Handle | None = None
    renew: Callable[[], EncodedBlob] | None = field(default=None, compare=False, repr=False)

    @property
    def raw(self) -> bytes:
        """The blob's bytes (decoded from base64 only if it came as JSON; a handle's segment is taken: once)."""
        if self.blob is not None:
            return self.blob
        if self.handle is not None:
            return bytes(take_segment(self.handle, None, BLOB_MEDIA_TYPE))
        return b64decode_field(self.blob_b64 or "", "enc_out")

    @property
    def b64(self) -> str:
        """The blob as base64 (encoded only if it came as bytes)."""
        return self.blob_b64 if self.blob_b64 is not None else b64encode(self.raw)

    @classmethod
    def from_bytes(cls, blob: bytes) -> EncodedBlob:
        """A binary answer: the grid and difference come from the blob's own header."""
        header = read_blob_header(blob)
        ph, pw = (int(v) for v in header["grid"].split(","))
        diff = header.get("difference")
        return cls(blob, None, (ph, pw), None if diff is None else float(diff), len(blob))

    @classmethod
    def from_handle(cls, body: bytes) -> EncodedBlob:
        """A shared-memory answer: the handle, the grid and difference from the metadata it carries."""
        handle = Handle.loads(body)
        meta = handle.metadata
        try:
            grid = (int(meta["ph"]), int(meta["pw"]))
        except (KeyError, TypeError, ValueError):
            raise EdenError("a shared-memory answer without its grid (ph, pw)", code=ErrorCode.UPSTREAM_ERROR) from None
        diff = meta.get("difference")
        return cls(None, None, grid, None if diff is None else float(diff), handle.size, handle)

    def bytes_only(self) -> EncodedBlob:
        """The same encoding as bytes (a handle's segment taken here), for a server that takes no handles."""
        if self.handle is None:
            return self
        return EncodedBlob(self.raw, None, self.grid, self.difference, self.size)

    @classmethod
    def from_json(cls, enc_out: str, metadata: dict[str, Any]) -> EncodedBlob:
        """A JSON answer: the base64 text kept as is, the grid from the answer's metadata."""
        size = metadata.get("enc_out_size")
        return cls(None, enc_out, (int(metadata["ph"]), int(metadata["pw"])), metadata.get("difference"),
                   int(size) if size is not None else len(enc_out) * 3 // 4)


@dataclass(frozen=True)
class Call:
    """One request, whatever carries it: HTTP (path, query, body) or WebSocket (type, header, payload)."""

    operation: str  # the WebSocket message type; the answer's type is f"{operation}_result"
    path: str  # the HTTP path, identity fields filled in
    options: dict[str, Any]  # flat options: HTTP query parameters, WebSocket message fields
    content_type: str  # JSON, or the binary body's media type
    accept: str  # the answer type wanted
    body: bytes | None = None  # binary calls
    document: dict[str, Any] | None = None  # JSON calls: the user's JSON shape
    ids: dict[str, Any] = field(default_factory=dict)  # path-like fields (session_id, index) a WS message carries
    request_id: str | None = None  # HTTP X-Request-ID (WebSocket makes its own per attempt)
    headers: dict[str, str] = field(default_factory=dict)  # HTTP only: e.g. X-Session-ID, a proxy's routing key

    @property
    def binary(self) -> bool:
        """Whether the call carries a binary body (else a JSON document)."""
        return self.body is not None


@dataclass(frozen=True)
class Answer:
    """A success answer, normalised across transports: metadata, JSON data fields, binary body."""

    metadata: dict[str, Any]
    data: dict[str, Any]
    body: bytes | memoryview = b""  # a memoryview: an answer taken from shared memory (a view of its map)
    content_type: str = JSON


def check_payload(payload: str) -> Payload:
    """`payload` if it is binary or json, else INVALID_PARAMETER (a typo must not silently pick one)."""
    if payload not in PAYLOADS:
        raise EdenError(f"payload must be binary or json, got {payload!r}", code=ErrorCode.INVALID_PARAMETER)
    return payload  # type: ignore[return-value]


def _images(frames: dict[str, np.ndarray]) -> dict[str, str]:
    """{name: base64 PNG}: the JSON API's images."""
    return {name: b64encode(encode_png(frame)) for name, frame in frames.items()}


def _frames_call(operation: str, path: str, frames: dict[str, np.ndarray], options: Options, payload: Payload,
                 accept: str, *, ids: dict[str, Any] | None = None, request_id: str | None = None,
                 flat_options: bool = False) -> Call:
    """A call carrying raw frames: a frames container (binary) or base64 PNGs (JSON)."""
    if payload == "binary":
        return Call(operation, path, options.flat(), FRAMES_MEDIA_TYPE, accept, body=pack_frames(frames),
                    ids=ids or {}, request_id=request_id)
    if flat_options:  # the cloud's wire_dtype: a query parameter (or WS message field) in JSON calls too
        query, document = options.flat(), _images(frames)
    else:  # the edge's options: the user's JSON shape, sampling_config nested
        query, document = {}, {**_images(frames), **options.json_fields()}
    return Call(operation, path, query, JSON, JSON, document=document, ids=ids or {}, request_id=request_id)


# -- the cloud ------------------------------------------------------------------------------------

def encode(frame0: np.ndarray, frame1: np.ndarray, options: Options, *, payload: Payload,
           request_id: str | None = None) -> Call:
    """A pair -> its enc_out blob (cloud). Options: wire_dtype (a query parameter in both payloads)."""
    return _frames_call("encode", "/api/v1/encode", {"frame0": frame0, "frame1": frame1}, options, payload,
                        BLOB_MEDIA_TYPE, request_id=request_id, flat_options=True)


def encode_frame(frame: np.ndarray, options: Options, *, payload: Payload, request_id: str | None = None) -> Call:
    """One video frame -> its enc_out blob (cloud, frame-once sessions)."""
    return _frames_call("encode_frame", "/api/v1/encode_frame", {"frame": frame}, options, payload, BLOB_MEDIA_TYPE,
                        request_id=request_id, flat_options=True)


def _encoded(pair: EncodedBlob) -> tuple[str, bytes]:
    """A binary call's body for an encoding: the blob, or its shared-memory handle."""
    if pair.handle is not None:
        return SHM_MEDIA_TYPE, pair.handle.dumps()
    return BLOB_MEDIA_TYPE, pair.raw


# -- the edge -------------------------------------------------------------------------------------

def interpolate(pair: EncodedBlob, options: Options, *, payload: Payload) -> Call:
    """A pair's blob -> the middle frame (edge)."""
    path = "/api/v1/interpolate"
    if payload == "binary":
        kind, body = _encoded(pair)
        return Call("interpolate", path, options.flat(), kind, FRAMES_MEDIA_TYPE, body=body)
    document = {"enc_out": pair.b64, **options.json_fields(), "metadata": {"ph": pair.grid[0], "pw": pair.grid[1]}}
    return Call("interpolate", path, {}, JSON, JSON, document=document)


def session_frame(session_id: str, index: int, frame: EncodedBlob | np.ndarray, options: Options, *,
                  payload: Payload) -> Call:
    """Frame `index` of a frame-once session: its blob (flow A) or the frame itself (flow B)."""
    path, ids = f"/api/v1/sessions/{session_id}/frames/{index}", {"session_id": session_id, "index": index}
    if isinstance(frame, np.ndarray):
        call = _frames_call("session_frame", path, {"frame": frame}, options, payload, FRAMES_MEDIA_TYPE, ids=ids)
    elif payload == "binary":
        kind, body = _encoded(frame)
        call = Call("session_frame", path, options.flat(), kind, FRAMES_MEDIA_TYPE, body=body, ids=ids)
    else:
        call = Call("session_frame", path, {}, JSON, JSON, document={"enc_out": frame.b64, **options.json_fields()},
                    ids=ids)
    return replace(call, headers={SESSION_HEADER: session_id})  # Ray Serve keeps a session on one replica by it


def interpolate_frames(frame0: np.ndarray, frame1: np.ndarray, options: Options, *, payload: Payload) -> Call:
    """Flow B: raw frames to the edge, which has the cloud encode them."""
    return _frames_call("interpolate_frames", "/api/v1/interpolate_frames", {"frame0": frame0, "frame1": frame1},
                        options, payload, FRAMES_MEDIA_TYPE)


# -- answers --------------------------------------------------------------------------------------

def _unreadable(what: str, exc: Exception) -> EdenError:
    return EdenError(f"unreadable {what} answer: {type(exc).__name__}: {exc}", code=ErrorCode.UPSTREAM_ERROR)


def blob_from(answer: Answer) -> EncodedBlob:
    """The cloud's answer -> an EncodedBlob (the raw blob, its base64 text as received, or a handle to it)."""
    if answer.content_type == SHM_MEDIA_TYPE:
        return EncodedBlob.from_handle(answer.body)
    if answer.body:
        return EncodedBlob.from_bytes(answer.body)
    try:
        return EncodedBlob.from_json(answer.data["enc_out"], {**answer.data, **answer.metadata})
    except (KeyError, TypeError, ValueError) as exc:
        raise _unreadable("encode", exc) from None


def frame_from(answer: Answer) -> np.ndarray | None:
    """The edge's answer -> the generated frame, or None for a store-only session answer."""
    if answer.body:
        if answer.content_type.startswith("image/"):
            return decode_image(answer.body, "generated_frame")
        return unpack_frames(answer.body, ("frame",))[0]["frame"]
    generated = answer.data.get("generated_frame")
    if generated:
        return decode_image(b64decode_field(generated, "generated_frame"), "generated_frame")
    if "stored" in answer.data or "stored" in answer.metadata:
        return None
    raise EdenError("the edge answered with neither a frame nor a stored frame index", code=ErrorCode.UPSTREAM_ERROR)
