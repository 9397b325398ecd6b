"""Encodings between the host and a GPU. On a CPU nothing moves. To the host: the tokens are cast on the device,
copied on a stream of their own after the encoder's work, and read only once that copy is done. To the device: copied
on that stream as they are, and used by the model's stream only after it waited for the copy. The GPU's side is a
recording stand-in for torch.cuda here (no CUDA device on this machine); benchmarks/gpu.sh runs the real one
(benchmarks/transfers_check.py: the bits against the CPU's)."""

from __future__ import annotations

import pytest
import torch

from edensplit.model import transfers
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.model.transfers import to_device, to_host

GEO = Geometry(32, 48, 16, 8)
NAMES = ("cond_dit", "cond_dec", "mean", "std")


def test_on_a_cpu_nothing_moves():
    enc = FrameEncoding(torch.randn(1, GEO.tokens, 4), torch.randn(1, GEO.tokens, 4), torch.rand(1), torch.rand(1), GEO)
    got = to_host(enc, torch.float16).wait()
    assert got.cond_dit is enc.cond_dit and got.cond_dec is enc.cond_dec and got.mean is enc.mean
    assert to_device(enc, torch.device("cpu")) is None


LOG: list[tuple] = []


class _Tensor:
    """A tensor on a (pretend) GPU or the CPU: what the transfers ask of one."""

    def __init__(self, name, dtype=torch.float32, device="cuda:0"):
        self.name, self.dtype = name, dtype
        self.shape, self.device = torch.Size([1, 6, 4]), torch.device(device)

    def to(self, target, non_blocking=False):
        if isinstance(target, torch.dtype):
            if target == self.dtype:
                return self
            LOG.append(("cast", self.name, target))
            return _Tensor(self.name, target, str(self.device))
        LOG.append(("move", self.name, str(target), non_blocking, _Stream.current))
        return _Tensor(self.name, self.dtype, str(target))

    def record_stream(self, stream):
        assert self.device.type == "cuda", "torch refuses record_stream on a CPU tensor"
        LOG.append(("record_stream", self.name, stream.name))


class _Pinned:
    def __init__(self, dtype):
        self.dtype, self.source = dtype, None

    def copy_(self, source, non_blocking=False):
        LOG.append(("copy", source.name, source.dtype, non_blocking, _Stream.current))
        self.source = source


class _Stream:
    current = "compute"

    def __init__(self, name):
        self.name = name

    def wait_stream(self, other):
        LOG.append(("wait_stream", self.name, other.name))

    def wait_event(self, event):
        LOG.append(("wait_event", self.name))


class _On:
    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        _Stream.current = self.stream.name

    def __exit__(self, *exc):
        _Stream.current = "compute"


class _Event:
    def __init__(self, blocking=False):
        self.blocking = blocking

    def record(self, stream):
        LOG.append(("event_record", stream.name))

    def synchronize(self):
        LOG.append(("synchronize",))


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's streams, events and pinned memory as recorders into LOG."""
    LOG.clear()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: _Stream("compute"))
    made = iter(["copy", "second copy stream"])
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: _Stream(next(made)))
    monkeypatch.setattr(torch.cuda, "stream", _On)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(transfers, "pinned", lambda shape, dtype: _Pinned(dtype))
    monkeypatch.setattr(transfers, "_streams", {})


def kinds() -> list[str]:
    return [event[0] for event in LOG]


def test_to_the_host_the_copy_waits_for_the_encoder_and_the_reader_waits_for_the_copy(fake_cuda):
    pending = to_host(FrameEncoding(*(_Tensor(n) for n in NAMES), GEO), torch.float16)
    casts = [e for e in LOG if e[0] == "cast"]
    assert [c[1:] for c in casts] == [("cond_dit", torch.float16), ("cond_dec", torch.float16)]  # half the bytes
    order = kinds().index("wait_stream")
    assert LOG[order][1:] == ("copy", "compute")  # the copy stream waits for the encoder's work and the casts
    assert max(i for i, k in enumerate(kinds()) if k == "cast") < order
    copies = [e for e in LOG if e[0] == "copy"]
    assert [c[1] for c in copies] == list(NAMES) and all(c[3] is True and c[4] == "copy" for c in copies)
    assert [c[2] for c in copies] == [torch.float16, torch.float16, torch.float32, torch.float32]
    assert {e[1] for e in LOG if e[0] == "record_stream"} == set(NAMES)  # no source's memory reused too soon
    assert LOG[-1] == ("event_record", "copy") and "synchronize" not in kinds()  # queued, not waited for

    assert pending._done.blocking  # the reader (a thread-pool thread) sleeps until the copy is done
    got = pending.wait()
    assert LOG[-1] == ("synchronize",) and got.cond_dit.source.name == "cond_dit"
    pending.wait()
    assert kinds().count("synchronize") == 1  # waited for once


def test_to_the_host_a_wire_dtype_that_is_not_a_cast_moves_the_tokens_as_they_are(fake_cuda):
    """(and stats made on the CPU, as the stand-in's are, are copied without a stream to record)"""
    tokens = [_Tensor(n) for n in NAMES[:2]]
    to_host(FrameEncoding(*tokens, *(_Tensor(n, device="cpu") for n in NAMES[2:]), GEO), None)
    assert "cast" not in kinds()
    assert [e[2] for e in LOG if e[0] == "copy"] == [torch.float32] * 4
    assert [e[1] for e in LOG if e[0] == "record_stream"] == ["cond_dit", "cond_dec"]


def test_to_the_device_the_copy_is_on_its_stream_and_the_model_waits_for_it_before_use(fake_cuda):
    staged = to_device(FrameEncoding(*(_Tensor(n, torch.float16, "cpu") for n in NAMES), GEO), torch.device("cuda:0"))
    assert [e for e in LOG if e[0] == "move"] == [("move", n, "cuda:0", True, "copy") for n in NAMES]
    assert LOG[-1] == ("event_record", "copy") and "cast" not in kinds()  # the wire dtype: the model casts later
    LOG.clear()
    used = staged.use()
    assert LOG[0] == ("wait_event", "compute")  # the model's stream waits for the copy (on the device)
    assert LOG[1:] == [("record_stream", n, "compute") for n in NAMES]  # freed only after the model's use
    assert used.cond_dit.device == torch.device("cuda:0") and used.cond_dit.dtype == torch.float16
    staged.use()
    assert kinds().count("wait_event") == 1


def test_the_edges_frames_go_to_the_host_on_the_copy_stream_and_are_read_after_the_copy(fake_cuda):
    frames = _Tensor("frames", torch.uint8)
    pending = transfers.tensor_to_host(frames)
    assert LOG[0] == ("wait_stream", "copy", "compute")  # after the sampler's and the decoder's kernels
    assert LOG[1] == ("copy", "frames", torch.uint8, True, "copy") and LOG[2] == ("record_stream", "frames", "copy")
    assert LOG[-1] == ("event_record", "copy") and pending._done.blocking
    assert pending.wait().source is frames and LOG[-1] == ("synchronize",)
    cpu = torch.zeros(2, 3, dtype=torch.uint8)
    assert transfers.tensor_to_host(cpu).wait() is cpu  # on a CPU, the frames as they are


def test_copies_to_the_device_never_queue_behind_copies_to_the_host(fake_cuda):
    """A copy to the host waits for the GPU's work in progress; a request's copy to the device (from pageable memory,
    which waits for what its stream holds) must not wait behind it: a stream for each direction."""
    transfers.tensor_to_host(_Tensor("frames", torch.uint8))
    to_device(FrameEncoding(*(_Tensor(n, torch.float16, "cpu") for n in NAMES), GEO), torch.device("cuda:0"))
    transfers.tensor_to_host(_Tensor("frames", torch.uint8))
    streams = [e[4] for e in LOG if e[0] in ("copy", "move")]
    assert streams == ["copy"] + ["second copy stream"] * 4 + ["copy"]
