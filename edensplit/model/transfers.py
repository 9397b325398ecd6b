"""Encodings (and the edge's frames) between the host and a GPU without holding the model thread (issue #16), on
copy streams of their own (one per device and direction).

To the host (the cloud's answer): the tokens are cast to the wire's float dtype on the device (half the bytes of
float32 to move), then copied into pinned host memory on the copy stream, so the copy runs on the copy engine while
the model thread starts the next frame's compute; whoever reads the host tensors (the cloud's encode step, on the
thread pool) waits for the copy first.

To the device (the edge's request): the decode step (thread pool) copies an encoding's tensors to the device on the
copy stream as they are (the wire dtype), while the model thread computes the request before; the model thread's
stream waits for that copy before it uses them (`DeviceCopy.use`), and the cast to the model's dtype is then its
own, on the device.

From the edge, its uint8 frames are copied to the host the same way: the model thread queues the sampling, the
decoder and the copy, and goes on to the next request while the GPU works; the encode step waits for the copy.

On a CPU nothing moves. A cast gives the same bits on either device (a conversion rounds to nearest even on both),
so an answer is the same wherever it was made.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

import torch
from torch import Tensor

from edensplit.model.encoding import FrameEncoding

T = TypeVar("T")
TO_HOST, TO_DEVICE = "to host", "to device"
_streams: dict[tuple[torch.device, str], torch.cuda.Stream] = {}
_streams_lock = threading.Lock()


def copy_stream(device: torch.device, direction: str) -> torch.cuda.Stream:
    """The device's stream for copies in one `direction` (made on first use). One per direction: a copy to the
    device (the decode step's, from pageable memory, which waits for the copies queued before it on its stream)
    never waits behind a copy to the host queued after the GPU's work in progress."""
    with _streams_lock:
        stream = _streams.get((device, direction))
        if stream is None:
            stream = _streams[device, direction] = torch.cuda.Stream(device)
        return stream


def _tensors(encoding: FrameEncoding) -> list[Tensor]:
    return [encoding.cond_dit, encoding.cond_dec, encoding.mean, encoding.std]


class HostCopy(Generic[T]):
    """Something on its way to the host (an encoding, frames): `wait()` gives it once its copy is done (at once
    when it was on the CPU)."""

    def __init__(self, value: T, done: torch.cuda.Event | None = None):
        self._value, self._done = value, done

    def wait(self) -> T:
        """Its CPU tensors, once their copy from the device has finished (the GIL is let go meanwhile)."""
        if self._done is not None:
            self._done.synchronize()
            self._done = None
        return self._value


def pinned(shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """Page-locked host memory for a copy from a GPU (torch's caching host allocator reuses it once the copies
    that used it are done)."""
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def _to_pinned(sources: list[Tensor], device: torch.device) -> tuple[list[Tensor], torch.cuda.Event]:
    """`sources` copied into pinned memory on `device`'s copy stream, after the work queued so far on the current
    stream; returns as soon as the copies are queued, with the event that says they are done."""
    compute, stream = torch.cuda.current_stream(device), copy_stream(device, TO_HOST)
    stream.wait_stream(compute)  # the kernels that make the sources first
    hosts: list[Tensor] = []
    with torch.cuda.stream(stream):
        for source in sources:
            host = pinned(source.shape, source.dtype)
            host.copy_(source, non_blocking=True)
            if source.device.type == "cuda":  # (the stand-in's mean and std are made on the CPU)
                source.record_stream(stream)  # its memory is not reused before the copy has read it
            hosts.append(host)
        done = torch.cuda.Event(blocking=True)  # a reader waiting for it sleeps, it does not spin on a core
        done.record(stream)
    return hosts, done


def to_host(encoding: FrameEncoding, tokens_dtype: torch.dtype | None = None) -> HostCopy[FrameEncoding]:
    """`encoding` on the CPU. From a GPU: its tokens cast to `tokens_dtype` there (None: kept as they are), then
    every tensor copied into pinned memory on the device's copy stream; the call returns once the copy is queued."""
    device = encoding.cond_dit.device
    if device.type != "cuda":
        return HostCopy(encoding.to("cpu"))
    sources = _tensors(encoding)
    if tokens_dtype is not None:
        sources[:2] = [t.to(tokens_dtype) for t in sources[:2]]
    hosts, done = _to_pinned(sources, device)
    return HostCopy(FrameEncoding(*hosts, encoding.geometry), done)


def tensor_to_host(tensor: Tensor) -> HostCopy[Tensor]:
    """`tensor` on the CPU (as it is there), or from a GPU copied into pinned memory as `to_host` copies (the edge's
    uint8 frames: the model thread queues the copy and takes the next request while the GPU finishes this one)."""
    if tensor.device.type != "cuda":
        return HostCopy(tensor)
    hosts, done = _to_pinned([tensor], tensor.device)
    return HostCopy(hosts[0], done)


class DeviceCopy:
    """An encoding on its way to a GPU: `use()` gives it for work queued on the current stream from then on."""

    def __init__(self, encoding: FrameEncoding, done: torch.cuda.Event):
        self._encoding, self._done = encoding, done

    def use(self) -> FrameEncoding:
        """The encoding on the device; the current stream waits for its copy (on the device: the call does not
        block), and its memory is not reused before what that stream queues has run."""
        if self._done is not None:
            stream = torch.cuda.current_stream(self._encoding.cond_dit.device)
            stream.wait_event(self._done)
            for tensor in _tensors(self._encoding):
                tensor.record_stream(stream)
            self._done = None
        return self._encoding


def to_device(encoding: FrameEncoding, device: torch.device) -> DeviceCopy | None:
    """`encoding`'s tensors copied to `device` on its copy stream, as they are (the caller's memory may be let go
    when this returns: a copy from pageable memory is staged before the call returns); None unless `device` is
    a GPU (nothing to stage)."""
    if device.type != "cuda":
        return None
    stream = copy_stream(device, TO_DEVICE)
    with torch.cuda.stream(stream):
        moved = [t.to(device, non_blocking=True) for t in _tensors(encoding)]
        done = torch.cuda.Event()
        done.record(stream)
    return DeviceCopy(FrameEncoding(*moved, encoding.geometry), done)
