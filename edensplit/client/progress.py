"""What a job tells its user while it runs and when it ends: progress on stderr, and where the time went.

- `Progress`: output frames done/total, output frames per second, ETA and megabytes sent. On a terminal a
  bar (tqdm) redrawn in place; otherwise (a log file, a pipe, CI) one plain line every `every_s` seconds
  (`EDENSPLIT_PROGRESS_EVERY`, default 5), and a last one at the end:

      edensplit interpolate: 120/239 frames (50%), 14.2 frames/s, ETA 0:08, 35.1 MB sent

- `Meter` / `metered`: a request hook on the backend's server clients (the `Cloud`'s and the `Edge`'s) for the
  job's length, counting the bytes of each request and answer, the client's wall time per request and the
  server's own processing time (the answers' `processing_time` metadata, `X-Processing-Time` over HTTP).
- `Timings` and `stage_summary`: the time per stage at the end, from the servers' processing times and
  the client's clocks: read (decoding the input), scene detection, encode (the cloud's processing
  time), transfer (each request's wall time less the server's processing time: the network, queueing,
  (de)serialisation and retries), interpolate (the edge's processing time; in flow B it includes the
  edge's own calls to the cloud; with --local, both stages in this process), keep (the job's state PNGs)
  and write (encoding and muxing the output). Stage times are summed over the requests and pairs in
  flight at once, so they add up to more than the wall time.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from tqdm import tqdm

from edensplit.client.backends import Backend
from edensplit.client.policy import Sent

PROGRESS_EVERY_ENV = "EDENSPLIT_PROGRESS_EVERY"
DEFAULT_EVERY_S = 5.0
PREFIX = "edensplit interpolate: "


def _json_size(value: Any) -> int:
    """About the bytes of a JSON value (the strings' and numbers' lengths; base64 images dominate)."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, Mapping):
        return sum(len(str(k)) + 4 + _json_size(v) for k, v in value.items()) + 2
    if isinstance(value, (list, tuple)):
        return sum(_json_size(v) + 1 for v in value) + 2
    return len(str(value))


@dataclass
class Meter:
    """Counts per server role ("cloud", "edge"), thread-safe: requests, bytes sent and received, the client's wall
    seconds and the server's processing seconds."""

    servers: dict[str, Counter[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, role: str, **counts: float) -> None:
        """Count one answered request: its sent and received bytes, wall and processing seconds."""
        with self.lock:
            self.servers.setdefault(role, Counter()).update(requests=1, **counts)

    def total(self, what: str) -> float:
        """`what` (sent, received...) over every server."""
        with self.lock:
            return sum(c[what] for c in self.servers.values())

    @property
    def sent(self) -> int:
        """Bytes sent to every server."""
        return int(self.total("sent"))

    @property
    def received(self) -> int:
        """Bytes received from every server."""
        return int(self.total("received"))

    def get(self, role: str) -> Counter[str]:
        """A copy of one server's counts (0 for what it never had)."""
        with self.lock:
            return Counter(self.servers.get(role, Counter()))


class MeterHook:
    """A request hook (`edensplit.client.policy.Hook`) counting each answered request into a Meter under a role:
    bytes each way, the client's wall time over its attempts, the server's own processing time."""

    def __init__(self, meter: Meter, role: str):
        self.meter, self.role = meter, role

    @contextlib.contextmanager
    def around(self, sent: Sent) -> Iterator[None]:
        yield
        answer, call = sent.answer, sent.call
        if answer is None:
            return
        wall = time.perf_counter() - sent.started
        try:
            processing = float(answer.metadata.get("processing_time") or 0.0)
        except (TypeError, ValueError):
            processing = 0.0
        self.meter.add(self.role, sent=len(call.body) if call.body is not None else _json_size(call.document),
                       received=len(answer.body) if answer.body else _json_size(answer.data), wall=wall,
                       processing=min(processing, wall))


@contextlib.contextmanager
def metered(backend: Backend, meter: Meter) -> Iterator[bool]:
    """Count the backend's requests into `meter` while the block runs (a hook on each of its server clients).
    Yields whether the backend talks to a cloud itself (flow A) rather than through the edge."""
    added: list[tuple[list[Any], MeterHook]] = []
    for role, service in backend.services.items():
        hooks = service.client.hooks
        hook = MeterHook(meter, role)
        hooks.append(hook)
        added.append((hooks, hook))
        with meter.lock:
            meter.servers.setdefault(role, Counter())  # counted from the start: "0.0 MB sent"
    try:
        yield "cloud" in backend.services
    finally:
        for hooks, hook in added:
            hooks.remove(hook)


# -- progress -------------------------------------------------------------------------------------------

def progress_every() -> float:
    """Seconds between plain progress lines (EDENSPLIT_PROGRESS_EVERY, default 5; 0: every frame)."""
    try:
        return max(float(os.environ.get(PROGRESS_EVERY_ENV, DEFAULT_EVERY_S)), 0.0)
    except ValueError:
        return DEFAULT_EVERY_S


def _clock(seconds: float) -> str:
    """H:MM:SS or M:SS."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Output frames done/total, frames/s, ETA and MB sent: a bar on a terminal, plain lines otherwise, or nothing.

    `mode`: "auto" (a bar when `stream` is a terminal, else lines), "bar", "lines" or "off"."""

    def __init__(self, total: int | None, *, mode: str = "auto", stream: IO[str] | None = None,
                 meter: Meter | None = None, every_s: float | None = None, unit: str = "frames"):
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"progress mode must be auto, bar, lines or off, got {mode!r}")
        self.mode, self.total, self.meter, self.unit = mode, total, meter, unit
        self.every_s = progress_every() if every_s is None else every_s
        self.done = 0
        self.started = time.perf_counter()
        self._last_line = self.started
        self._bar: tqdm | None = None
        if mode == "bar":
            self._bar = tqdm(total=total, unit=" frames", desc="interpolating", file=self.stream, leave=False,
                             dynamic_ncols=True)

    def fps(self) -> float:
        """Output frames per second so far."""
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The plain progress line (without the prefix)."""
        parts = [f"{self.done}/{self.total} {self.unit} ({100 * self.done // max(self.total, 1)}%)"
                 if self.total else f"{self.done} {self.unit}"]
        fps = self.fps()
        parts.append(f"{fps:.1f} {self.unit}/s")
        if self.total and fps > 0 and self.done < self.total:
            parts.append(f"ETA {_clock((self.total - self.done) / fps)}")
        if self.meter is not None and self.meter.servers:
            parts.append(f"{self.meter.sent / 1e6:.1f} MB sent")
        return ", ".join(parts)

    def update(self, done: int) -> None:
        """`done` output frames are written."""
        step, self.done = done - self.done, done
        if self.total is not None and done > self.total:
            self.total = done  # the container's count was an estimate
        if self._bar is not None:
            if self.total is not None and self._bar.total != self.total:
                self._bar.total = self.total
            postfix = f"{self.meter.sent / 1e6:.1f} MB sent" if self.meter is not None and self.meter.servers else ""
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(step)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self._last_line >= self.every_s:
                self._last_line = now
                self._print(self.line())

    def _print(self, text: str) -> None:
        print(PREFIX + text, file=self.stream, flush=True)

    def close(self, finished: bool = True) -> None:
        """Remove the bar, or print the last line (when the job finished)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and finished:
            self._print(self.line())
        self.mode = "off"


# -- timings --------------------------------------------------------------------------------------------

STAGES = ("read", "scene detection", "encode", "transfer", "interpolate", "keep", "write")


@dataclass
class Timings:
    """Seconds per stage (see the module docstring) and the job's wall time."""

    seconds: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    sent_mb: float = 0.0
    received_mb: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)  # a stage's qualifier ("cloud", "edge, incl. ...")

    def add(self, stage: str, seconds: float) -> None:
        """Add seconds to a stage."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def server_timings(timings: Timings, meter: Meter, *, flow_a: bool) -> None:
    """Fill encode, transfer and interpolate from the servers' counts."""
    cloud, edge = meter.get("cloud"), meter.get("edge")
    if cloud["requests"]:
        timings.add("encode", cloud["processing"])
        timings.notes["encode"] = "cloud"
    if edge["requests"]:
        timings.add("interpolate", edge["processing"])
        timings.notes["interpolate"] = "edge" if flow_a else "edge, with its calls to the cloud"
    if cloud["requests"] or edge["requests"]:
        timings.add("transfer", max(cloud["wall"] - cloud["processing"], 0.0)
                    + max(edge["wall"] - edge["processing"], 0.0))
    timings.sent_mb, timings.received_mb = meter.sent / 1e6, meter.received / 1e6


def stage_summary(timings: Timings) -> str:
    """One line: each stage's seconds, the wall time and the megabytes each way."""
    parts = []
    for stage in STAGES:
        if stage in timings.seconds:
            note = f" ({timings.notes[stage]})" if stage in timings.notes else ""
            parts.append(f"{stage}{note} {timings.seconds[stage]:.2f}")
    text = (f"time by stage, in seconds summed over the pairs in flight at once: {', '.join(parts)}; "
            f"wall {timings.wall:.2f} s")
    if timings.sent_mb or timings.received_mb:
        text += f"; {timings.sent_mb:.1f} MB sent, {timings.received_mb:.1f} MB received"
    return text
