"""Encodings to the host: nothing moves on a CPU; from a GPU, the tokens are cast on the device, copied on a stream
of their own after the encoder's work, and read only once that copy is done. The GPU's side is a recording stand-in
for torch.cuda here (no CUDA device on this machine); benchmarks/gpu.sh runs the real one."""

from __future__ import annotations

import pytest
import torch

from edensplit.model import host_copy
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.model.host_copy import to_host

GEO = Geometry(32, 48, 16, 8)


def test_on_a_cpu_the_encoding_is_the_one_computed():
    enc = FrameEncoding(torch.randn(1, GEO.tokens, 4), torch.randn(1, GEO.tokens, 4), torch.rand(1), torch.rand(1), GEO)
    got = to_host(enc, torch.float16).wait()
    assert got.cond_dit is enc.cond_dit and got.cond_dec is enc.cond_dec and got.mean is enc.mean


class _Log(list):
    def __call__(self, *event):
        self.append(event)


class _Device:
    """A tensor on a (pretend) GPU: what `to_host` asks of one."""

    def __init__(self, log, name, dtype=torch.float32, device="cuda:0"):
        self.log, self.name, self.dtype = log, name, dtype
        self.shape, self.device = torch.Size([1, 6, 4]), torch.device(device)

    def to(self, dtype):
        if dtype == self.dtype:
            return self
        self.log("cast", self.name, dtype)
        return _Device(self.log, self.name, dtype)

    def record_stream(self, stream):
        assert self.device.type == "cuda", "torch refuses record_stream on a CPU tensor"
        self.log("record_stream", self.name, stream)


class _Host:
    def __init__(self, log, dtype):
        self.log, self.dtype, self.source = log, dtype, None

    def copy_(self, source, non_blocking=False):
        self.log("copy", source.name, source.dtype, non_blocking, _Stream.current)
        self.source = source


class _Stream:
    current = "compute"

    def __init__(self, name):
        self.name = name

    def wait_stream(self, other):
        _LOG("wait_stream", self.name, other.name)


class _Context:
    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        _Stream.current = self.stream.name

    def __exit__(self, *exc):
        _Stream.current = "compute"


class _Event:
    def record(self, stream):
        _LOG("event_record", stream.name)

    def synchronize(self):
        _LOG("synchronize")


_LOG = _Log()


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's streams, events and pinned memory as recorders into _LOG."""
    _LOG.clear()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: _Stream("compute"))
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: _Stream("copy"))
    monkeypatch.setattr(torch.cuda, "stream", _Context)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(host_copy, "pinned", lambda shape, dtype: _Host(_LOG, dtype))
    monkeypatch.setattr(host_copy, "_streams", {})


def test_from_a_gpu_the_copy_waits_for_the_encoder_and_the_reader_waits_for_the_copy(fake_cuda):
    names = ("cond_dit", "cond_dec", "mean", "std")
    enc = FrameEncoding(*(_Device(_LOG, n) for n in names), GEO)

    pending = to_host(enc, torch.float16)
    kinds = [e[0] for e in _LOG]
    assert kinds.count("cast") == 2 and {e[1] for e in _LOG if e[0] == "cast"} == {"cond_dit", "cond_dec"}
    assert all(e[2] == torch.float16 for e in _LOG if e[0] == "cast")  # half the bytes cross
    order = kinds.index("wait_stream")
    assert _LOG[order][1:] == ("copy", "compute")  # the copy stream waits for the encoder's work and the casts
    assert max(i for i, k in enumerate(kinds) if k == "cast") < order
    copies = [e for e in _LOG if e[0] == "copy"]
    assert [c[1] for c in copies] == list(names) and all(c[3] is True and c[4] == "copy" for c in copies)
    assert [c[2] for c in copies] == [torch.float16, torch.float16, torch.float32, torch.float32]
    assert {e[1] for e in _LOG if e[0] == "record_stream"} == set(names)  # no source's memory reused too soon
    assert kinds[-1] == "event_record" and _LOG[-1][1] == "copy" and "synchronize" not in kinds  # queued, not waited

    got = pending.wait()
    assert _LOG[-1] == ("synchronize",) and got.cond_dit.source.name == "cond_dit"
    pending.wait()
    assert kinds.count("synchronize") == 0 and [e[0] for e in _LOG].count("synchronize") == 1  # waited once


def test_a_wire_dtype_that_is_not_a_cast_moves_the_tokens_as_they_are(fake_cuda):
    """(and stats made on the CPU, as the stand-in's are, are copied without a stream to record)"""
    tokens = [_Device(_LOG, n) for n in ("cond_dit", "cond_dec")]
    to_host(FrameEncoding(*tokens, *(_Device(_LOG, n, device="cpu") for n in ("mean", "std")), GEO), None)
    assert not [e for e in _LOG if e[0] == "cast"]
    assert [e[2] for e in _LOG if e[0] == "copy"] == [torch.float32] * 4
    assert [e[1] for e in _LOG if e[0] == "record_stream"] == ["cond_dit", "cond_dec"]
