"""Frame multiplication by recursive midpoints: 2x, 4x, 8x the frame rate from a model that makes t = 1/2 only.

A job at multiplier M = 2**L runs L levels, each a 2x stream over the one before it: level 1 interpolates the
input pairs (k, k+1) at t = 1/2; level 2 takes level 1's output f0, m01, f1, ... and interpolates each of its
pairs, giving t = 1/4 and 3/4; level 3 gives the eighths. A generated frame that becomes an input of the next
level is fed back as the uint8 image it came back as, exactly as if it had been read from disk. The levels
are chained generators, each with its own window of pairs in flight (level 2 works on pair k while level 1
works on pair k+1), so memory stays flat in the video's length.

Seeds follow the determinism contract (`edensplit.model.noise_seed`): the frame at time k + t of input pair k
uses noise seed `S + k + 2**32 * c(t)`, c(1/2) = 0, c(1/4) = 1, c(3/4) = 2, c(1/8) = 3 ... c(7/8) = 6. Level 1
is exactly the 2x job (same seeds, same sessions, same frames): the t = 1/2 frames are identical at every
multiplier, and a deeper midpoint's noise depends only on k and its own t.

Each level runs on its own backend (`level_backends`): a frame-once session per level (the edge interpolates
(i-1, i) of one ordered sequence, and each level is its own sequence). In flow A the levels share the client's
encodings (`SharedEncodings`), so every frame, input or generated, is encoded by the cloud once and a frame is
held only until the deepest level that needs it is past it. Flow B sends each level's frames to the edge,
which has the cloud encode them: a frame that is an input of several levels is encoded once per level there.

Scene cuts and still frames (`edensplit.client.scenes`) are decided once per input pair, before anything is
sent: such a pair's generated frames all repeat its earlier frame, at every level, with no request. A pair
after one not sent starts a new session run (the backend's `begin_video(index)`), once the pairs in flight
are done.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeVar

import numpy as np

from edensplit.client.backends import Backend, Tracker
from edensplit.client.rates import levels_of
from edensplit.client.scenes import STILL, SceneDetector
from edensplit.errors import ErrorCode, InputError
from edensplit.model.seeds import noise_seed

T = TypeVar("T")
INPUT, GENERATED, KNOWN = "input", "generated", "known"


# -- the stream ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairPlan:
    """What is done for one input pair: interpolated (reason None), or its earlier frame repeated (CUT or
    STILL); `known` holds its generated frames when a resumed job read them back."""

    index: int
    reason: str | None = None
    known: tuple[np.ndarray, ...] | None = None


@dataclass(frozen=True)
class Item:
    """A frame of some level's stream: its time `pos` in input frames (k + t), the plan of the input pair it
    ends or lies in (None for the first input frame), and what it is: INPUT, GENERATED, KNOWN (read back), or
    the reason (CUT, STILL) it repeats the frame before it."""

    frame: np.ndarray
    pos: Fraction
    plan: PairPlan | None
    kind: str

    @property
    def generated(self) -> bool:
        """Whether this is an output frame between two input frames."""
        return self.kind != INPUT


@dataclass
class StreamStats:
    """What a stream did: pairs sent to the backend per level, repeats, and the seconds its pair threads spent."""

    sent: list[int] = field(default_factory=list)  # model pairs per level
    repeated: int = 0  # midpoints repeated at deeper levels because their two frames were bit-equal
    model_seconds: float = 0.0  # summed over pairs (they overlap)
    keep_seconds: float = 0.0  # keeping generated frames (the job's state)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **seconds: float) -> None:
        """Add to the timers, thread-safe."""
        with self.lock:
            for name, value in seconds.items():
                setattr(self, name, getattr(self, name) + value)


def in_daemon_thread(fn: Callable[..., T], *args: Any) -> Future[T]:
    """Run fn(*args) on a daemon thread: a job stopped meanwhile (Ctrl-C, an error) does not wait for it."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to whoever waits for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="edensplit-pair", daemon=True).start()
    return future


def _inputs(frames: Iterable[np.ndarray], start: int, multi: int, detector: SceneDetector | None,
            known: Callable[[int], Sequence[np.ndarray] | None] | None, done: int,
            tracker: Tracker | None, levels: int) -> Iterator[Item]:
    """The input frames as items, each with its pair's plan; a resumed job's known pairs expanded in place."""
    it = iter(frames)
    prev = next(it, None)
    if prev is None:
        return
    if tracker is not None:
        tracker.register(prev, levels)
    yield Item(prev, Fraction(start), None, INPUT)
    for k, frame in enumerate(it, start=start):
        if frame.shape != prev.shape:
            raise InputError(f"frame {k + 1} is {frame.shape[1]}x{frame.shape[0]}, frame {k} "
                             f"{prev.shape[1]}x{prev.shape[0]}", code=ErrorCode.FRAME_SIZE_MISMATCH)
        reason = detector.classify(prev, frame) if detector is not None else None
        saved = known(k) if known is not None and k < done else None
        if saved is None:
            done = 0  # a frame not read back: this pair and every later one are made again
        plan = PairPlan(k, reason, None if saved is None else tuple(saved))
        for j, middle in enumerate(saved or (), start=1):
            if tracker is not None:
                tracker.register(middle, levels)
            yield Item(middle, k + Fraction(j, multi), plan, KNOWN)
        if tracker is not None:
            tracker.register(frame, levels)
        yield Item(frame, Fraction(k + 1), plan, INPUT)
        prev = frame


class _Pending:
    """A level's output in order: items, and futures of items (the pairs in flight)."""

    def __init__(self, tracker: Tracker | None):
        self.entries: deque[tuple[Future[Item] | Item, Item | None]] = deque()
        self.in_flight = 0
        self.tracker = tracker

    def add(self, entry: Future[Item] | Item, releases: Item | None = None) -> None:
        """Queue an output; `releases`: the item this level is done with once it is out."""
        self.entries.append((entry, releases))
        self.in_flight += isinstance(entry, Future)

    def flush(self, window: int) -> Iterator[Item]:
        """Yield what is ready in order, waiting for the oldest pair while `window` or more are in flight."""
        while self.entries:
            head, releases = self.entries[0]
            if isinstance(head, Future):
                if self.in_flight < window and not head.done():
                    return
                self.in_flight -= 1
                item = head.result()
            else:
                item = head
            self.entries.popleft()
            if releases is not None and self.tracker is not None:
                self.tracker.release(releases.frame)
            yield item


def _level(items: Iterator[Item], level: int, levels: int, multi: int, backend: Backend, base_seed: int, window: int,
           detect: bool, keep: Callable[[Item], None] | None, stats: StreamStats, tracker: Tracker | None
           ) -> Iterator[Item]:
    """Level `level` of `levels`: between each two consecutive items a and b, their midpoint (see the module
    docstring); yields a, mid, b, mid, ... in order."""
    scale = 2 ** (level - 1)  # this level's inputs are 1/scale input frames apart
    pending = _Pending(tracker)
    fresh = True  # the next model pair starts a session run: the first, or one after pairs not sent
    prev = next(items, None)
    if prev is None:
        return
    yield prev
    uses = levels - level  # deeper levels that take this level's frames as inputs
    for item in items:
        plan = item.plan
        assert plan is not None
        if plan.known is not None:  # a resumed pair: its frames are all there
            pending.add(item, releases=prev)
        elif plan.reason is not None or (detect and level > 1 and np.array_equal(prev.frame, item.frame)):
            reason = plan.reason or STILL
            if plan.reason is None:
                with stats.lock:
                    stats.repeated += 1
            middle = Item(prev.frame, (prev.pos + item.pos) / 2, plan, reason)
            if tracker is not None and uses:
                tracker.register(middle.frame, uses)
            pending.add(in_daemon_thread(_kept, middle, keep, stats) if keep is not None else middle)
            pending.add(item, releases=prev)
            fresh = True
        else:
            index = int(prev.pos * scale)
            if fresh:
                yield from pending.flush(0)  # a new session run: the pairs before it are done first
                backend.begin_video(index)
                fresh = False
            mid_pos = (prev.pos + item.pos) / 2
            k = plan.index
            seed = noise_seed(base_seed, k, mid_pos - k)
            pending.add(in_daemon_thread(_pair, backend, prev, item, seed, index, mid_pos, uses, keep, stats,
                                         tracker))
            with stats.lock:
                stats.sent[level - 1] += 1
            pending.add(item, releases=prev)
        prev = item
        yield from pending.flush(window)
    yield from pending.flush(0)
    if tracker is not None:
        tracker.release(prev.frame)


def _pair(backend: Backend, a: Item, b: Item, seed: int, index: int, pos: Fraction, uses: int,
          keep: Callable[[Item], None] | None, stats: StreamStats, tracker: Tracker | None) -> Item:
    """One model pair, on its own thread: the midpoint of a and b, registered for deeper levels and kept."""
    started = time.perf_counter()
    frame = backend.interpolate_pair(a.frame, b.frame, seed, index)
    stats.add(model_seconds=time.perf_counter() - started)
    item = Item(frame, pos, b.plan, GENERATED)
    if tracker is not None and uses:
        tracker.register(frame, uses)
    return _kept(item, keep, stats)


def _kept(item: Item, keep: Callable[[Item], None] | None, stats: StreamStats) -> Item:
    """`item`, once `keep` has kept it (the job's state)."""
    if keep is not None:
        started = time.perf_counter()
        keep(item)
        stats.add(keep_seconds=time.perf_counter() - started)
    return item


def multiply(backends: Sequence[Backend], frames: Iterable[np.ndarray], multi: int = 2, *, base_seed: int = 0,
             window: int = 2, start: int = 0, detector: SceneDetector | None = None,
             known: Callable[[int], Sequence[np.ndarray] | None] | None = None, done: int = 0,
             keep: Callable[[Item], None] | None = None, stats: StreamStats | None = None,
             tracker: Tracker | None = None) -> Iterator[Item]:
    """The output stream of a job at `multi` (2, 4, 8): input frame k, its multi - 1 generated frames, k + 1, ...

    `backends`: one per level (`level_backends`). `frames` begin at input frame `start`. `detector` classifies
    the input pairs (None: every pair is interpolated, and no bit-equal check at deeper levels either).
    `known(k)` gives pair k's generated frames for k < `done` (a resumed job), or None to make them again.
    `keep(item)` is called on each generated frame's own thread (the job's state). `tracker`: the levels'
    shared encodings (`SharedEncodings`), told which frames each level takes and when it is done with them.
    """
    levels = levels_of(multi)
    if len(backends) != levels:
        raise ValueError(f"{levels} levels need {levels} backends, got {len(backends)}")
    stats = stats if stats is not None else StreamStats()
    stats.sent = [0] * levels
    stream: Iterator[Item] = _inputs(frames, start, multi, detector, known, done, tracker, levels)
    for level in range(1, levels + 1):
        stream = _level(stream, level, levels, multi, backends[level - 1], base_seed, window, detector is not None,
                        keep, stats, tracker)
    return stream


# -- a backend per level ------------------------------------------------------------------------------

def level_backends(backend: Backend, levels: int) -> tuple[list[Backend], Tracker | None]:
    """One backend per level: `backend` itself, then its forks (a frame-once session per level), and the
    encodings the levels share (flow A), if any."""
    backends = [backend] + [backend.fork() for _ in range(levels - 1)]
    return backends, backend.shared_encodings if levels > 1 else None
