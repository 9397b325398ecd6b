"""A corpus of hostile requests against real servers: both servers, HTTP and WebSocket, one table.

Each case is a request built to break something (malformed JSON, lying headers, bombs, bodies over the
limit, bad WebSocket framing...). Each must get its specific 4xx (HTTP) or a WebSocket `error` with that
code; right after it, a valid request must succeed on the same connection (the same keep-alive
connection of one httpx.Client, the same WebSocket), except where the case itself makes that
impossible (`keep=False`, with the reason); and no case may cost the server more than PER_CASE_PEAK_MB
of resident memory over what it held before the case.

The servers are real uvicorn processes on loopback (`ServerProcess`) with the tiny random model,
MAX_REQUEST_MB = 8 and MAX_PIXELS = 2,000,000 (SERVER_ENV). Memory is read from /proc/<pid>/status:
before each case the kernel's peak (VmHWM) is reset through /proc/<pid>/clear_refs, so VmHWM after the
case is that case's own peak; where clear_refs is not writable the memory checks fail saying so (NO_PEAK),
rather than pass on a figure that misses the peak. `Harness` and the case tables are reused by
benchmarks/soak.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import safetensors.torch
import torch
import websockets.exceptions
import websockets.sync.client
import zstandard
from PIL import Image

from edensplit.errors import ErrorCode
from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig, ModelArgs
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.servers.launch import ServerProcess
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding, read_blob_header
from edensplit.wire.compression import compress
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames
from edensplit.wire.images import b64encode, encode_png
from edensplit.wire.messages import MAGIC, pack_binary, split_binary, split_text, unpack_binary
from tests.conftest import TINY_CONFIG, TINY_YAML, make_frames

ROOT = Path(__file__).resolve().parents[2]
JSON = "application/json"
MAX_REQUEST_MB = 8
LIMIT = MAX_REQUEST_MB * 2**20
SERVER_PIXELS = 2_000_000
# The bounded caches small (the idempotency cache of answers by request id), so that they are full after a
# warm-up: what the memory checks measure is growth beyond them. And glibc's mmap threshold fixed at its
# default 128 KiB: left dynamic, it rises after the first large buffer is freed, and up to 64 MB of freed
# heap then stays resident untrimmed (measured: RSS swinging by +-20 MB from one request to the next with
# no trend), which hides a leak of that size and makes "within 10%" a coin toss. Fixed, RSS follows what
# the server holds.
SERVER_ENV = {"EDEN_RANDOM_WEIGHTS": "1", "DEVICE": "cpu", "MAX_REQUEST_MB": str(MAX_REQUEST_MB),
              "MAX_PIXELS": str(SERVER_PIXELS), "TORCH_THREADS": "1", "MAX_INFLIGHT": "8", "IDEMPOTENCY_CACHE_MB": "1",
              "MALLOC_MMAP_THRESHOLD_": "131072"}
# Memory bounds. A case may make a server hold its body (at most MAX_REQUEST_MB = 8 MiB) a few times over: the
# bytes read, a decompressed or reassembled copy, the parsed JSON, the decoded base64. 64 MB is eight such
# copies; measured on this project's machine: the costliest case +27 MB, the corpus +38 MB at its peak, +4 MB
# at its end.
PER_CASE_PEAK_MB = 64  # one case's peak RSS over the RSS before it
CORPUS_PEAK_MB = 128  # the highest RSS during the corpus over the RSS after warm-up
CORPUS_END_MB = 32  # the RSS after the corpus over the RSS after warm-up (what a server keeps: caches, heap)

# -- payloads ---------------------------------------------------------------------------------------------

FRAMES = make_frames(2, 40, 70)
OTHER_SIZE = make_frames(2, 48, 70, seed=5)
ENCODER = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
DIFFERENCE = float(frame_difference(FRAMES[0], FRAMES[1])[0])
PAIR_ENC = encode_frames(ENCODER, FRAMES)
PAIR_BLOB = pack_encoding(PAIR_ENC, DIFFERENCE)
FRAME_BLOBS = [pack_encoding(encode_frames(ENCODER, f)) for f in FRAMES]
OTHER_SIZE_BLOB = pack_encoding(encode_frames(ENCODER, OTHER_SIZE[1]))
PAIR_CONTAINER = pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]})
FRAME_CONTAINER = pack_frames({"frame": FRAMES[0]})
PNG0, PNG1 = encode_png(FRAMES[0]), encode_png(FRAMES[1])
B64_0, B64_1 = b64encode(PNG0), b64encode(PNG1)
DEEP = "[" * 100_000 + "]" * 100_000  # JSON nested 100,000 deep
BIG_INT = "1" + "0" * 5000  # an integer literal longer than Python's 4300-digit int() limit


def jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG")
    return buf.getvalue()


def gif(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="GIF")
    return buf.getvalue()


JPEG0 = jpeg(FRAMES[0])


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (the data is a few rows: a decompression bomb's
    header without the bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 256))
            + png_chunk(b"IEND", b""))


def png_text_bomb() -> bytes:
    """A valid 40x70 PNG with a zTXt chunk of 64 MiB deflated to ~65 KB."""
    return PNG0[:33] + png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * (64 * 2**20), 9)) + PNG0[33:]


def corrupt_png() -> bytes:
    """PNG0 with bytes in the middle of its IDAT flipped (its CRC no longer matches, its deflate stream broken)."""
    start = PNG0.index(b"IDAT") + 4
    middle = bytearray(PNG0)
    for i in range(start + 10, start + 40):
        middle[i] ^= 0x5A
    return bytes(middle)


def jpeg_declaring(width: int, height: int) -> bytes:
    """JPEG0 with its SOF0 frame header patched to declare width x height."""
    data = bytearray(JPEG0)
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def safetensors_bytes(header: dict[str, Any] | bytes, data: bytes) -> bytes:
    """A safetensors container from a header (a dict, or raw bytes to lie with) and data."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def split_container(data: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8: 8 + n]), data[8 + n:]


def container_with(source: bytes = PAIR_CONTAINER, data: bytes | None = None,
                   change: Callable[[dict[str, Any]], None] = lambda h: None) -> bytes:
    """`source` with its header changed in place by `change` (and its data replaced, when given)."""
    header, body = split_container(source)
    change(header)
    return safetensors_bytes(header, body if data is None else data)


def blob_with(source: bytes = PAIR_BLOB, tensors: dict[str, torch.Tensor] | None = None, drop: tuple[str, ...] = (),
              **metadata: str) -> bytes:
    """An enc_out blob re-packed with some metadata and tensors replaced (or dropped)."""
    old_tensors = safetensors.torch.load(source)
    old_meta = read_blob_header(source)
    new_meta = {k: v for k, v in {**old_meta, **metadata}.items() if k not in drop}
    return safetensors.torch.save({**old_tensors, **(tensors or {})}, metadata=new_meta)


def poisoned(name: str, value: float) -> dict[str, torch.Tensor]:
    tensor = getattr(PAIR_ENC, name).clone()
    tensor.view(-1)[0] = value
    return {name: tensor}


def model_blob(geometry: Geometry, hidden: int = 32, frames: int = 2) -> bytes:
    """A well-formed blob of another model: its own hidden size, patch or padding multiple."""
    n = geometry.tokens
    enc = FrameEncoding(torch.randn(frames, n, hidden), torch.randn(frames, n, hidden), torch.zeros(frames),
                        torch.ones(frames), geometry)
    return pack_encoding(enc, 0.9 if frames == 2 else None)


def wide_model_blob() -> bytes:
    config = EdenConfig(model_args=ModelArgs(hidden_dim=48, num_heads=2, dit_depth=1, decoder_depth=1))
    return pack_encoding(encode_frames(load_model(None, config, stages={"encode"}, allow_random=True), FRAMES), 0.9)


def multipart(parts: dict[str, tuple[str | None, bytes]], boundary: str = "hostile-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body: name -> (filename or None for a plain field, bytes)."""
    out = []
    for name, (filename, data) in parts.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def pair_parts(metadata: bytes | None = None, f1: bytes = PNG1) -> dict[str, tuple[str | None, bytes]]:
    parts: dict[str, tuple[str | None, bytes]] = {"frame0": ("a.png", PNG0), "frame1": ("b.png", f1)}
    if metadata is not None:
        parts["metadata"] = (None, metadata)
    return parts


def zeros_in_chunks(total: int, chunk: int = 2**20) -> Callable[[], Iterator[bytes]]:
    """A body sent with Transfer-Encoding: chunked (no Content-Length)."""
    def body() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            yield b"\0" * min(chunk, total - sent)
            sent += chunk
    return body


def lazy(make: Callable[[], Any]) -> Callable[[], Any]:
    """Build a large payload only when a case is sent, once."""
    cache: list[Any] = []

    def get() -> Any:
        if not cache:
            cache.append(make())
        return cache[0]
    return get


BOMB_PLAIN = 64 * 2**20  # what the compression bombs inflate to: 8x the limit
BOMBS = {codec: lazy(lambda codec=codec: compress(b"\0" * BOMB_PLAIN, codec)) for codec in ("zstd", "lz4", "gzip",
                                                                                             "deflate")}
OVER = LIMIT + 2**20  # a body 1 MiB over the limit


def binary_message(header_bytes: bytes, payload: bytes = b"", length: int | None = None) -> bytes:
    """An EDS1 message from raw header bytes, with its length field set to `length` (a lie) if given."""
    return MAGIC + struct.pack("<I", len(header_bytes) if length is None else length) + header_bytes + payload


# -- the case table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """An HTTP request on the shared keep-alive client. `body`: bytes, or a factory (bytes, or an iterator of
    bytes for a chunked body) called when the case is sent."""

    path: str
    body: bytes | Callable[[], Any] = b""
    content_type: str | None = JSON
    headers: tuple[tuple[str, str], ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    method: str = "POST"


@dataclass(frozen=True)
class Raw:
    """Bytes written on a fresh socket (requests httpx will not send): the answer is read from it."""

    data: bytes


@dataclass(frozen=True)
class Ws:
    """WebSocket messages sent in order on the server's shared connection (a fresh one if `fresh`); the error
    must name `rid`. Requests that succeed are built by `build` for a new request id each time they are sent
    (a server replays the answer of an id it has answered: see edensplit.servers.idempotency)."""

    messages: tuple[str | bytes, ...] | Callable[[], tuple[str | bytes, ...]] = ()
    rid: Any = None
    fresh: bool = False
    build: Callable[[str], tuple[str | bytes, ...]] | None = None


@dataclass(frozen=True)
class Case:
    name: str
    server: str  # cloud or edge
    request: Http | Raw | Ws
    code: str  # the expected error code ("success" for the valid requests)
    status: int | None = None  # the HTTP status; None: the code's documented one
    keep: bool = True  # the same connection serves the next request
    prelude: tuple[Http | Ws, ...] = ()  # requests that must succeed first (a session's frame 0)
    why: str = ""  # what the case is, or why the connection cannot be kept

    @property
    def transport(self) -> str:
        return "ws" if isinstance(self.request, Ws) else "http"

    @property
    def expected_status(self) -> int:
        if self.status is not None:
            return self.status
        return 200 if self.code == "success" else ErrorCode(self.code).status


def h(name: str, server: str, path: str, code: str, body: bytes | Callable[[], Any] = b"",
      content_type: str | None = JSON, *, headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
      method: str = "POST", status: int | None = None, prelude: tuple[Http | Ws, ...] = ()) -> Case:
    return Case(name, server, Http(path, body, content_type, tuple((headers or {}).items()),
                                   tuple((params or {}).items()), method), code, status, prelude=prelude)


def jdump(value: Any) -> bytes:
    return json.dumps(value).encode()


ENCODE, ENCODE_FRAME = "/api/v1/encode", "/api/v1/encode_frame"
INTERPOLATE, FLOW_B = "/api/v1/interpolate", "/api/v1/interpolate_frames"


def session_path(sid: str, index: int | str) -> str:
    return f"/api/v1/sessions/{sid}/frames/{index}"


def store_http(sid: str, blob: bytes = FRAME_BLOBS[0], kind: str = BLOB_MEDIA_TYPE) -> Http:
    """A session's frame 0, stored (flow A: its blob; flow B: a frames container)."""
    return Http(session_path(sid, 0), blob, kind)


def store_ws(sid: str, blob: bytes = FRAME_BLOBS[0], content_type: str | None = None) -> Ws:
    header: dict[str, Any] = {"type": "session_frame", "session_id": sid, "index": 0}
    if content_type:
        header["content_type"] = content_type
    return Ws(build=lambda rid: (pack_binary({**header, "request_id": rid}, blob),))


def cloud_http_cases() -> list[Case]:
    c = "cloud"
    pair = {"frame0": B64_0, "frame1": B64_1}
    return [
        # JSON bodies
        h("malformed JSON", c, ENCODE, "INVALID_REQUEST", b'{"frame0": "' + B64_0.encode() + b'", '),
        h("JSON array body", c, ENCODE, "INVALID_REQUEST", b"[1, 2, 3]"),
        h("JSON with a BOM and NUL bytes", c, ENCODE, "INVALID_REQUEST", b"\xef\xbb\xbf\x00{}"),
        h("wrong types", c, ENCODE, "INVALID_REQUEST", jdump({"frame0": 5, "frame1": ["x"]})),
        h("image_size of the wrong type", c, ENCODE, "INVALID_REQUEST", jdump({**pair, "image_size": "big"})),
        h("image_size of three numbers", c, ENCODE, "INVALID_REQUEST", jdump({**pair, "image_size": [40, 70, 3]})),
        h("empty object", c, ENCODE, "INVALID_REQUEST", b"{}"),
        h("JSON body nested 100,000 deep", c, ENCODE, "INVALID_REQUEST", DEEP.encode()),
        h("JSON metadata nested 100,000 deep", c, ENCODE, "INVALID_REQUEST",
          b'{"frame0": "' + B64_0.encode() + b'", "frame1": "' + B64_1.encode() + b'", "metadata": '
          + ("{\"a\":" * 100_000 + "1" + "}" * 100_000).encode() + b"}"),
        h("JSON with a 5000-digit integer", c, ENCODE, "INVALID_REQUEST",
          b'{"frame0": "' + B64_0.encode() + b'", "frame1": "' + B64_1.encode() + b'", "image_size": ['
          + BIG_INT.encode() + b", 1]}"),
        h("bad base64 padding", c, ENCODE, "INVALID_BASE64", jdump({"frame0": "AAA", "frame1": B64_1})),
        h("data URL without ;base64", c, ENCODE, "INVALID_BASE64",
          jdump({"frame0": "data:image/png," + B64_0, "frame1": B64_1})),
        # images
        h("a GIF, not a PNG/JPEG", c, ENCODE, "INVALID_IMAGE", jdump({"frame0": b64encode(gif(FRAMES[0])),
                                                                      "frame1": B64_1})),
        h("truncated PNG", c, ENCODE, "INVALID_IMAGE", jdump({"frame0": b64encode(PNG0[: len(PNG0) // 2]),
                                                              "frame1": B64_1})),
        h("corrupt PNG data", c, ENCODE, "INVALID_IMAGE", jdump({"frame0": b64encode(corrupt_png()), "frame1": B64_1})),
        h("truncated JPEG", c, ENCODE, "INVALID_IMAGE", jdump({"frame0": b64encode(JPEG0[: len(JPEG0) // 2]),
                                                               "frame1": B64_1})),
        h("PNG declaring 100000x100000 (bomb)", c, ENCODE, "INVALID_IMAGE",
          jdump({"frame0": b64encode(png_declaring(100_000, 100_000)), "frame1": B64_1})),
        h("JPEG declaring 65500x65500 (bomb)", c, ENCODE, "INVALID_IMAGE",
          jdump({"frame0": b64encode(jpeg_declaring(65500, 65500)), "frame1": B64_1})),
        h("PNG with a 64 MiB zTXt chunk (text bomb)", c, ENCODE, "INVALID_IMAGE",
          lazy(lambda: jdump({"frame0": b64encode(png_text_bomb()), "frame1": B64_1}))),
        h("PNG over MAX_PIXELS: 413 before decoding", c, ENCODE, "PAYLOAD_TOO_LARGE",
          jdump({"frame0": b64encode(png_declaring(3000, 3000)), "frame1": B64_1})),
        h("frames of two sizes (JPEG, PNG)", c, ENCODE, "FRAME_SIZE_MISMATCH",
          jdump({"frame0": b64encode(JPEG0), "frame1": b64encode(encode_png(OTHER_SIZE[0]))})),
        h("image_size [0, 0]", c, ENCODE, "FRAME_SIZE_MISMATCH", jdump({**pair, "image_size": [0, 0]})),
        h("encode_frame: empty frame", c, ENCODE_FRAME, "INVALID_IMAGE", jdump({"frame": ""})),
        # multipart
        h("multipart metadata nested 100,000 deep", c, ENCODE, "INVALID_REQUEST",
          *multipart(pair_parts(DEEP.encode()))),
        h("multipart metadata not JSON", c, ENCODE, "INVALID_REQUEST", *multipart(pair_parts(b"{fps: 30"))),
        h("multipart image_size not [H, W]", c, ENCODE, "INVALID_REQUEST",
          *multipart(pair_parts(b'{"image_size": 5}'))),
        h("multipart metadata with a 5000-digit integer", c, ENCODE, "INVALID_REQUEST",
          *multipart(pair_parts(b'{"fps": ' + BIG_INT.encode() + b"}"))),
        h("multipart without a boundary", c, ENCODE, "INVALID_REQUEST", multipart(pair_parts())[0],
          "multipart/form-data"),
        h("multipart frames of two sizes", c, ENCODE, "FRAME_SIZE_MISMATCH",
          *multipart(pair_parts(f1=encode_png(OTHER_SIZE[0])))),
        h("multipart truncated", c, ENCODE, "INVALID_REQUEST", multipart(pair_parts())[0][:120],
          multipart(pair_parts())[1]),
        # frames containers
        h("container truncated", c, ENCODE, "INVALID_BLOB", PAIR_CONTAINER[:-100], FRAMES_MEDIA_TYPE),
        h("container header length 2**63", c, ENCODE, "INVALID_BLOB", struct.pack("<Q", 2**63) + PAIR_CONTAINER[8:],
          FRAMES_MEDIA_TYPE),
        h("container header nested 100,000 deep", c, ENCODE, "INVALID_BLOB",
          safetensors_bytes(b'{"a":' + DEEP.encode() + b"}", b""), FRAMES_MEDIA_TYPE),
        h("container header with a 5000-digit integer", c, ENCODE, "INVALID_BLOB",
          safetensors_bytes(b'{"frame0": {"dtype": "U8", "shape": [' + BIG_INT.encode()
                            + b'], "data_offsets": [0, 0]}}', b""), FRAMES_MEDIA_TYPE),
        h("container header lies about offsets", c, ENCODE, "INVALID_BLOB",
          container_with(change=lambda hd: hd["frame1"].update(data_offsets=[8400, 16801])), FRAMES_MEDIA_TYPE),
        h("container header lies about shapes", c, ENCODE, "INVALID_BLOB",
          container_with(change=lambda hd: hd["frame0"].update(shape=[41, 70, 3])), FRAMES_MEDIA_TYPE),
        h("container header lies about dtypes", c, ENCODE, "INVALID_BLOB",
          container_with(change=lambda hd: hd["frame0"].update(dtype="F32")), FRAMES_MEDIA_TYPE),
        h("container float32 frames", c, ENCODE, "INVALID_BLOB",
          container_with(change=lambda hd: hd["frame0"].update(dtype="F32", shape=[10, 70, 3])), FRAMES_MEDIA_TYPE),
        h("container unknown dtype", c, ENCODE, "INVALID_BLOB",
          container_with(change=lambda hd: hd["frame0"].update(dtype="Q7")), FRAMES_MEDIA_TYPE),
        h("container overlapping offsets", c, ENCODE, "INVALID_BLOB",
          container_with(data=PAIR_CONTAINER[-16800:-8400],
                         change=lambda hd: hd["frame1"].update(data_offsets=[0, 8400])), FRAMES_MEDIA_TYPE),
        h("container duplicate tensor names", c, ENCODE, "INVALID_BLOB",
          safetensors_bytes(b'{"frame0": {"dtype": "U8", "shape": [1, 1, 3], "data_offsets": [0, 3]}, "frame0": '
                            b'{"dtype": "U8", "shape": [1, 1, 3], "data_offsets": [3, 6]}}', b"\0" * 6),
          FRAMES_MEDIA_TYPE),
        h("container of another format", c, ENCODE, "INVALID_BLOB",
          container_with(change=lambda hd: hd["__metadata__"].update(format="edensplit.enc_out")), FRAMES_MEDIA_TYPE),
        h("container version 2", c, ENCODE, "INVALID_BLOB",
          container_with(change=lambda hd: hd["__metadata__"].update(version="2")), FRAMES_MEDIA_TYPE),
        h("container declaring 3000x3000 frames: 413 before loading", c, ENCODE, "PAYLOAD_TOO_LARGE",
          container_with(change=lambda hd: hd["frame0"].update(shape=[3000, 3000, 3])), FRAMES_MEDIA_TYPE),
        h("container frames of two sizes", c, ENCODE, "FRAME_SIZE_MISMATCH",
          pack_frames({"frame0": FRAMES[0], "frame1": OTHER_SIZE[0]}), FRAMES_MEDIA_TYPE),
        h("container with a third frame", c, ENCODE, "INVALID_BLOB",
          pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1], "frame2": FRAMES[1]}), FRAMES_MEDIA_TYPE),
        h("encode_frame given a pair's container", c, ENCODE_FRAME, "INVALID_BLOB", PAIR_CONTAINER, FRAMES_MEDIA_TYPE),
        # transport level
        h("unknown content type", c, ENCODE, "UNSUPPORTED_MEDIA_TYPE", b"<frames/>", "application/xml"),
        h("no content type", c, ENCODE, "UNSUPPORTED_MEDIA_TYPE", PAIR_CONTAINER, None),
        h("Accept image/png from the cloud", c, ENCODE, "NOT_ACCEPTABLE", jdump(pair), headers={"Accept": "image/png"}),
        h("binary body, Accept text/html", c, ENCODE, "NOT_ACCEPTABLE", PAIR_CONTAINER, FRAMES_MEDIA_TYPE,
          headers={"Accept": "text/html"}),
        h("wire_dtype float64", c, ENCODE, "INVALID_PARAMETER", PAIR_CONTAINER, FRAMES_MEDIA_TYPE,
          params={"wire_dtype": "float64"}),
        h("X-Request-Timeout 1e400", c, ENCODE, "INVALID_PARAMETER", PAIR_CONTAINER, FRAMES_MEDIA_TYPE,
          headers={"X-Request-Timeout": "1e400"}),
        h("X-Request-Timeout over a day", c, ENCODE, "INVALID_PARAMETER", PAIR_CONTAINER, FRAMES_MEDIA_TYPE,
          headers={"X-Request-Timeout": "86401"}),
        h("X-Request-Timeout 0x10", c, ENCODE, "INVALID_PARAMETER", PAIR_CONTAINER, FRAMES_MEDIA_TYPE,
          headers={"X-Request-Timeout": "0x10"}),
        h("body over MAX_REQUEST_MB (Content-Length)", c, ENCODE, "PAYLOAD_TOO_LARGE", lazy(lambda: b"\0" * OVER),
          FRAMES_MEDIA_TYPE),
        h("body over MAX_REQUEST_MB (chunked)", c, ENCODE, "PAYLOAD_TOO_LARGE", zeros_in_chunks(OVER),
          FRAMES_MEDIA_TYPE),
        Case("huge Content-Length declared", c, Raw(
            b"POST /api/v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000000\r\n\r\n{}"), "PAYLOAD_TOO_LARGE", keep=False,
            why="the caller promised 1 TB of body on that connection: it cannot carry another request"),
        h("zstd bomb (64 MiB of zeros)", c, ENCODE, "PAYLOAD_TOO_LARGE", BOMBS["zstd"], FRAMES_MEDIA_TYPE,
          headers={"Content-Encoding": "zstd"}),
        h("lz4 bomb", c, ENCODE, "PAYLOAD_TOO_LARGE", BOMBS["lz4"], FRAMES_MEDIA_TYPE,
          headers={"Content-Encoding": "lz4"}),
        h("gzip bomb", c, ENCODE, "PAYLOAD_TOO_LARGE", BOMBS["gzip"], FRAMES_MEDIA_TYPE,
          headers={"Content-Encoding": "gzip"}),
        h("deflate bomb, JSON", c, ENCODE, "PAYLOAD_TOO_LARGE", BOMBS["deflate"], JSON,
          headers={"Content-Encoding": "deflate"}),
        h("corrupt lz4 body", c, ENCODE, "INVALID_BLOB", lambda: compress(PAIR_CONTAINER, "lz4")[:-9] + b"\0" * 9,
          FRAMES_MEDIA_TYPE, headers={"Content-Encoding": "lz4"}),
        h("stacked Content-Encoding gzip, zstd", c, ENCODE, "UNSUPPORTED_MEDIA_TYPE",
          lambda: compress(compress(PAIR_CONTAINER, "gzip"), "zstd"), FRAMES_MEDIA_TYPE,
          headers={"Content-Encoding": "gzip, zstd"}),
        h("unknown Content-Encoding", c, ENCODE, "UNSUPPORTED_MEDIA_TYPE", PAIR_CONTAINER, FRAMES_MEDIA_TYPE,
          headers={"Content-Encoding": "compress"}),
        h("no such route", c, "/api/v1/encode/../../etc/passwd", "NOT_FOUND", b"{}"),
        h("GET on a POST route", c, ENCODE, "METHOD_NOT_ALLOWED", b"", None, method="GET", status=405),
    ]


def edge_http_cases() -> list[Case]:
    e = "edge"
    enc = b64encode(PAIR_BLOB)
    blob = BLOB_MEDIA_TYPE

    def interp(name: str, code: str, body: bytes | Callable[[], Any] = PAIR_BLOB, content_type: str | None = blob,
               **kw: Any) -> Case:
        return h(name, e, INTERPOLATE, code, body, content_type, **kw)

    def q(name: str, code: str, **params: str) -> Case:
        return interp(name, code, params=params)

    sid = "hostile-http-"
    return [
        interp("malformed JSON", "INVALID_REQUEST", b'{"enc_out": "' + enc[:100].encode(), JSON),
        interp("enc_out a number", "INVALID_REQUEST", jdump({"enc_out": 5}), JSON),
        interp("sampling_config a string", "INVALID_REQUEST", jdump({"enc_out": enc, "sampling_config": "fast"}), JSON),
        interp("missing enc_out", "INVALID_REQUEST", jdump({"seed": 1}), JSON),
        interp("model_args a string", "INVALID_REQUEST", jdump({"enc_out": enc, "model_args": "tiny"}), JSON),
        interp("JSON body nested 100,000 deep", "INVALID_REQUEST", DEEP.encode(), JSON),
        interp("JSON seed with 5000 digits", "INVALID_REQUEST",
               b'{"enc_out": "' + enc.encode() + b'", "seed": ' + BIG_INT.encode() + b"}", JSON),
        interp("JSON metadata ph 1e400", "INVALID_PARAMETER",
               b'{"enc_out": "' + enc.encode() + b'", "metadata": {"ph": 1e400, "pw": 6}}', JSON),
        interp("JSON vae_shift 1e400", "INVALID_PARAMETER",
               b'{"enc_out": "' + enc.encode() + b'", "vae_shift": 1e400}', JSON),
        interp("JSON difference -1.5", "INVALID_PARAMETER", jdump({"enc_out": enc, "difference": -1.5}), JSON),
        interp("JSON method rk4", "INVALID_PARAMETER", jdump({"enc_out": enc, "sampling_config": {"method": "rk4"}}),
               JSON),
        interp("bad base64 enc_out", "INVALID_BASE64", jdump({"enc_out": enc[:-3] + "!!!"}), JSON),
        q("seed -1", "INVALID_PARAMETER", seed="-1"),
        q("seed 2**64", "INVALID_PARAMETER", seed=str(2**64)),
        q("seed 1.5", "INVALID_PARAMETER", seed="1.5"),
        q("num_steps 65", "INVALID_PARAMETER", num_steps="65"),
        q("num_steps 2.5", "INVALID_PARAMETER", num_steps="2.5"),
        q("method ddim", "INVALID_PARAMETER", method="ddim"),
        q("difference nan", "INVALID_PARAMETER", difference="nan"),
        q("difference 1.00001", "INVALID_PARAMETER", difference="1.00001"),
        q("vae_scaler -inf", "INVALID_PARAMETER", vae_scaler="-inf"),
        q("vae_scaler 0", "INVALID_PARAMETER", vae_scaler="0"),
        q("vae_shift nan", "INVALID_PARAMETER", vae_shift="nan"),
        interp("X-Request-Timeout -0", "INVALID_PARAMETER", headers={"X-Request-Timeout": "-0"}),
        # blobs
        interp("garbage blob", "INVALID_BLOB", b"\xff" * 4096),
        interp("truncated blob", "INVALID_BLOB", PAIR_BLOB[: len(PAIR_BLOB) - 50]),
        interp("blob header nested 100,000 deep", "INVALID_BLOB", safetensors_bytes(b'{"a":' + DEEP.encode() + b"}",
                                                                                     b"")),
        interp("blob header length past the end", "INVALID_BLOB", struct.pack("<Q", 10**6) + PAIR_BLOB[8:]),
        interp("blob declaring 999999999x999999999 frames: 413 before loading", "PAYLOAD_TOO_LARGE",
               blob_with(height="999999999", width="999999999")),
        interp("blob grid lies", "SHAPE_MISMATCH", blob_with(grid="5,5")),
        interp("blob pad lies", "SHAPE_MISMATCH", blob_with(pad="0,0,0,0")),
        interp("blob hidden_dim lies", "SHAPE_MISMATCH", blob_with(hidden_dim="48")),
        interp("blob tensor shape lies", "SHAPE_MISMATCH",
               blob_with(tensors={"cond_dit": PAIR_ENC.cond_dit[:, :23].contiguous()})),
        interp("blob header lies about a dtype", "INVALID_BLOB", container_with(
            PAIR_BLOB, change=lambda hd: hd["cond_dit"].update(dtype="F16"))),
        interp("blob header lies about offsets", "INVALID_BLOB", container_with(
            PAIR_BLOB, change=lambda hd: hd["std"].update(data_offsets=[hd["std"]["data_offsets"][0], 10**9]))),
        interp("blob wire_dtype float64", "INVALID_BLOB", blob_with(wire_dtype="float64")),
        interp("blob says float16, holds float32", "INVALID_BLOB", blob_with(wire_dtype="float16")),
        interp("blob float16 mean", "INVALID_BLOB", blob_with(tensors={"mean": PAIR_ENC.mean.half()})),
        interp("blob difference nan", "INVALID_BLOB", blob_with(difference="nan")),
        interp("blob version 2", "INVALID_BLOB", blob_with(version="2")),
        interp("blob height -1", "INVALID_BLOB", blob_with(height="-1")),
        interp("blob without grid", "INVALID_BLOB", blob_with(drop=("grid",))),
        interp("blob with an extra tensor", "INVALID_BLOB", blob_with(tensors={"extra": torch.zeros(2)})),
        interp("blob with NaN tokens", "INVALID_BLOB", blob_with(tensors=poisoned("cond_dec", float("nan")))),
        interp("blob with an inf std", "INVALID_BLOB", blob_with(tensors=poisoned("std", float("inf")))),
        interp("blob of a model with hidden size 48", "MODEL_MISMATCH", lazy(wide_model_blob)),
        interp("blob of a model with patch 8", "MODEL_MISMATCH", model_blob(Geometry(40, 70, 16, 8))),
        interp("blob of a model padding to 64", "MODEL_MISMATCH", model_blob(Geometry(40, 70, 64, 16))),
        interp("blob of one frame", "SHAPE_MISMATCH", FRAME_BLOBS[0]),
        interp("blob claiming 3 frames", "SHAPE_MISMATCH", blob_with(frames="3")),
        interp("blob without a difference", "INVALID_PARAMETER", pack_encoding(PAIR_ENC)),
        # transport level
        interp("a PNG body", "UNSUPPORTED_MEDIA_TYPE", PNG0, "image/png"),
        interp("Accept the blob type from the edge", "NOT_ACCEPTABLE", jdump({"enc_out": enc}), JSON,
               headers={"Accept": BLOB_MEDIA_TYPE}),
        interp("body over MAX_REQUEST_MB", "PAYLOAD_TOO_LARGE", lazy(lambda: b"\0" * OVER)),
        interp("zstd bomb", "PAYLOAD_TOO_LARGE", BOMBS["zstd"], headers={"Content-Encoding": "zstd"}),
        interp("corrupt zstd body", "INVALID_BLOB", lambda: compress(PAIR_BLOB, "zstd")[:-4],
               headers={"Content-Encoding": "zstd"}),
        # sessions
        h("session index not a number", e, session_path(sid + "a", "abc"), "INVALID_REQUEST", FRAME_BLOBS[1], blob),
        h("session index 10**30", e, session_path(sid + "b", str(10**30)), "SESSION_NOT_FOUND", FRAME_BLOBS[1], blob,
          params={"difference": str(DIFFERENCE)}),
        h("session id of 129 characters", e, session_path("s" * 129, 1), "INVALID_PARAMETER", FRAME_BLOBS[1], blob,
          params={"difference": str(DIFFERENCE)}),
        h("session frame without difference (JSON)", e, session_path(sid + "c", 1), "INVALID_PARAMETER",
          jdump({"enc_out": b64encode(FRAME_BLOBS[1]), "seed": 1}), prelude=(store_http(sid + "c"),)),
        h("session frame of another size than its predecessor", e, session_path(sid + "d", 1), "SHAPE_MISMATCH",
          OTHER_SIZE_BLOB, blob, params={"difference": str(DIFFERENCE)}, prelude=(store_http(sid + "d"),)),
        h("flow-B session frame of another size than its predecessor", e, session_path(sid + "e", 1),
          "FRAME_SIZE_MISMATCH", pack_frames({"frame": OTHER_SIZE[1]}), FRAMES_MEDIA_TYPE,
          prelude=(store_http(sid + "e", FRAME_CONTAINER, FRAMES_MEDIA_TYPE),)),
        h("session frame with both enc_out and frame", e, session_path(sid + "f", 0), "INVALID_REQUEST",
          jdump({"enc_out": b64encode(FRAME_BLOBS[0]), "frame": B64_0})),
        h("session frame with neither enc_out nor frame", e, session_path(sid + "g", 0), "INVALID_REQUEST",
          jdump({"seed": 1})),
        h("session frame 0 asked to interpolate", e, session_path(sid + "h", 0), "INVALID_PARAMETER", FRAME_BLOBS[0],
          blob, params={"interpolate": "true"}),
        h("session interpolate=maybe", e, session_path(sid + "i", 1), "INVALID_PARAMETER", FRAME_BLOBS[1], blob,
          params={"interpolate": "maybe"}),
        h("session frame whose predecessor nobody has", e, session_path(sid + "j", 7), "SESSION_NOT_FOUND",
          FRAME_BLOBS[1], blob, params={"difference": str(DIFFERENCE)}),
        h("flow-B session frame: container of a pair", e, session_path(sid + "k", 0), "INVALID_BLOB", PAIR_CONTAINER,
          FRAMES_MEDIA_TYPE),
        h("flow-B session frame: bad base64", e, session_path(sid + "l", 0), "INVALID_BASE64", jdump({"frame": "@@"})),
        # flow B
        h("flow B: garbage container", e, FLOW_B, "INVALID_BLOB", b"\0" * 100, FRAMES_MEDIA_TYPE),
        h("flow B: PNG bomb", e, FLOW_B, "INVALID_IMAGE",
          jdump({"frame0": b64encode(png_declaring(100_000, 100_000)), "frame1": B64_1})),
        h("flow B: frames of two sizes", e, FLOW_B, "FRAME_SIZE_MISMATCH",
          pack_frames({"frame0": FRAMES[0], "frame1": OTHER_SIZE[0]}), FRAMES_MEDIA_TYPE),
        h("flow B: num_steps 0", e, FLOW_B, "INVALID_PARAMETER", PAIR_CONTAINER, FRAMES_MEDIA_TYPE,
          params={"num_steps": "0"}),
    ]


def ws(name: str, server: str, messages: tuple[str | bytes, ...] | Callable[[], tuple[str | bytes, ...]], code: str,
       rid: Any = None, *, fresh: bool = False, prelude: tuple[Http | Ws, ...] = ()) -> Case:
    return Case(name, server, Ws(messages, rid, fresh), code, prelude=prelude)


def text(message: dict[str, Any]) -> str:
    return json.dumps(message)


def chunked_text(message: dict[str, Any], parts: int) -> tuple[str, ...]:
    size = len(json.dumps(message, separators=(",", ":")))
    return tuple(split_text(message, size // parts + 1))


def too_many_chunked() -> tuple[bytes, ...]:
    """Chunk 0 of 2 of 17 messages: 16 in progress is the limit."""
    return tuple(split_binary({"type": "encode_frame", "request_id": f"part{i}"}, FRAME_CONTAINER,
                              len(FRAME_CONTAINER) // 2 + 1)[0] for i in range(17))


def ws_protocol_cases(server: str, op: str) -> list[Case]:
    """Framing attacks, the same on both endpoints."""
    s = server
    return [
        ws("non-JSON text", s, ("{oops: ",), "INVALID_REQUEST"),
        ws("a JSON number", s, ("42",), "INVALID_REQUEST"),
        ws("text nested 100,000 deep", s, (DEEP,), "INVALID_REQUEST"),
        ws("text with a 5000-digit integer", s, ('{"type": "ping", "request_id": "big", "seed": ' + BIG_INT + "}",),
           "INVALID_REQUEST"),
        ws("binary without the EDS1 magic", s, (b"EDS2" + PAIR_CONTAINER,), "INVALID_REQUEST"),
        ws("binary of 5 bytes", s, (b"EDS1\0",), "INVALID_REQUEST"),
        ws("header length lying (1000 of 10)", s, (binary_message(b'{"type": 1}', length=1000),), "INVALID_REQUEST"),
        ws("header length 2**32-1", s, (binary_message(b"{}", b"x" * 100, length=2**32 - 1),), "INVALID_REQUEST"),
        ws("header not UTF-8", s, (binary_message(b"\xff\xfe{}"),), "INVALID_REQUEST"),
        ws("header a JSON array", s, (binary_message(b"[1, 2]"),), "INVALID_REQUEST"),
        ws("header nested 100,000 deep", s, (binary_message(DEEP.encode()),), "INVALID_REQUEST"),
        ws("header nested 30,000 deep", s, (binary_message(("[" * 30_000 + "]" * 30_000).encode()),),
           "INVALID_REQUEST"),
        ws("header with a 5000-digit integer", s, (binary_message(
            b'{"type": "' + op.encode() + b'", "request_id": "bigh", "seed": ' + BIG_INT.encode() + b"}"),),
           "INVALID_REQUEST"),
        ws("chunk 2 after chunk 0", s, (pack_binary({"type": op, "request_id": "c02", "chunk": 0, "chunks": 3}, b"x"),
                                        pack_binary({"type": op, "request_id": "c02", "chunk": 2, "chunks": 3}, b"x")),
           "INVALID_REQUEST", "c02"),
        ws("chunk -1", s, (pack_binary({"type": op, "request_id": "cm1", "chunk": -1, "chunks": 3}, b"x"),),
           "INVALID_REQUEST", "cm1"),
        ws("chunks 0", s, (pack_binary({"type": op, "request_id": "c00", "chunk": 0, "chunks": 0}, b"x"),),
           "INVALID_REQUEST", "c00"),
        ws("chunk count changes mid-message", s, (
            pack_binary({"type": op, "request_id": "ccc", "chunk": 0, "chunks": 2}, b"x"),
            pack_binary({"type": op, "request_id": "ccc", "chunk": 1, "chunks": 3}, b"x")), "INVALID_REQUEST", "ccc"),
        ws("text chunk without data", s, (text({"type": "chunk", "request_id": "tnd", "chunk": 0, "chunks": 2}),),
           "INVALID_REQUEST", "tnd"),
        ws("text chunks joining into JSON nested 100,000 deep", s, tuple(
            text({"type": "chunk", "request_id": "tdeep", "chunk": i, "chunks": 2, "data": part})
            for i, part in enumerate((DEEP[:100_000], DEEP[100_000:]))), "INVALID_REQUEST", "tdeep"),
        ws("17 chunked messages in progress", s, too_many_chunked, "OVERLOADED", "part16", fresh=True),
        ws("binary chunk whose request_id is a list", s, (pack_binary({"type": op, "request_id": ["r"], "chunk": 0,
                                                                         "chunks": 2}, b"x"),), "INVALID_REQUEST"),
        ws("text chunk whose request_id is an object", s, (text({"type": "chunk", "request_id": {"r": 1}, "chunk": 0,
                                                                 "chunks": 2, "data": "{"}),), "INVALID_REQUEST"),
        ws("unknown message type", s, (text({"type": "explode", "request_id": "u"}),), "INVALID_REQUEST", "u"),
        ws("missing request_id", s, (text({"type": op}),), "INVALID_REQUEST"),
        ws("empty request_id", s, (pack_binary({"type": op, "request_id": ""}, b"x"),), "INVALID_REQUEST"),
        ws("request_id a number", s, (text({"type": op, "request_id": 7}),), "INVALID_REQUEST"),
        ws("binary message over the limit", s, lambda: (pack_binary({"type": op, "request_id": "big1"},
                                                                    b"\0" * OVER),), "PAYLOAD_TOO_LARGE", "big1"),
        ws("chunked binary message over the limit", s, lambda: tuple(split_binary(
            {"type": op, "request_id": "big2"}, b"\0" * (3 * 3 * 2**20), 3 * 2**20)), "PAYLOAD_TOO_LARGE", "big2"),
        ws("text message over the limit", s, lambda: (text({"type": op, "request_id": "big3", "payload": {
            "pad": "A" * OVER}}),), "PAYLOAD_TOO_LARGE", "big3"),
        ws("chunked text message over the limit", s, lambda: tuple(split_text(
            {"type": op, "request_id": "big4", "payload": {"pad": "A" * (9 * 2**20)}}, 3 * 2**20 + 2**19)),
           "PAYLOAD_TOO_LARGE", "big4"),
        ws("timeout_s -1", s, (pack_binary({"type": op, "request_id": "t1", "timeout_s": -1}, b"x"),),
           "INVALID_PARAMETER", "t1"),
        ws("timeout_s soon", s, (text({"type": op, "request_id": "t2", "timeout_s": "soon"}),), "INVALID_PARAMETER",
           "t2"),
        ws("timeout_s true", s, (text({"type": op, "request_id": "t3", "timeout_s": True}),), "INVALID_PARAMETER",
           "t3"),
        ws("timeout_s Infinity", s, (text({"type": op, "request_id": "t4", "timeout_s": float("inf")}),),
           "INVALID_PARAMETER", "t4"),
        ws("binary content_type text/plain", s, (pack_binary({"type": op, "request_id": "ct", "content_type":
                                                              "text/plain"}, b"x"),), "UNSUPPORTED_MEDIA_TYPE", "ct"),
    ]


def cloud_ws_cases() -> list[Case]:
    c = "cloud"

    def enc(name: str, code: str, payload: bytes, rid: str, op: str = "encode", **header: Any) -> Case:
        return ws(name, c, (pack_binary({"type": op, "request_id": rid, **header}, payload),), code, rid)

    def enc_json(name: str, code: str, payload: Any, rid: str, **fields: Any) -> Case:
        return ws(name, c, (text({"type": "encode", "request_id": rid, "payload": payload, **fields}),), code, rid)

    return [*ws_protocol_cases(c, "encode"),
            enc("encode: garbage container", "INVALID_BLOB", b"\0" * 64, "g1"),
            enc("encode: container header nested 100,000 deep", "INVALID_BLOB",
                safetensors_bytes(b'{"a":' + DEEP.encode() + b"}", b""), "g2"),
            enc("encode: container declaring 3000x3000 frames", "PAYLOAD_TOO_LARGE",
                container_with(change=lambda hd: hd["frame1"].update(shape=[3000, 3000, 3])), "g3"),
            enc("encode: frames of two sizes", "FRAME_SIZE_MISMATCH",
                pack_frames({"frame0": FRAMES[0], "frame1": OTHER_SIZE[0]}), "g4"),
            enc("encode: wire_dtype int4", "INVALID_PARAMETER", PAIR_CONTAINER, "g5", wire_dtype="int4"),
            enc("encode: an enc_out blob as content_type", "UNSUPPORTED_MEDIA_TYPE", PAIR_BLOB, "g6",
                content_type=BLOB_MEDIA_TYPE),
            enc("encode_frame: a pair's container", "INVALID_BLOB", PAIR_CONTAINER, "g7", op="encode_frame"),
            enc_json("encode JSON: payload a string", "INVALID_REQUEST", "frames", "j1"),
            enc_json("encode JSON: PNG bomb", "INVALID_IMAGE",
                     {"frame0": b64encode(png_declaring(100_000, 100_000)), "frame1": B64_1}, "j2"),
            enc_json("encode JSON: PNG over MAX_PIXELS", "PAYLOAD_TOO_LARGE",
                     {"frame0": B64_0, "frame1": b64encode(png_declaring(3000, 3000))}, "j3"),
            enc_json("encode JSON: truncated JPEG", "INVALID_IMAGE",
                     {"frame0": b64encode(JPEG0[:300]), "frame1": B64_1}, "j4"),
            enc_json("encode JSON: bad base64", "INVALID_BASE64", {"frame0": B64_0, "frame1": "####"}, "j5"),
            enc_json("encode JSON: image_size mismatch", "FRAME_SIZE_MISMATCH",
                     {"frame0": B64_0, "frame1": B64_1, "image_size": [70, 40]}, "j6"),
            enc_json("encode JSON: wire_dtype float8", "INVALID_PARAMETER", {"frame0": B64_0, "frame1": B64_1}, "j7",
                     wire_dtype="float8"),
            ]


def edge_ws_cases() -> list[Case]:
    e = "edge"

    def interp(name: str, code: str, payload: bytes, rid: str, op: str = "interpolate", **header: Any) -> Case:
        return ws(name, e, (pack_binary({"type": op, "request_id": rid, **header}, payload),), code, rid)

    def interp_json(name: str, code: str, rid: str, **fields: Any) -> Case:
        return ws(name, e, (text({"type": "interpolate", "request_id": rid, "payload": {
            "enc_out": b64encode(PAIR_BLOB), **fields}}),), code, rid)

    def session(name: str, code: str, rid: str, payload: bytes = FRAME_BLOBS[1], store: bool = True,
                store_content: bytes = FRAME_BLOBS[0], **header: Any) -> Case:
        sid = f"hostile-ws-{rid}"
        fields = {"type": "session_frame", "request_id": rid, "session_id": sid, "index": 1, **header}
        kind = FRAMES_MEDIA_TYPE if store_content is FRAME_CONTAINER else None
        prelude = (store_ws(sid, store_content, kind),) if store else ()
        return ws(name, e, (pack_binary({k: v for k, v in fields.items() if v is not None}, payload),), code, rid,
                  prelude=prelude)

    return [*ws_protocol_cases(e, "interpolate"),
            interp("garbage blob", "INVALID_BLOB", b"\0" * 100, "b1"),
            interp("blob with NaN tokens", "INVALID_BLOB", blob_with(tensors=poisoned("cond_dit", float("nan"))), "b2"),
            interp("blob of a model with hidden size 48", "MODEL_MISMATCH", wide_model_blob(), "b3"),
            interp("blob of one frame", "SHAPE_MISMATCH", FRAME_BLOBS[0], "b4"),
            interp("blob header lying about offsets", "INVALID_BLOB", container_with(
                PAIR_BLOB, change=lambda hd: hd["mean"].update(data_offsets=[0, 8])), "b5"),
            interp("seed -1", "INVALID_PARAMETER", PAIR_BLOB, "o1", seed=-1),
            interp("num_steps 0", "INVALID_PARAMETER", PAIR_BLOB, "o2", num_steps=0),
            interp("method rk4", "INVALID_PARAMETER", PAIR_BLOB, "o3", method="rk4"),
            interp("difference 2", "INVALID_PARAMETER", PAIR_BLOB, "o4", difference=2),
            interp("vae_scaler Infinity", "INVALID_PARAMETER", PAIR_BLOB, "o5", vae_scaler=float("inf")),
            interp("vae_shift NaN", "INVALID_PARAMETER", PAIR_BLOB, "o6", vae_shift=float("nan")),
            interp("a frames container as content_type", "UNSUPPORTED_MEDIA_TYPE", PAIR_CONTAINER, "o7",
                   content_type=FRAMES_MEDIA_TYPE),
            interp_json("JSON seed a string", "INVALID_REQUEST", "j1", seed="zero"),
            interp_json("JSON metadata ph Infinity", "INVALID_PARAMETER", "j2", metadata={"ph": float("inf")}),
            interp_json("JSON model_args of another model", "MODEL_MISMATCH", "j3", model_args={"hidden_dim": 768}),
            ws("interpolate_frames JSON: bad base64", e, (text({"type": "interpolate_frames", "request_id": "j4",
                                                                "payload": {"frame0": "!", "frame1": B64_1}}),),
               "INVALID_BASE64", "j4"),
            interp("interpolate_frames: frames of two sizes", "FRAME_SIZE_MISMATCH",
                   pack_frames({"frame0": FRAMES[0], "frame1": OTHER_SIZE[0]}), "j5", op="interpolate_frames"),
            session("session_frame without session_id", "INVALID_REQUEST", "s1", store=False, session_id=None),
            session("session_frame index Infinity", "INVALID_PARAMETER", "s2", store=False, index=float("inf")),
            session("session_frame index 'x'", "INVALID_PARAMETER", "s3", store=False, index="x"),
            session("session_frame index -1", "INVALID_PARAMETER", "s4", store=False, index=-1),
            session("session_frame without difference", "INVALID_PARAMETER", "s5"),
            session("session_frame of another size than its predecessor", "SHAPE_MISMATCH", "s6", OTHER_SIZE_BLOB,
                    difference=DIFFERENCE),
            session("flow-B session_frame of another size than its predecessor", "FRAME_SIZE_MISMATCH", "s7",
                    pack_frames({"frame": OTHER_SIZE[1]}), store_content=FRAME_CONTAINER,
                    content_type=FRAMES_MEDIA_TYPE),
            session("session_frame with a pair's blob", "SHAPE_MISMATCH", "s8", PAIR_BLOB, difference=DIFFERENCE),
            session("session_frame interpolate 'perhaps'", "INVALID_PARAMETER", "s9", interpolate="perhaps"),
            ]


def valid_cases() -> list[Case]:
    """Valid requests of every kind: the warm-up, and the valid half of the soak."""
    sid = "valid-http"
    diff = {"difference": str(DIFFERENCE), "seed": "3"}
    return [
        h("encode JSON", "cloud", ENCODE, "success", jdump({"frame0": B64_0, "frame1": B64_1})),
        h("encode multipart", "cloud", ENCODE, "success", *multipart(pair_parts(b'{"fps": 30}'))),
        h("encode container", "cloud", ENCODE, "success", PAIR_CONTAINER, FRAMES_MEDIA_TYPE),
        h("encode container, zstd both ways", "cloud", ENCODE, "success", lambda: compress(PAIR_CONTAINER, "zstd"),
          FRAMES_MEDIA_TYPE, headers={"Content-Encoding": "zstd", "Accept-Encoding": "zstd"}),
        h("encode_frame float16", "cloud", ENCODE_FRAME, "success", FRAME_CONTAINER, FRAMES_MEDIA_TYPE,
          params={"wire_dtype": "float16"}),
        h("interpolate JSON", "edge", INTERPOLATE, "success", jdump({"enc_out": b64encode(PAIR_BLOB), "seed": 2})),
        h("interpolate binary, PNG answer", "edge", INTERPOLATE, "success", PAIR_BLOB, BLOB_MEDIA_TYPE,
          headers={"Accept": "image/png"}),
        h("session frame 1", "edge", session_path(sid, 1), "success", FRAME_BLOBS[1], BLOB_MEDIA_TYPE, params=diff,
          prelude=(store_http(sid),)),
        h("flow B pair", "edge", FLOW_B, "success", PAIR_CONTAINER, FRAMES_MEDIA_TYPE),
        valid_ws("encode WS JSON", "cloud", lambda rid: (text({"type": "encode", "request_id": rid, "payload": {
            "frame0": B64_0, "frame1": B64_1}}),)),
        valid_ws("encode_frame WS binary", "cloud", lambda rid: (pack_binary(
            {"type": "encode_frame", "request_id": rid}, FRAME_CONTAINER),)),
        valid_ws("encode WS chunked", "cloud", lambda rid: tuple(split_binary(
            {"type": "encode", "request_id": rid}, PAIR_CONTAINER, 10_000))),
        valid_ws("interpolate WS binary", "edge", lambda rid: (pack_binary(
            {"type": "interpolate", "request_id": rid, "seed": 1}, PAIR_BLOB),)),
        valid_ws("interpolate WS JSON chunked", "edge", lambda rid: chunked_text(
            {"type": "interpolate", "request_id": rid, "payload": {"enc_out": b64encode(PAIR_BLOB)}}, 3)),
        valid_ws("session_frame WS", "edge", lambda rid: (pack_binary(
            {"type": "session_frame", "request_id": rid, "session_id": "valid-ws", "index": 1,
             "difference": DIFFERENCE}, FRAME_BLOBS[1]),), prelude=(store_ws("valid-ws"),)),
        valid_ws("interpolate_frames WS", "edge", lambda rid: (pack_binary(
            {"type": "interpolate_frames", "request_id": rid}, PAIR_CONTAINER),)),
    ]


def valid_ws(name: str, server: str, build: Callable[[str], tuple[str | bytes, ...]],
             prelude: tuple[Http | Ws, ...] = ()) -> Case:
    return Case(name, server, Ws(build=build), "success", prelude=prelude)


def probe_cases() -> list[Case]:
    """What a security review probed (#15): ids that could forge a log line or fill the replay cache, a Host that
    names another site (DNS rebinding), a few KB of zstd that would inflate far past any reasonable ratio."""
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 * 2**20))
    cases = []
    for server, path, body, kind in (("cloud", ENCODE, PAIR_CONTAINER, FRAMES_MEDIA_TYPE),
                                     ("edge", INTERPOLATE, PAIR_BLOB, BLOB_MEDIA_TYPE)):
        op = "encode" if server == "cloud" else "interpolate"
        cases += [
            h(f"{server}: X-Request-ID of 129 characters", server, path, "INVALID_PARAMETER", body, kind,
              headers={"X-Request-ID": "r" * 129}),
            h(f"{server}: X-Request-ID with a space", server, path, "INVALID_PARAMETER", body, kind,
              headers={"X-Request-ID": "two words"}),
            h(f"{server}: a Host that names another site", server, path, "INVALID_HOST", body, kind,
              headers={"Host": "rebound.example"}),
            h(f"{server}: 8 KB of zstd inflating to 64 MiB", server, path, "PAYLOAD_TOO_LARGE", bomb, kind,
              headers={"Content-Encoding": "zstd"}),
            ws(f"{server}: WS request_id with a newline", server,
               (pack_binary({"type": op, "request_id": "a\nFAKE log line"}, body),), "INVALID_PARAMETER"),
            ws(f"{server}: WS request_id of 129 characters", server,
               (pack_binary({"type": op, "request_id": "r" * 129}, body),), "INVALID_PARAMETER"),
        ]
    cases.append(h("edge: session id with a space", "edge", session_path("two%20words", 0), "INVALID_PARAMETER",
                   FRAME_BLOBS[0], BLOB_MEDIA_TYPE))
    return cases


CASES = cloud_http_cases() + edge_http_cases() + cloud_ws_cases() + edge_ws_cases() + probe_cases()
VALID = valid_cases()


# -- running cases against real servers ---------------------------------------------------------------------


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak RSS (VmHWM) of a process to its current RSS; False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Outcome:
    code: str  # the error code, "success", or DROPPED (the connection or the answer was lost)
    status: int
    kept: bool  # the valid request after it succeeded on the same connection
    detail: str = ""
    followed: bool = False  # the valid request after it succeeded (on any connection)


class Harness:
    """Both servers, one keep-alive httpx.Client and one WebSocket per server, and the cases' runner."""

    WS_PATHS = {"cloud": "/ws/encode", "edge": "/ws/interpolate"}

    def __init__(self, cloud: ServerProcess, edge: ServerProcess):
        self.servers = {"cloud": cloud, "edge": edge}
        self.http = {name: httpx.Client(base_url=s.url, timeout=60) for name, s in self.servers.items()}
        self.sockets: dict[str, Any] = {}
        self.stack = contextlib.ExitStack()
        self.sent = 0  # request ids made so far

    def close(self) -> None:
        for client in self.http.values():
            client.close()
        self.stack.close()

    # memory
    def pid(self, server: str) -> int:
        proc = self.servers[server].proc
        assert proc is not None
        return proc.pid

    def memory(self) -> dict[str, dict[str, int]]:
        return {name: memory(self.pid(name)) for name in self.servers}

    def reset_peaks(self) -> bool:
        return all([reset_peak(self.pid(name)) for name in self.servers])

    # connections
    def connect(self, server: str) -> Any:
        url = self.servers[server].url.replace("http://", "ws://") + self.WS_PATHS[server]
        return websockets.sync.client.connect(url, max_size=2**26, compression=None, open_timeout=30)

    def socket(self, server: str) -> Any:
        conn = self.sockets.get(server)
        if conn is None or conn.protocol.state.name != "OPEN":
            conn = self.sockets[server] = self.stack.enter_context(self.connect(server))
        return conn

    # requests
    def send_http(self, server: str, req: Http) -> httpx.Response:
        body = req.body() if callable(req.body) else req.body
        headers = dict(req.headers)
        if req.content_type is not None:
            headers["Content-Type"] = req.content_type
        request = self.http[server].build_request(req.method, req.path, content=body if req.method != "GET" else None,
                                                  params=dict(req.params), headers=headers)
        if req.content_type is None and "content-type" in request.headers:
            del request.headers["content-type"]
        return self.http[server].send(request)

    def send_raw(self, server: str, req: Raw) -> tuple[int, dict[str, Any]]:
        s = self.servers[server]
        with socket.create_connection((s.host, s.port), timeout=30) as sock:
            sock.sendall(req.data)
            data = b""
            while b"\r\n\r\n" not in data:
                more = sock.recv(65536)
                if not more:
                    raise ConnectionError(f"the server closed the connection after {len(data)} bytes")
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            while len(body) < length:
                more = sock.recv(65536)
                if not more:
                    break
                body += more
        status = int(head.split()[1])
        return status, json.loads(body[:length])

    def send_ws(self, conn: Any, req: Ws) -> tuple[dict[str, Any], Any]:
        """Send the messages; (the first answer (the error, or the result), parsed; the request id it must name)."""
        rid = req.rid
        if req.build is not None:
            self.sent += 1
            rid = f"{req.rid or 'ok'}-{self.sent}"
            messages = req.build(rid)
        else:
            messages = req.messages() if callable(req.messages) else req.messages
        for message in messages:
            conn.send(message)
        answer = conn.recv(timeout=60)
        return (unpack_binary(answer)[0] if isinstance(answer, bytes) else json.loads(answer)), rid

    @staticmethod
    def ws_outcome(answer: dict[str, Any], rid: Any) -> Outcome:
        if answer.get("type") == "error":
            code = answer["error"]["code"]
            detail = f'{answer["error"]["message"][:200]} {answer["error"].get("details") or ""}'.strip()
            if answer.get("request_id") != rid:
                return Outcome(f"{code} (request_id {answer.get('request_id')!r}, not {rid!r})", 0, False, detail)
            return Outcome(code, ErrorCode(code).status, False, detail)
        if answer.get("status") == "success" and answer.get("request_id") == rid:
            return Outcome("success", 200, False)
        return Outcome("UNEXPECTED", 0, False, str(answer)[:300])

    def valid(self, server: str, transport: str, conn: Any = None) -> tuple[bool, Any]:
        """A valid small request: (succeeded, the local address of the HTTP connection that carried it)."""
        try:
            if transport == "ws":
                kind, payload = ("encode_frame", FRAME_CONTAINER) if server == "cloud" else ("interpolate", PAIR_BLOB)
                answer, rid = self.send_ws(conn, Ws(rid="after", build=lambda rid: (pack_binary(
                    {"type": kind, "request_id": rid}, payload),)))
                return answer.get("status") == "success" and answer.get("request_id") == rid, None
            req = Http(ENCODE_FRAME, FRAME_CONTAINER, FRAMES_MEDIA_TYPE) if server == "cloud" else \
                Http(INTERPOLATE, PAIR_BLOB, BLOB_MEDIA_TYPE)
            r = self.send_http(server, req)
            return r.status_code == 200, local_address(r)
        except (httpx.TransportError, websockets.exceptions.ConnectionClosed, TimeoutError, OSError):
            return False, None

    def valid_anew(self, server: str) -> bool:
        """A valid WebSocket request on a new connection: the server still serves."""
        with self.connect(server) as conn:
            return self.valid(server, "ws", conn)[0]

    def prelude(self, case: Case, conn: Any) -> None:
        for req in case.prelude:
            if isinstance(req, Ws):
                answer, _ = self.send_ws(conn, req)
                assert answer.get("status") == "success", f"{case.name}: the prelude failed: {answer}"
            else:
                r = self.send_http(case.server, req)
                assert r.status_code == 200, f"{case.name}: the prelude failed: {r.text[:300]}"

    def run(self, case: Case) -> Outcome:
        """Send a case, then a valid request on the same connection."""
        server = case.server
        if isinstance(case.request, Ws):
            with contextlib.ExitStack() as fresh:
                conn = fresh.enter_context(self.connect(server)) if case.request.fresh else self.socket(server)
                self.prelude(case, conn)
                try:
                    outcome = self.ws_outcome(*self.send_ws(conn, case.request))
                except (websockets.exceptions.ConnectionClosed, TimeoutError) as exc:
                    return Outcome("DROPPED", 0, False, f"{type(exc).__name__}: {exc}", self.valid_anew(server))
                outcome.kept = outcome.followed = self.valid(server, "ws", conn)[0]
                return outcome if outcome.kept else replace(outcome, followed=self.valid_anew(server))
        if isinstance(case.request, Raw):
            try:
                status, body = self.send_raw(server, case.request)
                outcome = Outcome(body["error"]["code"] if body.get("error") else "success", status, False,
                                  str(body.get("error", ""))[:200])
            except (OSError, ValueError, AttributeError) as exc:
                outcome = Outcome("DROPPED", 0, False, f"{type(exc).__name__}: {exc}")
            outcome.followed = self.valid(server, "http")[0]
            return outcome
        self.prelude(case, None)
        try:
            r = self.send_http(server, case.request)
        except httpx.TransportError as exc:
            return Outcome("DROPPED", 0, False, f"{type(exc).__name__}: {exc}", self.valid(server, "http")[0])
        try:
            body = r.json()
            code = body["error"]["code"] if r.status_code >= 400 else "success"
            detail = body["error"]["message"][:200] if r.status_code >= 400 else ""
        except (ValueError, KeyError, TypeError):
            code, detail = "NOT_AN_ENVELOPE", r.text[:200]
        if r.status_code < 400:
            code = "success"
        before = local_address(r)
        kept, after = self.valid(server, "http")
        kept = kept and before is not None and before == after
        return Outcome(code, r.status_code, kept, detail, kept or self.valid(server, "http")[0])


def local_address(response: httpx.Response) -> Any:
    """The local (address, port) of the connection that carried a response: the same one means keep-alive."""
    stream = response.extensions.get("network_stream")
    try:
        return stream.get_extra_info("client_addr") if stream is not None else None
    except OSError:  # the server closed it already: it was not kept
        return None


def start_servers(env: dict[str, str], logs: Path) -> tuple[ServerProcess, ServerProcess]:
    cloud = ServerProcess("edensplit.cloud:app", env=env, log_path=logs / "hostile-cloud.log").start()
    try:
        edge = ServerProcess("edensplit.edge:app", env={**env, "CLOUD_SERVER_URL": cloud.url},
                             log_path=logs / "hostile-edge.log").start()
    except BaseException:
        cloud.stop()
        raise
    return cloud, edge


def warm_up(harness: Harness, rounds: int = 3) -> None:
    for _ in range(rounds):
        for case in VALID:
            outcome = harness.run(case)
            assert (outcome.code, outcome.kept) == ("success", True), (case.name, outcome)


# -- the tests ------------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Memory per case, for the corpus-wide bound."""

    warm: dict[str, dict[str, int]] = field(default_factory=dict)
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)  # case -> server -> its peak RSS (bytes)
    growth: dict[str, dict[str, int]] = field(default_factory=dict)  # case -> server -> peak over the RSS before
    unmeasured: list[str] = field(default_factory=list)  # cases whose peak could not be measured (see NO_PEAK)


NO_PEAK = ("cannot measure a case's own peak RSS: /proc/<pid>/clear_refs of the servers ({pids}) is not writable "
           "here, so their peak (VmHWM) cannot be reset before a case, and VmRSS after it would miss the case's "
           "peak; the memory bounds are not checked. Run where a process may write its own /proc/<pid>/clear_refs "
           "(Linux; not allowed under some sandboxes).")


def no_peak(harness: Harness) -> str:
    return NO_PEAK.format(pids=", ".join(f"{s} {harness.pid(s)}" for s in harness.servers))


@pytest.fixture(scope="module")
def harness(workdir):
    config = workdir / "hostile-tiny.yaml"
    config.write_text(TINY_YAML)
    cloud, edge = start_servers({**SERVER_ENV, "EDEN_CONFIG": str(config)}, workdir)
    h = Harness(cloud, edge)
    try:
        warm_up(h)
        yield h
    finally:
        h.close()
        edge.stop()
        cloud.stop()


@pytest.fixture(scope="module")
def ledger(harness) -> Ledger:
    return Ledger(warm=harness.memory())


def run_measured(harness: Harness, ledger: Ledger, case: Case) -> Outcome:
    """Run a case; its peak RSS per server (VmHWM, reset just before it), unless the peak cannot be reset."""
    before = harness.memory()
    if not harness.reset_peaks():
        ledger.unmeasured.append(case_id(case))
        return harness.run(case)
    outcome = harness.run(case)
    after = harness.memory()
    peak = {s: after[s]["VmHWM"] for s in after}
    ledger.peaks[case_id(case)] = peak
    ledger.growth[case_id(case)] = {s: peak[s] - before[s]["VmRSS"] for s in peak}
    return outcome


def case_id(case: Case) -> str:
    return f"{case.server}-{case.transport}-{case.name}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_a_hostile_request_gets_its_code_and_the_connection_serves_on(harness, ledger, case):
    outcome = run_measured(harness, ledger, case)
    assert (outcome.code, outcome.status) == (case.code, case.expected_status), outcome
    assert outcome.followed, "the server did not serve a valid request after it"
    if case.keep:
        assert outcome.kept, "a valid request right after it did not succeed on the same connection"
    assert case_id(case) not in ledger.unmeasured, no_peak(harness)
    growth = ledger.growth[case_id(case)]
    assert max(growth.values()) < PER_CASE_PEAK_MB * 2**20, {s: f"{g / 2**20:.1f} MB" for s, g in growth.items()}


def test_the_corpus_stays_within_its_memory_bound(harness, ledger):
    """Over the whole corpus (any case not run yet is run now): the highest RSS and the RSS at the end, each
    over the RSS after warm-up, within CORPUS_PEAK_MB and CORPUS_END_MB."""
    for case in CASES:
        if case_id(case) not in ledger.peaks and case_id(case) not in ledger.unmeasured:
            run_measured(harness, ledger, case)
    assert not ledger.unmeasured, no_peak(harness)
    end = harness.memory()
    for server, warm in ledger.warm.items():
        peak = max(p[server] for p in ledger.peaks.values())
        worst = max(ledger.growth, key=lambda k: ledger.growth[k][server])
        print(f"{server}: RSS after warm-up {warm['VmRSS'] / 2**20:.1f} MB, peak during the corpus "
              f"{peak / 2**20:.1f} MB (+{(peak - warm['VmRSS']) / 2**20:.1f}), at the end "
              f"{end[server]['VmRSS'] / 2**20:.1f} MB (+{(end[server]['VmRSS'] - warm['VmRSS']) / 2**20:.1f}); "
              f"the costliest case {worst!r} +{ledger.growth[worst][server] / 2**20:.1f} MB")
        assert peak - warm["VmRSS"] < CORPUS_PEAK_MB * 2**20, server
        assert end[server]["VmRSS"] - warm["VmRSS"] < CORPUS_END_MB * 2**20, server


def test_the_corpus_covers_both_servers_both_transports_and_the_issue_list():
    counts = {(s, t): sum(c.server == s and c.transport == t for c in CASES) for s in ("cloud", "edge")
              for t in ("http", "ws")}
    assert len(CASES) >= 60 and min(counts.values()) >= 15, counts
    assert len({case_id(c) for c in CASES}) == len(CASES)
    codes = {c.code for c in CASES}
    assert codes >= {"INVALID_REQUEST", "INVALID_BASE64", "INVALID_IMAGE", "FRAME_SIZE_MISMATCH", "INVALID_BLOB",
                     "SHAPE_MISMATCH", "MODEL_MISMATCH", "INVALID_PARAMETER", "PAYLOAD_TOO_LARGE",
                     "UNSUPPORTED_MEDIA_TYPE", "NOT_ACCEPTABLE", "NOT_FOUND", "SESSION_NOT_FOUND", "OVERLOADED"}
    assert all(c.why for c in CASES if not c.keep)
    nested = [c for c in CASES if "nested 100,000 deep" in c.name]
    assert len(nested) >= 8, [c.name for c in nested]


def _soak_module():
    spec = importlib.util.spec_from_file_location("edensplit_soak", ROOT / "benchmarks" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_short_soak_holds_memory_flat(harness):
    """A few hundred mixed requests (benchmarks/soak.py runs thousands): every valid one succeeds, every hostile
    one gets the answer the corpus says (its code and status, the connection kept where the case says), and RSS
    at the end is within 10% of the RSS after the soak's own warm-up."""
    soak = _soak_module()
    started = time.monotonic()
    report = soak.soak(harness, requests=150, warmup=75, seed=1, max_seconds=120)
    print(soak.render(report))
    assert report.requests == 150 and time.monotonic() - started < 150
    assert not report.valid_failures, report.valid_failures[:5]
    assert not report.unexpected, f"hostile requests answered otherwise than the corpus says: {report.unexpected[:5]}"
    for server, (warm, end) in report.rss.items():
        assert end <= warm * 1.10, (server, warm, end)


def test_a_repeated_flow_b_request_gets_the_same_answer_each_time(harness):
    """In flow B the edge passes a request's id on to the cloud (X-Request-ID) and packs the frame anew each
    time. The same request sent again (same id, same content: a client's retry) must get the same answer each
    time, over HTTP and WebSocket, not the cloud's 409 IDEMPOTENCY_CONFLICT turned into 502 UPSTREAM_ERROR."""
    other = pack_frames({"frame": OTHER_SIZE[1]})
    answers = []
    for attempt in range(5):
        stored = harness.send_http("edge", store_http("repeat-http", FRAME_CONTAINER, FRAMES_MEDIA_TYPE))
        assert stored.status_code == 200, stored.text
        r = harness.send_http("edge", Http(session_path("repeat-http", 1), other, FRAMES_MEDIA_TYPE,
                                           (("X-Request-ID", "repeat-http-1"),)))
        answers.append(("http", attempt, r.status_code, r.json()["error"]["code"]))
        conn = harness.socket("edge")
        stored_ws, _ = harness.send_ws(conn, store_ws("repeat-ws", FRAME_CONTAINER, FRAMES_MEDIA_TYPE))
        assert stored_ws["status"] == "success", stored_ws
        answer, _ = harness.send_ws(conn, Ws((pack_binary({"type": "session_frame", "request_id": "repeat-ws-1",
                                                           "session_id": "repeat-ws", "index": 1,
                                                           "content_type": FRAMES_MEDIA_TYPE}, other),)))
        answers.append(("ws", attempt, ErrorCode(answer["error"]["code"]).status, answer["error"]["code"]))
    wrong = [a for a in answers if a[2:] != (400, "FRAME_SIZE_MISMATCH")]
    assert not wrong, wrong


def test_refused_websocket_messages_give_their_bytes_back_to_the_servers_budget(workdir):
    """With a 2 MiB budget for bytes being read (BODY_MEMORY_MB), messages refused in every way must not keep
    their bytes counted: after 6 MiB of refused chunks, a 1.5 MiB chunked message and a 1.5 MiB HTTP body
    are still read (a leak would refuse every large request from then on, until a restart)."""
    config = workdir / "hostile-budget-tiny.yaml"
    config.write_text(TINY_YAML)
    env = {**SERVER_ENV, "EDEN_CONFIG": str(config), "BODY_MEMORY_MB": "2"}
    piece = b"\0" * (512 * 2**10)
    refusals = [  # (messages, whether an answer comes), each on a new connection (some end it)
        ((pack_binary({"type": "encode_frame", "request_id": ["r"], "chunk": 0, "chunks": 2}, piece),), True),
        ((text({"type": "chunk", "request_id": {"r": 1}, "chunk": 0, "chunks": 2, "data": "a" * len(piece)}),), True),
        ((pack_binary({"type": "encode_frame", "request_id": "o", "chunk": 0, "chunks": 3}, piece),
          pack_binary({"type": "encode_frame", "request_id": "o", "chunk": 2, "chunks": 3}, piece)), True),
        ((pack_binary({"type": "encode_frame", "request_id": "n", "chunk": 0, "chunks": 2}, b"x"),
          pack_binary({"type": "encode_frame", "request_id": "n", "chunk": 1, "chunks": 2}, piece)), True),
        ((pack_binary({"type": "encode_frame", "request_id": "left", "chunk": 0, "chunks": 2}, piece),), False),
    ]
    with ServerProcess("edensplit.cloud:app", env=env, log_path=workdir / "hostile-budget.log") as cloud:
        url = cloud.url.replace("http://", "ws://") + "/ws/encode"
        for messages, answered in refusals * 2:
            with websockets.sync.client.connect(url, compression=None) as conn:
                try:
                    for message in messages:
                        conn.send(message)
                    if answered:
                        conn.recv(timeout=30)
                except websockets.exceptions.ConnectionClosed:
                    pass  # a defect of its own (see the corpus); what matters here is the budget after it
        frames = {"frame": make_frames(1, 600, 880, seed=2)[0]}  # a 1.5 MiB frames container
        body = pack_frames(frames)
        with websockets.sync.client.connect(url, compression=None) as conn:
            for message in split_binary({"type": "encode_frame", "request_id": "whole"}, body, 2**20):
                conn.send(message)
            answer = conn.recv(timeout=60)
            header = unpack_binary(answer)[0] if isinstance(answer, bytes) else json.loads(answer)
            assert header.get("status") == "success", header
        r = httpx.post(f"{cloud.url}{ENCODE_FRAME}", content=body, headers={"Content-Type": FRAMES_MEDIA_TYPE},
                       timeout=60)
        assert r.status_code == 200, r.text[:300]
