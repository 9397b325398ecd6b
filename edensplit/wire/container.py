"""The safetensors container both wire formats share: header parsing and loading, with errors as WireError.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor names -> dtype,
shape, byte offsets; `__metadata__` -> str: str) and the raw tensor bytes. Reading it never runs code.
The header is parsed here first (bounded, strict, checked against the buffer's length) so a bad or
truncated container is refused with a clear message before any tensor is materialised.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from safetensors import SafetensorError

from edensplit.errors import ErrorCode, WireError
from edensplit.wire.buffers import answer_buffer
from edensplit.wire.nesting import check_depth

MAX_HEADER_BYTES = 1 << 20
METADATA_KEY = "__metadata__"
# How safetensors lays tensors out: by dtype, the later here first, then by name (tests/wire holds `pack` to
# safetensors' own bytes).
DTYPE_ORDER = {name: rank for rank, name in enumerate(("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16",
                                                       "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"))}
ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "C64": 8, "F64": 8, "I64": 8, "U64": 8}
# Makes one tensor (or array) of a container as a view of its buffer: (buffer, dtype, shape, count, byte offset)
# -> the view, or None for a dtype it does not make.
View = Callable[[bytearray | memoryview, str, list[int], int, int], Any]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys in {sorted(keys)}")
    return dict(pairs)


def canonical(data: bytes) -> bytes:
    """A container with its header's keys sorted (safetensors writes them in a random order): the same
    tensors and metadata give the same bytes, so a resent request is recognisably the same request. The
    header keeps its length (the same JSON reordered, padded as before), so no tensor offset moves."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    if METADATA_KEY in header:
        header[METADATA_KEY] = dict(sorted(header[METADATA_KEY].items()))
    text = json.dumps(dict(sorted(header.items())), separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # not the writer's compact JSON after all: leave the container as it is
        return data
    return data[:8] + text + b" " * (length - len(text)) + data[8 + length:]


def layout(tensors: Mapping[str, tuple[str, Sequence[int], int]], metadata: Mapping[str, str]
           ) -> tuple[bytes, list[tuple[str, int]]]:
    """A safetensors container's first bytes (the header's length, then the header: `canonical`'s, keys sorted,
    padded to 8 bytes) for {name: (dtype, shape, byte size)} and metadata, and where each tensor's bytes go in
    the container ((name, byte offset), in safetensors' order)."""
    order = sorted(tensors, key=lambda name: (-DTYPE_ORDER[tensors[name][0]], name))
    header: dict[str, Any] = {METADATA_KEY: dict(sorted(metadata.items()))} if metadata else {}
    offset, offsets = 0, []
    for name in order:
        dtype, shape, size = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offsets.append((name, offset))
        offset += size
    text = json.dumps(dict(sorted(header.items())), separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    start = 8 + len(text)
    return len(text).to_bytes(8, "little") + text, [(name, start + at) for name, at in offsets]


def pack(tensors: Mapping[str, tuple[str, Sequence[int], memoryview]], metadata: Mapping[str, str]) -> bytes:
    """A safetensors container, {name: (dtype, shape, its bytes)} and metadata, in one copy of the tensors' bytes:
    the bytes `canonical(safetensors' save)` gives, without the two copies of every tensor that saving then
    rewriting the header take."""
    head, places = layout({name: (d, shape, data.nbytes) for name, (d, shape, data) in tensors.items()}, metadata)
    return b"".join((head, *(tensors[name][2] for name, _ in places)))


def pack_answer(tensors: Mapping[str, tuple[str, Sequence[int], memoryview]], metadata: Mapping[str, str],
                media_type: str) -> memoryview:
    """`pack`'s bytes laid out in an `answer_buffer` (a shared-memory segment's pages when the answer goes there):
    a server's binary answer, in one copy of the tensors' bytes."""
    head, places = layout({name: (d, shape, data.nbytes) for name, (d, shape, data) in tensors.items()}, metadata)
    out = answer_buffer(len(head) + sum(data.nbytes for _, _, data in tensors.values()), media_type)
    out[:len(head)] = np.frombuffer(head, np.uint8)
    for name, offset in places:
        data = tensors[name][2]
        if data.nbytes:
            out[offset:offset + data.nbytes] = np.frombuffer(data, np.uint8)
    return memoryview(out)


def _bad(what: str, problem: str) -> WireError:
    return WireError(f"{what} {problem}", code=ErrorCode.INVALID_BLOB)


def read_header(data: bytes, what: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Parse and check a container's header -> (tensor name -> {dtype, shape, data_offsets}, metadata)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _bad(what, f"must be bytes, got {type(data).__name__}")
    size = len(data)
    if size < 8:
        raise _bad(what, f"is not a safetensors container: only {size} bytes")
    length = int.from_bytes(bytes(data[:8]), "little")
    if length > MAX_HEADER_BYTES:
        raise _bad(what, f"is not a safetensors container: its header claims {length} bytes, "
                         f"more than the limit of {MAX_HEADER_BYTES}")
    if 8 + length > size:
        raise _bad(what, f"is truncated: its header claims {length} bytes but only {size - 8} follow")
    check_depth(bytes(data[8:8 + length]), f"{what} header", ErrorCode.INVALID_BLOB)
    try:
        header = json.loads(bytes(data[8:8 + length]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(what, f"is not a safetensors container: its header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise _bad(what, "is not a safetensors container: its header is not a JSON object")
    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise _bad(what, "has malformed metadata: expected an object of string values")
    end = 0
    for name, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and _int_list(entry.get("shape")) and _int_list(entry.get("data_offsets"), 2)):
            raise _bad(what, f"has a malformed header entry for tensor {name!r}")
        start, stop = entry["data_offsets"]
        if start > stop:
            raise _bad(what, f"has a malformed header entry for tensor {name!r}: offsets {start} > {stop}")
        end = max(end, stop)
    available = size - 8 - length
    if end > available:
        raise _bad(what, f"is truncated: its tensors need {end} bytes of data but only {available} follow")
    if end < available:
        raise _bad(what, f"has {available - end} unexpected bytes after its tensor data")
    return header, metadata


def _int_list(value: Any, length: int | None = None) -> bool:
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(type(v) is int and v >= 0 for v in value))


def check_format(metadata: dict[str, str], fmt: str, version: str, what: str) -> None:
    """Refuse a container whose `format` / `version` metadata is not the one expected."""
    if metadata.get("format") != fmt:
        raise _bad(what, f"has format {metadata.get('format')!r}, expected {fmt!r}")
    if metadata.get("version") != version:
        raise _bad(what, f"has unsupported version {metadata.get('version')!r}; this server reads version {version}")


def views(data: bytes | bytearray | memoryview, what: str, view: View) -> dict[str, Any] | None:
    """Every tensor of a container as a view of `data` (no copy), when `data` is writable (a bytearray: a request
    body as the servers read it) and lays its tensors out as safetensors does (one after another from the start,
    each of its shape's size and aligned to its item); else None (`load` copies them, and refuses what is wrong)."""
    if isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly):
        return None
    header, _ = read_header(data, what)
    start = 8 + int.from_bytes(bytes(data[:8]), "little")
    out, end = {}, 0
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        size, (begin, stop) = ITEM_BYTES.get(entry["dtype"]), entry["data_offsets"]
        count = math.prod(entry["shape"])
        if size is None or begin != end or stop - begin != count * size or (start + begin) % size:
            return None
        out[name] = view(data, entry["dtype"], entry["shape"], count, start + begin)
        if out[name] is None:
            return None
        end = stop
    return out


def load(data: bytes | bytearray | memoryview, what: str, loader: Any, view: View | None = None) -> dict[str, Any]:
    """Every tensor, as views of `data` where `views` can make them with `view`, else loaded (copied) with `loader`
    (safetensors.torch.load or safetensors.numpy.load)."""
    made = views(data, what, view) if view is not None else None
    if made is not None:
        return made
    try:
        return loader(bytes(data))
    except (SafetensorError, ValueError, TypeError) as e:
        raise _bad(what, f"is corrupt: {e}") from e
