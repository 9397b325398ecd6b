"""The enc_out blob: F frames' encodings (cloud -> edge) in a self-describing safetensors container.

Tensors: `cond_dit`, `cond_dec` [F, N, D] in the wire dtype, `mean`, `std` [F] float32. Metadata
(str -> str) says what they are: format/version, the frames' Geometry, the token grid and padding,
F, D, the wire dtype, the pair's raw `difference` (exact repr of the float) and any caller extras.
Everything is checked on unpack, so the edge never runs a model on tensors that do not fit; nothing
is deserialised as Python objects. A float32 blob round-trips bit for bit.

The wire dtypes are the codecs of `wire/codecs.py`: each says how the tokens are stored (e.g. int8 with
float32 per-token scales `cond_dit_scale`, `cond_dec_scale` [F, N] beside them) and come back; the tensors
and dtypes a blob must hold are the codec's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import safetensors.torch
import torch
from torch import Tensor

from edensplit.errors import ErrorCode, InputError, WireError
from edensplit.model.encoding import FrameEncoding, Geometry, is_valid_difference
from edensplit.wire import codecs
from edensplit.wire.buffers import answer_buffer
from edensplit.wire.container import canonical, check_format, layout, load, read_header
from edensplit.wire.images import check_pixels

FORMAT = "edensplit.enc_out"
VERSION = "1"
BLOB_MEDIA_TYPE = "application/vnd.edensplit.enc-out+safetensors"
TOKENS = ("cond_dit", "cond_dec")  # stored as their wire dtype's codec says
TENSORS = (*TOKENS, "mean", "std")
REQUIRED = ("format", "version", "height", "width", "multiple", "patch", "pad", "grid", "frames", "hidden_dim",
            "wire_dtype")
RESERVED = frozenset((*REQUIRED, "difference"))
WHAT = "enc_out"
_UINT = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class EncodedFrames:
    """An unpacked blob: the encoding (CPU, wire dtype), the pair's raw difference, and the extras."""

    encoding: FrameEncoding
    difference: float | None
    wire_dtype: str
    extra: dict[str, str] = field(default_factory=dict)


def pack_encoding(enc: FrameEncoding, difference: float | None = None, wire_dtype: str = codecs.DEFAULT,
                  extra: dict[str, str] | None = None) -> bytes:
    """FrameEncoding of F frames (+ the pair's raw difference, extra str metadata) -> enc_out blob bytes."""
    return bytes(encoding_view(enc, difference, wire_dtype, extra))


def encoding_view(enc: FrameEncoding, difference: float | None = None, wire_dtype: str = codecs.DEFAULT,
                  extra: dict[str, str] | None = None) -> memoryview:
    """`pack_encoding`'s bytes in a buffer of their own (`answer_buffer`'s: a shared-memory segment's when the
    answer goes there), each tensor written once into its place (a float wire dtype's tokens cast straight into
    it): what the cloud answers with, no bytes object copied from it."""
    codec = codecs.get(wire_dtype)
    extra = dict(extra or {})
    clash = sorted(RESERVED & extra.keys())
    if clash:
        raise InputError(f"extra metadata may not use the reserved keys {clash}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise InputError("extra metadata must map str to str")
    if difference is not None:
        difference = float(difference)
        if not is_valid_difference(difference):
            raise InputError(f"difference must be a finite cosine similarity in [-1, 1], got {difference!r}")
    geo = enc.geometry
    if enc.cond_dit.ndim != 3:
        raise InputError(f"cond_dit must be [F, N, D], got {list(enc.cond_dit.shape)}", code=ErrorCode.SHAPE_MISMATCH)
    frames, tokens, dim = enc.cond_dit.shape
    _check_shapes({"cond_dit": enc.cond_dit, "cond_dec": enc.cond_dec, "mean": enc.mean, "std": enc.std},
                  frames, geo.tokens, dim, InputError)
    tensors = {"mean": enc.mean.detach().to("cpu", torch.float32), "std": enc.std.detach().to("cpu", torch.float32)}
    target = {"mean": torch.float32, "std": torch.float32}
    for name in TOKENS:
        source = getattr(enc, name).detach().to("cpu")
        if codec.casts_to is not None:  # cast as it is written, below
            tensors[name], target[name] = source, codec.casts_to
        else:
            packed = codec.pack(name, source)
            tensors.update(packed)
            target.update({k: t.dtype for k, t in packed.items()})
    top, bottom, left, right = geo.padding
    metadata = {"format": FORMAT, "version": VERSION, "height": str(geo.height), "width": str(geo.width),
                "multiple": str(geo.multiple), "patch": str(geo.patch), "pad": f"{top},{bottom},{left},{right}",
                "grid": "{},{}".format(*geo.grid), "frames": str(frames), "hidden_dim": str(dim),
                "wire_dtype": wire_dtype, **extra}
    if difference is not None:
        metadata["difference"] = repr(difference)
    if any(dtype not in SAFETENSORS_DTYPES for dtype in target.values()):  # a codec's dtype `layout` does not rank
        stored = {k: t.to(target[k]).contiguous() for k, t in tensors.items()}
        return memoryview(canonical(safetensors.torch.save(stored, metadata=metadata)))
    sizes = {k: t.numel() * target[k].itemsize for k, t in tensors.items()}
    head, places = layout({k: (SAFETENSORS_DTYPES[target[k]], t.shape, sizes[k]) for k, t in tensors.items()},
                          metadata)
    out = answer_buffer(len(head) + sum(sizes.values()), BLOB_MEDIA_TYPE)
    out[:len(head)] = np.frombuffer(head, np.uint8)
    for name, offset in places:
        if sizes[name]:
            place = torch.frombuffer(out, dtype=target[name], count=tensors[name].numel(), offset=offset)
            place.view(tensors[name].shape).copy_(tensors[name])
    return memoryview(out)


SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                      torch.bool: "BOOL"}


TORCH_DTYPES = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}


def tensor_view(buffer: bytearray | memoryview, dtype: str, shape: list[int], count: int, offset: int) -> Tensor | None:
    """A tensor over `count` items of `buffer` from byte `offset` (its memory, not a copy); None for a dtype torch
    has no name for here."""
    if dtype not in TORCH_DTYPES:
        return None
    if count == 0:
        return torch.empty(shape, dtype=TORCH_DTYPES[dtype])
    return torch.frombuffer(buffer, dtype=TORCH_DTYPES[dtype], count=count, offset=offset).reshape(shape)


def read_blob_header(data: bytes) -> dict[str, str]:
    """The metadata of an enc_out blob, from its JSON header alone (format and version checked)."""
    _, metadata = read_header(data, WHAT)
    check_format(metadata, FORMAT, VERSION, WHAT)
    return metadata


def unpack_encoding(data: bytes | bytearray | memoryview, *, frames: int | None = None,
                    max_pixels: int | None = None) -> EncodedFrames:
    """enc_out blob bytes -> EncodedFrames (CPU tensors in the wire dtype), every field checked. From writable memory
    (a bytearray: a request body as the servers read it; a segment taken from shared memory), the tensors are views
    of it, not copies.

    `frames`, when given, is the number of frames the caller expects (2 for a pair); `max_pixels`, a
    caller's budget for the frames the blob stands for, is checked from the header, before loading.
    """
    metadata = read_blob_header(data)
    for key in REQUIRED:
        if key not in metadata:
            raise _invalid(f"metadata lacks {key!r}")
    wire_dtype = metadata["wire_dtype"]
    if wire_dtype not in codecs.names():
        raise _invalid(f"has unknown wire_dtype {wire_dtype!r}; expected one of {', '.join(codecs.names())}")
    codec = codecs.get(wire_dtype)
    height, width, multiple, patch, count, dim = (_uints(metadata, k, 1)[0] for k in
                                                  ("height", "width", "multiple", "patch", "frames", "hidden_dim"))
    grid, pad = tuple(_uints(metadata, "grid", 2)), tuple(_uints(metadata, "pad", 4, minimum=0))
    check_pixels(height * width * count, max_pixels, WHAT)
    geo = Geometry(height, width, multiple, patch)
    if grid != geo.grid:
        raise _shape(f"grid {list(grid)} does not fit a {height}x{width} frame (expected {list(geo.grid)})")
    if pad != geo.padding:
        raise _shape(f"pad {list(pad)} does not fit a {height}x{width} frame (expected {list(geo.padding)})")
    if frames is not None and count != frames:
        raise _shape(f"holds {count} frame(s), expected {frames}")
    difference = _difference(metadata.get("difference"))
    tensors = load(data, WHAT, safetensors.torch.load, tensor_view)
    names = (*TENSORS, *(side for name in TOKENS for side in codec.side_names(name)))
    if set(tensors) != set(names):
        raise _invalid(f"holds tensors {sorted(tensors)}, expected {sorted(names)}")
    for name in names:
        expected = codec.dtype if name in TOKENS else torch.float32
        if tensors[name].dtype != expected:
            raise _invalid(f"tensor {name} is {_dtype_name(tensors[name].dtype)}, expected {_dtype_name(expected)}")
    _check_shapes(tensors, count, grid[0] * grid[1], dim, WireError)
    for name in names:
        if tensors[name].is_floating_point() and not all_finite(tensors[name]):
            raise _invalid(f"tensor {name} holds non-finite values (NaN or inf)")
    for name in TOKENS:
        for side in codec.side_names(name):
            if list(tensors[side].shape) != [count, grid[0] * grid[1]]:
                raise _shape(f"tensor {side} is {list(tensors[side].shape)}, expected [frames, ph*pw] "
                             f"= {[count, grid[0] * grid[1]]}")
        try:
            tensors[name] = codec.unpack(name, tensors)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
    extra = {k: v for k, v in metadata.items() if k not in RESERVED}
    encoding = FrameEncoding(tensors["cond_dit"], tensors["cond_dec"], tensors["mean"], tensors["std"], geo)
    return EncodedFrames(encoding, difference, wire_dtype, extra)


def all_finite(tensor: Tensor) -> bool:
    """No NaN or infinity in a floating-point tensor: its minimum and maximum, in one pass and no temporary (both
    are NaN if any value is, and an infinity is one of them), 5x `isfinite(...).all()`'s speed on 25 MB."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return math.isfinite(low.item()) and math.isfinite(high.item())


def _check_shapes(tensors: dict[str, Tensor], frames: int, tokens: int, dim: int, error: type[InputError]) -> None:
    for name in TENSORS:
        expected = [frames, tokens, dim] if name.startswith("cond") else [frames]
        if list(tensors[name].shape) != expected:
            what = "[frames, ph*pw, hidden_dim]" if name.startswith("cond") else "[frames]"
            raise error(f"{WHAT}: tensor {name} has shape {list(tensors[name].shape)}, expected {expected} {what}",
                        code=ErrorCode.SHAPE_MISMATCH)


def _uints(metadata: dict[str, str], key: str, count: int, minimum: int = 1) -> list[int]:
    parts = metadata[key].split(",")
    if len(parts) != count or not all(_UINT.fullmatch(p) for p in parts):
        raise _invalid(f"metadata {key}={metadata[key]!r} is not {count} comma-separated integer(s)")
    values = [int(p) for p in parts]
    if min(values) < minimum:
        raise _invalid(f"metadata {key}={metadata[key]!r} must be at least {minimum}")
    return values


def _difference(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise _invalid(f"metadata difference={text!r} is not a number") from None
    if not is_valid_difference(value):
        raise _invalid(f"metadata difference={text!r} is not a finite cosine similarity in [-1, 1]")
    return value


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _invalid(problem: str) -> WireError:
    return WireError(f"{WHAT} {problem}", code=ErrorCode.INVALID_BLOB)


def _shape(problem: str) -> WireError:
    return WireError(f"{WHAT} {problem}", code=ErrorCode.SHAPE_MISMATCH)
