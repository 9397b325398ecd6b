"""Multipliers by recursive midpoints, in process: each generated frame is the model's midpoint of the two frames
around it (fed back as uint8), with the contract's seed for its time; t = 1/2 frames are the same at every
multiplier; scene cuts and still pairs repeat the earlier frame and ask the backend nothing; the levels of a
frame-once job share their encodings (every frame encoded by the cloud once); --fps maps to a multiplier."""

from __future__ import annotations

import threading
from fractions import Fraction

import numpy as np
import pytest

from edensplit.client.backends import Backend, LocalBackend
from edensplit.client.flows import FrameOnceClient
from edensplit.client.http import HttpTransport
from edensplit.client.multiply import GENERATED, INPUT, level_backends, multiply
from edensplit.client.rates import multiplier_for_rate
from edensplit.client.requests import Answer, Call
from edensplit.client.scenes import CUT, STILL, SceneDetector
from edensplit.client.services import Cloud, Edge
from edensplit.errors import EdenError
from edensplit.model.pipeline import LocalPipeline
from edensplit.model.seeds import noise_seed
from tests.conftest import make_frames
from tests.media import cut_frames, with_stills

FRAMES = make_frames(4, 40, 70, seed=9)


def run(backend, frames, multi, **kwargs):
    backends, shared = level_backends(backend, multi.bit_length() - 1)
    return list(multiply(backends, frames, multi, base_seed=3, tracker=shared, **kwargs)), shared


@pytest.mark.parametrize("multi", [4, 8])
def test_each_frame_is_the_midpoint_of_its_neighbours_with_the_contracts_seed(tiny_model, multi):
    out, _ = run(LocalBackend(LocalPipeline(tiny_model)), FRAMES, multi)
    assert len(out) == multi * (len(FRAMES) - 1) + 1
    reference = LocalPipeline(tiny_model)
    for p, item in enumerate(out):
        k, j = divmod(p, multi)
        assert item.pos == k + Fraction(j, multi)
        if j == 0:
            assert item.kind == INPUT and np.array_equal(item.frame, FRAMES[k])
            continue
        step = j & -j  # the level that made it: its neighbours are `step` output frames away
        left, right = out[p - step].frame, out[p + step].frame
        expected = reference.interpolate(left, right, seed=noise_seed(3, k, Fraction(j, multi)))
        assert item.kind == GENERATED and np.array_equal(item.frame, expected), f"output frame {p}"


def test_t_one_half_is_the_same_at_every_multiplier(tiny_model):
    outputs = {m: [i.frame for i in run(LocalBackend(LocalPipeline(tiny_model)), FRAMES, m)[0]] for m in (2, 4, 8)}
    for k in range(len(FRAMES) - 1):
        half = outputs[2][2 * k + 1]
        assert np.array_equal(outputs[4][4 * k + 2], half) and np.array_equal(outputs[8][8 * k + 4], half)
    assert not np.array_equal(outputs[4][1], outputs[4][2])  # t = 1/4 is another frame


class Counting(LocalBackend):
    """The local backend, recording the pairs it is asked for and the session starts."""

    def __init__(self, pipeline: LocalPipeline):
        super().__init__(pipeline)
        self.pairs: list[tuple[int, int]] = []  # (index, seed)
        self.begins: list[int] = []
        self.lock = threading.Lock()

    def fork(self) -> Counting:
        return Counting(self.pipeline.__class__(self.pipeline.model, self.pipeline.sampler))

    def begin_video(self, start: int = 0) -> None:
        self.begins.append(start)
        super().begin_video(start)

    def interpolate_pair(self, frame0, frame1, seed, index=0):
        with self.lock:
            self.pairs.append((index, seed))
        return super().interpolate_pair(frame0, frame1, seed, index)


def test_cuts_and_stills_repeat_the_earlier_frame_and_send_nothing(tiny_model):
    frames = with_stills(cut_frames(3, 3, 96, 72), repeat_at=[4])  # pairs: 0 1 | cut 2 | 3 still 4 5
    backend = Counting(LocalPipeline(tiny_model))
    backends, _ = level_backends(backend, 2)
    detector = SceneDetector()
    out = list(multiply(backends, frames, 4, base_seed=3, detector=detector))
    assert len(out) == 4 * (len(frames) - 1) + 1 and (detector.counts.cuts, detector.counts.stills) == (1, 1)
    kinds = [item.kind for item in out]
    for k, reason in ((2, CUT), (4, STILL)):
        assert kinds[4 * k + 1: 4 * k + 4] == [reason] * 3
        for j in (1, 2, 3):
            assert out[4 * k + j].frame is frames[k]  # the earlier frame, as it is: no blend
    modelled = [k for k in range(len(frames) - 1) if k not in (2, 4)]
    # Level 1 is asked for the pairs that are not skipped, level 2 for their two halves, nothing else.
    assert sorted(i for i, _ in backends[0].pairs) == modelled
    assert sorted(i for i, _ in backends[1].pairs) == sorted([2 * k for k in modelled] + [2 * k + 1 for k in modelled])
    # After a pair not sent, the next one starts a new session run, from its own index.
    assert backends[0].begins == [0, 3, 5] and backends[1].begins == [0, 6, 10]
    assert all(item.kind == GENERATED for k in modelled for item in out[4 * k + 1: 4 * k + 4])


def test_without_a_detector_every_pair_goes_to_the_model(tiny_model):
    frames = with_stills(FRAMES, repeat_at=[1])
    backend = Counting(LocalPipeline(tiny_model))
    out = list(multiply([backend], frames, 2, base_seed=3))
    assert sorted(i for i, _ in backend.pairs) == list(range(len(frames) - 1))
    assert all(item.kind in (INPUT, GENERATED) for item in out)


class CountingCloud:
    """A cloud transport wrapper counting encode_frame requests."""

    def __init__(self, inner: HttpTransport):
        self.inner, self.encoded = inner, 0

    def __getattr__(self, name: str):  # config, url, done, ...: the inner transport's
        return getattr(self.inner, name)

    def send(self, call: Call, request_id: str) -> Answer:
        self.encoded += call.operation == "encode_frame"
        return self.inner.send(call, request_id)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("multi", [4, 8])
def test_frame_once_levels_encode_every_frame_once_and_equal_local(cloud, edge, tiny_model, multi):
    counting = CountingCloud(HttpTransport("http://testserver", client=cloud))
    client = FrameOnceClient(Cloud(counting), Edge(HttpTransport("http://testserver", client=edge)))
    out, shared = run(client, FRAMES, multi)
    local, _ = run(LocalBackend(LocalPipeline(tiny_model)), FRAMES, multi)
    assert all(np.array_equal(a.frame, b.frame) for a, b in zip(out, local, strict=True))
    n = len(FRAMES)
    # Inputs of some level: the input frames, and every level's frames but the last's.
    inputs = n + sum((2 ** level) * (n - 1) // 2 for level in range(1, multi.bit_length() - 1))
    assert counting.encoded == shared.encoded == inputs
    assert shared.held == 0  # every frame released once the deepest level was past it


def test_a_backend_with_state_and_no_fork_is_refused_above_2():
    class Stateful(Backend):
        def begin_video(self, start=0): ...

        def interpolate_pair(self, frame0, frame1, seed, index): ...

    with pytest.raises(EdenError, match="no fork"):
        level_backends(Stateful(), 2)


def test_fps_maps_to_a_multiplier_or_says_which_rates_it_can_be():
    ntsc = Fraction(30000, 1001)
    assert multiplier_for_rate(ntsc, "60000/1001") == 2
    assert multiplier_for_rate(ntsc, "59.94") == 2  # within 0.001 fps of 60000/1001
    assert multiplier_for_rate(ntsc, "120000/1001") == 4 and multiplier_for_rate(ntsc, "239.76") == 8
    assert multiplier_for_rate(Fraction(24), "96") == 4
    with pytest.raises(EdenError) as err:
        multiplier_for_rate(ntsc, "50")
    assert "not 2, 4 or 8 times the input's 30000/1001 (29.97) fps" in err.value.message
    assert "60000/1001 (59.94), 120000/1001 (119.88), 240000/1001 (239.76)" in err.value.message
    with pytest.raises(EdenError, match="not a frame rate"):
        multiplier_for_rate(ntsc, "fast")
