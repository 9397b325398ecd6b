"""Property-based fuzzing of everything that decodes bytes from the network: the enc_out blob
(`unpack_encoding`), the frames container (`unpack_frames`), images (`decode_image`) and WebSocket
messages (`edensplit.wire.messages`: binary framing, text messages, chunk reassembly).

Arbitrary bytes and structured mutations of valid inputs (flipped and truncated bytes, header JSON fields
changed, length fields that lie, deep nesting, integers too long to convert) must only ever succeed or
raise an `EdenError` whose code is a 4xx: never another exception, which a server would answer with a
500 or a dropped connection. Chunk reassembly must also do its job: a message split into chunks comes back
whole and equal, a chunk set with a chunk dropped or two swapped never comes back whole, and nothing over the
reassembler's max_bytes ever comes out.

Bounded for the suite: FUZZ_EXAMPLES examples per property (derandomized, so a run is reproducible);
set EDENSPLIT_FUZZ_EXAMPLES for a longer, randomized campaign.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

from edensplit.errors import EdenError
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.wire.blob import pack_encoding, unpack_encoding
from edensplit.wire.frames import pack_frames, unpack_frames
from edensplit.wire.images import decode_image, encode_png
from edensplit.wire.messages import Reassembler, pack_binary, parse_text, split_binary, split_text, unpack_binary

CAMPAIGN = os.environ.get("EDENSPLIT_FUZZ_EXAMPLES")
FUZZ_EXAMPLES = int(CAMPAIGN or 300)
# Hypothesis's caches (and the patches it writes for failing examples) go to a temporary folder, not into the
# shared working tree.
set_hypothesis_home_dir(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY")
                        or os.path.join(tempfile.gettempdir(), "edensplit-hypothesis"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=CAMPAIGN is None,
                suppress_health_check=list(HealthCheck), print_blob=True)
BUDGET = 10**6  # the pixel budget the decoders get, as a server passes its MAX_PIXELS
BIG_INT = "1" + "0" * 5000  # longer than Python converts (4300 digits)


def only_4xx(call: Callable[[], Any]) -> EdenError | None:
    """Run a decoder: success, or an EdenError with a 4xx code; any other exception fails the property."""
    try:
        call()
    except EdenError as exc:
        assert 400 <= exc.code.status < 500, f"{exc.code} ({exc.code.status}): {exc.message}"
        return exc
    return None


# -- valid inputs to mutate ----------------------------------------------------------------------------------


def _encoding(frames: int, hidden: int = 8) -> FrameEncoding:
    geometry = Geometry(24, 40)
    g = torch.Generator().manual_seed(frames)
    n = geometry.tokens
    return FrameEncoding(torch.randn(frames, n, hidden, generator=g), torch.randn(frames, n, hidden, generator=g),
                         torch.rand(frames, generator=g), torch.rand(frames, generator=g) + 0.5, geometry)


PAIR_BLOB = pack_encoding(_encoding(2), 0.75, extra={"request_id": "r"})
FRAME_BLOB16 = pack_encoding(_encoding(1), None, "float16")
_rng = np.random.default_rng(0)
FRAMES = _rng.integers(0, 256, (2, 6, 10, 3), dtype=np.uint8)
PAIR_CONTAINER = pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]}, {"fps": "30"})
PNG = encode_png(FRAMES[0])
_buf = io.BytesIO()
Image.fromarray(np.repeat(np.repeat(FRAMES[0], 4, 0), 4, 1)).save(_buf, format="JPEG")
JPEG = _buf.getvalue()


def split_container(data: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8: 8 + n]), data[8 + n:]


# -- strategies ------------------------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                         st.text(max_size=12), st.sampled_from(["", "1", "0", "-1", "nan", "inf", "1e400", "3,4",
                                                                "0,0,0,0", "float16", "bfloat16", "float64"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


@st.composite
def byte_mutation(draw: st.DrawFn, valid: bytes) -> bytes:
    """Flip, truncate, insert or append bytes; flips land in the first 600 bytes (the headers) half the time."""
    data = bytearray(valid)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "append", "flip+truncate"]))
    if "flip" in kind:
        for _ in range(draw(st.integers(1, 8))):
            end = min(len(data), 600) if draw(st.booleans()) else len(data)
            data[draw(st.integers(0, end - 1))] ^= draw(st.integers(1, 255))
    if "truncate" in kind:
        data = data[: draw(st.integers(0, len(data) - 1))]
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    if kind == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@st.composite
def header_mutation(draw: st.DrawFn, valid: bytes) -> bytes:
    """A safetensors container with its JSON header changed: metadata values, tensor entries (dtype, shape,
    offsets), keys added or removed, the whole header replaced; its data kept, cut or extended; its length
    field true or lying."""
    header: Any
    header, data = split_container(valid)
    for _ in range(draw(st.integers(1, 3))):
        tensors = [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        if not isinstance(metadata, dict):  # the header was replaced: edits of it go nowhere
            metadata = {}
        kind = draw(st.sampled_from(["meta", "meta-text", "drop-meta", "dtype", "shape", "offsets", "drop-tensor",
                                     "add-tensor", "replace", "big-int"]))
        if kind in ("meta", "meta-text"):
            key = draw(st.sampled_from([*sorted(metadata), "height", "grid", "pad", "frames"]) | st.text(max_size=6))
            metadata[key] = draw(json_values if kind == "meta" else st.one_of(
                st.integers(-3, 10**12).map(str), st.text(max_size=10),
                st.lists(st.integers(-1, 10**6), min_size=1, max_size=5).map(lambda v: ",".join(map(str, v)))))
        elif kind == "drop-meta" and metadata:
            metadata.pop(draw(st.sampled_from(sorted(metadata))))
        elif kind in ("dtype", "shape", "offsets") and tensors:
            entry = header[draw(st.sampled_from(tensors))]
            if not isinstance(entry, dict):
                continue
            if kind == "dtype":
                entry["dtype"] = draw(st.sampled_from(["F32", "F16", "BF16", "U8", "I8", "I64", "F64", "BOOL",
                                                       "F8_E4M3", "Q7", ""]) | json_scalars)
            elif kind == "shape":
                entry["shape"] = draw(st.lists(st.one_of(st.integers(0, 64), st.integers(-2, 2**66)), max_size=4)
                                      | json_scalars)
            else:
                entry["data_offsets"] = draw(st.lists(st.integers(-2, 2**66), min_size=0, max_size=3) | json_scalars)
        elif kind == "drop-tensor" and tensors:
            header.pop(draw(st.sampled_from(tensors)), None)
        elif kind == "add-tensor" and isinstance(header, dict):
            header[draw(st.text(max_size=8))] = draw(json_values)
        elif kind == "replace":
            header = draw(json_values)
        elif kind == "big-int":
            metadata["__bigint__"] = "__BIGINT__"
    head = json.dumps(header).replace('"__BIGINT__"', BIG_INT).encode()
    cut = draw(st.sampled_from(["keep", "cut", "extend"]))
    if cut == "cut":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    elif cut == "extend":
        data += draw(st.binary(min_size=1, max_size=32))
    length = len(head) + (draw(st.integers(-16, 16)) if draw(st.integers(0, 9)) == 0 else 0)
    return struct.pack("<Q", max(length, 0)) + head + data


meta_values = st.one_of(
    st.sampled_from(["0", "1", "2", "3", "8", "16", "24", "32", "40", "64", "999999999", "-1", "", "1.5", " 1",
                     "4,4,12,12", "0,0,0,0", "2,3", "0,0", "1,1,1", "float16", "bfloat16", "float32", "float64", "nan",
                     "inf", "-0.5", "1.0000001", "1e400", "edensplit.enc_out", "edensplit.frames"]),
    st.integers(0, 10**10).map(str), st.lists(st.integers(0, 99), min_size=1, max_size=5).map(
        lambda v: ",".join(map(str, v))), st.text(max_size=8))
TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int64,
                torch.bool]
NUMPY_DTYPES = [np.uint8, np.int8, np.uint16, np.float32, np.float64, np.bool_, np.int64]


@st.composite
def semantic_blob(draw: st.DrawFn) -> bytes:
    """A well-formed safetensors container built from a valid blob's tensors and metadata, changed: metadata
    values, tensors of other shapes and dtypes, NaN/inf values, tensors dropped or added. It parses; what it
    tests is every check after parsing."""
    source = draw(st.sampled_from([PAIR_BLOB, FRAME_BLOB16]))
    tensors = dict(safetensors.torch.load(source))
    header, _ = split_container(source)
    metadata = dict(header["__metadata__"])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["meta", "meta", "drop-meta", "tensor", "values", "drop-tensor", "add-tensor"]))
        if kind == "meta":
            metadata[draw(st.sampled_from([*sorted(metadata), "difference"]))] = draw(meta_values)
        elif kind == "drop-meta":
            metadata.pop(draw(st.sampled_from(sorted(metadata))), None)
        elif kind in ("tensor", "values", "drop-tensor") and tensors:
            name = draw(st.sampled_from(sorted(tensors)))
            if kind == "tensor":
                shape = draw(st.lists(st.integers(0, 30), max_size=4))
                tensors[name] = torch.ones(shape, dtype=draw(st.sampled_from(TORCH_DTYPES)))
            elif kind == "values" and tensors[name].is_floating_point() and tensors[name].numel():
                changed = tensors[name].clone()
                changed.view(-1)[draw(st.integers(0, changed.numel() - 1))] = draw(st.sampled_from(
                    [float("nan"), float("inf"), float("-inf"), 1e30, 0.0, -1.0]))
                tensors[name] = changed
            elif kind == "drop-tensor":
                del tensors[name]
        elif kind == "add-tensor":
            tensors[draw(st.text(min_size=1, max_size=6))] = torch.zeros(draw(st.integers(0, 4)))
    return safetensors.torch.save(tensors, metadata=metadata)


@st.composite
def semantic_container(draw: st.DrawFn) -> bytes:
    """A well-formed safetensors container of arrays of any name, dtype and shape, with frames metadata that
    may be changed."""
    names = draw(st.lists(st.sampled_from(["frame0", "frame1", "frame", "x"]), min_size=0, max_size=3, unique=True))
    arrays = {name: np.ones(draw(st.lists(st.integers(0, 12), max_size=4)), dtype=draw(st.sampled_from(NUMPY_DTYPES)))
              for name in names}
    metadata = {"format": "edensplit.frames", "version": "1"}
    if draw(st.integers(0, 3)) == 0:
        metadata[draw(st.sampled_from(["format", "version", "fps"]))] = draw(meta_values)
    return safetensors.numpy.save(arrays, metadata=metadata)


def blobs() -> st.SearchStrategy[bytes]:
    valid = st.sampled_from([PAIR_BLOB, FRAME_BLOB16])
    return st.one_of(st.binary(max_size=1024), valid.flatmap(byte_mutation), valid.flatmap(header_mutation),
                     semantic_blob())


def containers() -> st.SearchStrategy[bytes]:
    valid = st.just(PAIR_CONTAINER)
    return st.one_of(st.binary(max_size=1024), valid.flatmap(byte_mutation), valid.flatmap(header_mutation),
                     semantic_container())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@st.composite
def png_header_lies(draw: st.DrawFn) -> bytes:
    """PNG with a rewritten (and correctly checksummed) IHDR: any size, depth, colour type, interlace."""
    ihdr = struct.pack(">IIBBBBB", draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)),
                       draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0])), draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7])),
                       draw(st.integers(0, 1)), draw(st.integers(0, 1)), draw(st.integers(0, 2)))
    if draw(st.booleans()):  # small sizes too, which get decoded
        ihdr = struct.pack(">II", draw(st.integers(0, 64)), draw(st.integers(0, 64))) + ihdr[8:]
    return PNG[:8] + png_chunk(b"IHDR", ihdr) + PNG[33:]


def images() -> st.SearchStrategy[bytes]:
    valid = st.sampled_from([PNG, JPEG])
    return st.one_of(st.binary(max_size=512), valid.flatmap(byte_mutation), png_header_lies())


def json_text() -> st.SearchStrategy[str]:
    """JSON text: arbitrary values, deep nesting, integers too long to convert, and plain garbage."""
    return st.one_of(
        st.text(max_size=64),
        json_values.map(json.dumps),
        st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
        st.integers(20, 200).map(lambda n: '{"a":' * n + "1" + "}" * n),
        st.just('{"type": "encode", "request_id": ' + BIG_INT + "}"),
        st.just('{"type": "encode", "request_id": "r", "seed": -' + BIG_INT + "}"),
        json_values.map(lambda v: json.dumps({"type": "chunk", "request_id": v, "chunk": 0, "chunks": 2,
                                              "data": "{"})),
    )


@st.composite
def chunk_headers(draw: st.DrawFn) -> dict[str, Any]:
    """A binary message header, often a chunk's, with fields of any JSON type."""
    header: dict[str, Any] = {"type": draw(st.sampled_from(["encode", "interpolate", "chunk"]) | json_scalars),
                              "request_id": draw(st.sampled_from(["a", "b", "c"]) | json_values)}
    if draw(st.integers(0, 3)):
        header["chunk"] = draw(st.integers(-1, 4) | json_scalars)
        header["chunks"] = draw(st.integers(-1, 4) | json_scalars)
    return header


@st.composite
def ws_messages(draw: st.DrawFn) -> bytes | str:
    """What a WebSocket peer may send: binary (EDS1 framed or not) or text, chunks of any shape included."""
    kind = draw(st.sampled_from(["binary", "binary-raw", "binary-lying", "text", "text-chunk"]))
    if kind == "binary":
        return pack_binary(draw(chunk_headers()), draw(st.binary(max_size=700)))
    if kind == "binary-raw":
        return draw(st.binary(max_size=64))
    if kind == "binary-lying":
        head = draw(st.sampled_from([b"{}", b'{"type":"a","request_id":"x"}', b"[", b"\xff", ("[" * 40).encode()]))
        return b"EDS1" + struct.pack("<I", draw(st.integers(0, 2**32 - 1))) + head + draw(st.binary(max_size=16))
    if kind == "text":
        return draw(json_text())
    return json.dumps({"type": "chunk", "request_id": draw(st.sampled_from(["a", "b"]) | json_values),
                       "chunk": draw(st.integers(-1, 3) | json_scalars),
                       "chunks": draw(st.integers(-1, 3) | json_scalars),
                       "data": draw(st.text(max_size=600) | json_scalars)})


# -- properties ----------------------------------------------------------------------------------------------


@FUZZ
@given(data=blobs(), frames=st.sampled_from([None, 1, 2]))
def test_the_blob_decoder_only_refuses_with_4xx(data, frames):
    only_4xx(lambda: unpack_encoding(data, frames=frames, max_pixels=BUDGET))


@FUZZ
@given(data=containers(), names=st.sampled_from([("frame0", "frame1"), ("frame",)]))
def test_the_frames_container_decoder_only_refuses_with_4xx(data, names):
    only_4xx(lambda: unpack_frames(data, names, BUDGET))


@FUZZ
@given(data=images())
def test_the_image_decoder_only_refuses_with_4xx(data):
    only_4xx(lambda: decode_image(data, "frame", BUDGET))


@FUZZ
@given(data=st.one_of(st.binary(max_size=256), ws_messages().filter(lambda m: isinstance(m, bytes))))
def test_binary_message_framing_only_refuses_with_4xx(data):
    only_4xx(lambda: unpack_binary(data))


@FUZZ
@given(text=json_text())
def test_text_message_parsing_only_refuses_with_4xx(text):
    only_4xx(lambda: parse_text(text))


@st.composite
def chunked_message(draw: st.DrawFn) -> list[bytes | str]:
    """A whole message split into its chunks, in order: binary or text, from a few bytes to twice the 2048 bytes
    the reassembly property's reassembler takes."""
    rid = draw(st.sampled_from(["a", "b", "c"]))
    size = draw(st.sampled_from([0, 2047, 2048, 2049, 4096]) | st.integers(0, 4096))
    payload = (draw(st.binary(min_size=1, max_size=16)) * size)[:size]  # its size matters here, not its bytes
    chunk = draw(st.integers(64, 1500))
    if draw(st.booleans()):
        return list(split_binary({"type": "encode", "request_id": rid}, payload, chunk))
    return list(split_text({"type": "encode", "request_id": rid, "payload": payload[:size // 2].hex()}, chunk))


def message_sequences() -> st.SearchStrategy[list[bytes | str]]:
    """What a peer sends on one connection: single messages of any shape and whole chunked messages, mixed."""
    return st.lists(st.one_of(ws_messages().map(lambda m: [m]), chunked_message()), max_size=12).map(
        lambda groups: [m for group in groups for m in group])


def feed(reassembler: Reassembler, message: bytes | str) -> tuple[int, Any] | None:
    """One message in, as a server takes it; out, a whole message with its size (its payload's bytes, or its
    text's characters: what max_bytes bounds), or None while chunks are missing."""
    if isinstance(message, bytes):
        whole = reassembler.feed_binary(message)
        return None if whole is None else (len(whole[1]), whole)
    parsed = parse_text(message)
    if parsed.get("type") != "chunk":
        single = reassembler.feed_text(message)
        return None if single is None else (len(message), single)
    joined = reassembler.feed_chunk(parsed)
    return None if joined is None else (len(joined), parse_text(joined))


@FUZZ
@given(messages=message_sequences())
def test_reassembly_only_refuses_with_4xx_and_stays_bounded(messages):
    """Any sequence of messages: each is refused with a 4xx or accepted; never more than max_pending partial
    messages, and no whole message over max_bytes comes out."""
    reassembler = Reassembler(max_bytes=2048, max_pending=3)
    for message in messages:
        out: list[Any] = []
        only_4xx(lambda m=message, out=out: out.append(feed(reassembler, m)))
        if out and out[0] is not None:
            size, _ = out[0]
            assert size <= 2048, f"a whole message of {size} bytes came out of a reassembler bounded at 2048"
        assert len(reassembler.pending()) <= 3


def test_a_chunked_message_over_max_bytes_is_refused_and_one_at_max_bytes_comes_back():
    """The bound of the property above, at its edge: max_bytes of payload (or text) pass, one more is refused."""
    for size, refused in ((2048, False), (2049, True)):
        binary = split_binary({"type": "encode", "request_id": "r"}, b"x" * size, 700)
        text_message = json.dumps({"type": "encode", "request_id": "r", "p": ""}, separators=(",", ":"))
        padded = {"type": "encode", "request_id": "r", "p": "y" * (size - len(text_message))}
        text = split_text(padded, 700)
        for messages in (binary, text):
            reassembler = Reassembler(max_bytes=2048)
            outs, errors = [], []
            for m in messages:
                try:
                    outs.append(feed(reassembler, m))
                except EdenError as exc:
                    errors.append(exc.code)
            wholes = [o for o in outs if o is not None]
            if refused:
                assert wholes == [] and errors[:1] == ["PAYLOAD_TOO_LARGE"], (size, errors)
            else:
                assert errors == [] and [w[0] for w in wholes] == [2048], (size, outs)


@FUZZ
@given(payload=st.binary(max_size=3000), chunk=st.integers(1, 1200), rid=st.text(min_size=1, max_size=8),
       drop=st.integers(-1, 5), swap=st.booleans())
def test_a_chunked_message_comes_back_whole_and_a_changed_chunk_set_never_does(payload, chunk, rid, drop, swap):
    """A message split into chunks comes back whole, once, equal to what was sent; with a chunk dropped or two
    swapped no whole message comes back (each refusal a 4xx), so a changed set is never mixed up."""
    parts = split_binary({"type": "encode", "request_id": rid}, payload, chunk)
    message = {"type": "encode", "request_id": rid, "payload": payload.hex()}
    texts = split_text(message, chunk)
    for chunks, feed_name, sent in ((parts, "feed_binary", ({"type": "encode", "request_id": rid}, payload)),
                                    (texts, "feed_text", message)):
        chunks = list(chunks)
        changed = False
        if 0 <= drop < len(chunks) and len(chunks) > 1:
            del chunks[drop]
            changed = True
        if swap and len(chunks) > 2:
            chunks[0], chunks[1] = chunks[1], chunks[0]
            changed = True
        step = getattr(Reassembler(max_bytes=10**6), feed_name)
        whole, refusals = [], []
        for c in chunks:
            got: list[Any] = []
            refusal = only_4xx(lambda c=c, got=got, step=step: got.append(step(c)))
            refusals += [refusal] if refusal is not None else []
            whole += [g for g in got if g is not None]
        if changed:
            assert whole == [], f"{feed_name}: a message came back whole from a changed chunk set"
        else:
            assert refusals == [], f"{feed_name}: chunks of a valid message refused: {refusals[0].message}"
            assert whole == [sent], f"{feed_name}: {len(chunks)} chunks of a valid message did not come back whole"
