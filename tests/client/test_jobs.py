"""Video jobs stream: frames are pulled as they are needed, a bounded number of pairs is in flight,
and the output order is f0, m01, f1, m12, ..."""

from __future__ import annotations

import threading

import numpy as np

from edensplit.client.jobs import LocalBackend, interpolate_stream
from edensplit.model import LocalPipeline, noise_seed
from tests.conftest import make_frames


class Watched:
    """The real local backend, watched: how many pairs run at once. Pair 0 finishes only once pair 1 has
    started, which can happen only if the stream submits the next pair while the previous one runs."""

    def __init__(self, backend: LocalBackend):
        self.backend, self.running, self.most, self.lock = backend, 0, 0, threading.Lock()
        self.second_started = threading.Event()

    def interpolate_pair(self, frame0, frame1, seed, index):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        if index == 1:
            self.second_started.set()
        try:
            if index == 0:
                assert self.second_started.wait(timeout=30), "pair 1 never started while pair 0 ran"
            return self.backend.interpolate_pair(frame0, frame1, seed, index)
        finally:
            with self.lock:
                self.running -= 1


def test_frames_are_pulled_lazily_and_pairs_overlap_up_to_the_window(tiny_model):
    frames = make_frames(20, 40, 70)
    pulled = []

    def source():
        for k, frame in enumerate(frames):
            pulled.append(k)
            yield frame

    backend = Watched(LocalBackend(LocalPipeline(tiny_model)))
    stream = interpolate_stream(backend, source(), base_seed=5, window=2)
    out = [next(stream) for _ in range(3)]  # f0, m01, f1
    assert len(pulled) <= 4  # not the whole video: at most the window's frames ahead
    out += list(stream)
    assert len(pulled) == 20 and len(out) == 39
    assert backend.most == 2  # the next pair runs while the previous one is still running
    assert [generated for _, generated in out] == [False, True] * 19 + [False]
    for k in range(19):
        assert np.array_equal(out[2 * k][0], frames[k])
        expected = LocalPipeline(tiny_model).interpolate(frames[k], frames[k + 1], seed=noise_seed(5, k))
        assert np.array_equal(out[2 * k + 1][0], expected)
