"""How figures are timed: a backend's pair latencies through a stream, and calls timed in turns on the wall clock or
this process's CPU time, with the CUDA device synchronised around them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from edensplit.client.backends import Backend, Wrapper
from edensplit.client.jobs import interpolate_stream


class Timed(Wrapper):
    """Wraps a backend and records each pair's latency."""

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self.latencies: list[float] = []
        self.lock = threading.Lock()

    def interpolate_pair(self, frame0: np.ndarray, frame1: np.ndarray, seed: int, index: int = 0) -> np.ndarray:
        started = time.perf_counter()
        frame = self.inner.interpolate_pair(frame0, frame1, seed, index)
        with self.lock:
            self.latencies.append(time.perf_counter() - started)
        return frame


def run_once(backend: Backend, frames: list[np.ndarray], window: int) -> tuple[float, list[float], list]:
    """A clip through a backend: (seconds, each pair's latency, the generated frames)."""
    timed = Timed(backend)
    started = time.perf_counter()
    out = [f for f, generated in interpolate_stream(timed, frames, base_seed=0, window=window) if generated]
    return time.perf_counter() - started, timed.latencies, out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile of seconds, in milliseconds (NaN when there are none)."""
    return float(np.percentile(np.asarray(values), q)) * 1000 if values else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = ("wall", "cpu")
CLOCK_WORDS = {"wall": "wall-clock", "cpu": "process CPU-time"}


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, *, warmup: int = 1, iters: int = 3,
                     min_seconds: float = 0.0, max_iters: int = 50, clock: str = "wall") -> dict[str, float]:
    """Median milliseconds of each fn, timed in turns (a, b, a, b, ...) so that a machine's load falls on all of
    them alike: `warmup` calls of each first (not counted), then at least `iters` calls of each and `min_seconds`
    in all. On CUDA the device is synchronised before the clock starts and before it stops. `clock` "cpu" is
    this process's CPU time (time.process_time), not wall time: on a CPU shared with other work, what the call
    itself computed (with TORCH_THREADS=1, about its wall time on an idle core); CUDA always uses wall time."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    timer = time.process_time if clock == "cpu" and device.type != "cuda" else time.perf_counter
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = 0.0
    rounds = 0
    while rounds < iters or (spent < min_seconds and rounds < max_iters):
        for name, fn in fns.items():
            started = timer()
            fn()
            _sync(device)
            times[name].append(timer() - started)
            spent += times[name][-1]
        rounds += 1
    return {name: float(np.median(t)) * 1000 for name, t in times.items()}


def time_ms(fn: Callable[[], Any], device: torch.device, **timing: Any) -> float:
    """Median milliseconds of fn() (see `time_interleaved`)."""
    return time_interleaved({"fn": fn}, device, **timing)["fn"]
