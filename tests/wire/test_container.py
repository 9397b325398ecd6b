"""The one-copy safetensors writer (`container.pack`): the very bytes `canonical(safetensors' save)` gives, for every
wire dtype's blob and for frames containers, so a blob or a request body is byte for byte what it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from edensplit.errors import ErrorCode, WireError
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.wire import codecs
from edensplit.wire.blob import (
    SAFETENSORS_DTYPES,
    all_finite,
    pack_encoding,
    read_blob_header,
    unpack_encoding,
)
from edensplit.wire.container import canonical, pack
from edensplit.wire.frames import FORMAT, VERSION, pack_frames, unpack_frames


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def encoding(frames: int = 2) -> FrameEncoding:
    geo = Geometry(40, 56, 32, 16)
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randn(frames, geo.tokens, 24, generator=g) for _ in range(2)]
    return FrameEncoding(*tokens, torch.rand(frames, generator=g), torch.rand(frames, generator=g) + 0.5, geo)


@pytest.mark.parametrize("wire_dtype", codecs.names())
def test_a_blob_is_safetensors_canonical_bytes(wire_dtype):
    enc, codec = encoding(), codecs.get(wire_dtype)
    blob = pack_encoding(enc, 0.25, wire_dtype, extra={"request_id": "r-1", "ü": "é"})
    tensors = {"mean": enc.mean, "std": enc.std}
    for name in ("cond_dit", "cond_dec"):
        tensors.update(codec.pack(name, getattr(enc, name)))
    reference = canonical(safetensors.torch.save(tensors, metadata=read_blob_header(blob)))
    assert isinstance(blob, bytes) and blob == reference
    assert set(SAFETENSORS_DTYPES) >= {t.dtype for t in tensors.values()}
    assert unpack_encoding(blob).extra == {"request_id": "r-1", "ü": "é"}


def test_a_frames_container_is_safetensors_canonical_bytes():
    frames = {"frame1": np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3),
              "frame0": np.zeros((5, 7, 3), np.uint8)[:, ::-1]}  # not contiguous: copied once
    body = pack_frames(frames, {"seed": "3"})
    reference = canonical(safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in frames.items()},
                                                 metadata={"format": FORMAT, "version": VERSION, "seed": "3"}))
    assert isinstance(body, bytes) and body == reference
    out, metadata = unpack_frames(body, ("frame0", "frame1"))
    assert all(np.array_equal(out[k], frames[k]) for k in frames) and metadata == {"seed": "3"}


def test_every_dtype_it_names_is_laid_out_as_safetensors_does():
    tensors = {f"t{i}": torch.ones(3, dtype=dtype) for i, dtype in enumerate(SAFETENSORS_DTYPES)}
    ours = pack({k: (SAFETENSORS_DTYPES[t.dtype], t.shape, tensor_bytes(t)) for k, t in tensors.items()}, {"a": "b"})
    assert ours == canonical(safetensors.torch.save(tensors, metadata={"a": "b"}))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_finds_any_nan_or_infinity_wherever_it_is(dtype):
    for n in (1, 2, 17, 4099, 3 * 2**16 + 5):  # scalar tails, vector bodies, several threads' pieces
        t = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dtype)
        assert all_finite(t)
        for position in {0, 1 % n, n // 2, n - 1}:
            for bad in (float("nan"), float("inf"), -float("inf")):
                u = t.clone()
                u[position] = bad
                assert not all_finite(u), (n, position, bad)
    assert all_finite(torch.empty(0, dtype=dtype))


def rebuilt(blob: bytes, edit=lambda header: header, pad: int = 0) -> bytes:
    """A container with its header edited (or padded by `pad` spaces), the tensors' bytes as they were."""
    length = int.from_bytes(blob[:8], "little")
    header = json.dumps(edit(json.loads(blob[8:8 + length]))).encode() + b" " * pad
    return len(header).to_bytes(8, "little") + header + blob[8 + length:]


def test_a_bytearray_body_is_read_as_views_of_it_and_anything_else_is_copied():
    blob = pack_encoding(encoding(), 0.5, codecs.FLOAT16.name)
    body = bytearray(blob)
    start = np.frombuffer(body, np.uint8).ctypes.data
    viewed, copied = unpack_encoding(body).encoding, unpack_encoding(blob).encoding
    for name in ("cond_dit", "cond_dec", "mean", "std"):
        assert torch.equal(getattr(viewed, name), getattr(copied, name))
        assert start <= getattr(viewed, name).data_ptr() < start + len(body), name  # the body's own memory
    frames = {"frame": np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)}
    container = bytearray(pack_frames(frames))
    view = unpack_frames(container, ("frame",))[0]["frame"]
    assert np.array_equal(view, frames["frame"]) and np.shares_memory(view, np.frombuffer(container, np.uint8))
    # Tensors not where safetensors would put them: an odd header length (misaligned data) is copied, aliasing
    # tensors are refused, as from bytes.
    odd = rebuilt(blob, pad=1)
    assert torch.equal(unpack_encoding(bytearray(odd)).encoding.cond_dit, copied.cond_dit)

    def alias(header):
        header["cond_dec"]["data_offsets"] = header["cond_dit"]["data_offsets"]
        return header

    for data in (rebuilt(blob, alias), bytearray(rebuilt(blob, alias))):
        with pytest.raises(WireError) as info:
            unpack_encoding(data)
        assert info.value.code == ErrorCode.INVALID_BLOB
