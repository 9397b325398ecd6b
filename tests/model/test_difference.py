"""The pair's raw difference depends on the pixels alone: the client, the cloud, the edge and --local each compute it,
each in a process with its own torch thread count (a flow-A session's client never sets one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edensplit.model.stages import SUM_PIECE, as_frames, cosine_map, frame_difference, mean_of, pixel_planes
from tests.conftest import make_frames

THREADS = (1, 2, 4)


def torch_mean(frame0: np.ndarray, frame1: np.ndarray) -> float:
    """The reference's arithmetic: torch's float32 mean of the per-pixel similarities, at the current thread count."""
    return float(F.cosine_similarity(as_frames(frame0), as_frames(frame1), dim=1, eps=1e-8).mean())


def at_threads(n: int, fn, *args):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("height,width", [(288, 512), (1080, 1920)])
def test_the_difference_is_the_same_at_every_thread_count(height, width):
    """Frames whose torch float32 mean moves with the thread count (here by 1-2 ulp): the difference does not."""
    frames = make_frames(2, height, width, seed=1)
    means = {at_threads(n, torch_mean, *frames) for n in THREADS}
    assert len(means) > 1, "the case itself: torch's own mean of these frames no longer depends on the thread count"
    bits = {n: hex(at_threads(n, frame_difference, *frames).numpy().view(np.uint32)[0]) for n in THREADS}
    assert len(set(bits.values())) == 1, f"the difference's bits by thread count: {bits}"


def test_below_torchs_parallel_grain_it_is_the_references_float32_mean():
    """Up to SUM_PIECE pixels (the golden cases, the tests' clips) it is torch's single-thread mean, bit for bit."""
    rng = np.random.default_rng(0)
    for height, width in [(70, 100), (96, 128), (72, 96), (144, 176)]:
        assert height * width <= SUM_PIECE
        frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        assert float(frame_difference(frames[0], frames[1])[0]) == at_threads(1, torch_mean, *frames)


def test_each_pixel_is_torchs_cosine_similarity():
    frames = np.random.default_rng(1).integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)
    frames[0, :4] = 0  # black pixels: norms clamped to eps, similarity 0
    ours = cosine_map(pixel_planes(frames[0]), pixel_planes(frames[1]))
    ref = F.cosine_similarity(as_frames(frames[0]), as_frames(frames[1]), dim=1, eps=1e-8).numpy()
    np.testing.assert_array_max_ulp(ours, ref, maxulp=1)
    assert not ours[0, :4].any()


def test_a_batch_gives_each_pairs_own_difference_and_tensors_give_what_uint8_gives():
    frames = make_frames(4, 200, 300, seed=2)  # 60000 pixels: two pieces
    batch = frame_difference(frames[:3], frames[1:])
    single = torch.cat([frame_difference(frames[k], frames[k + 1]) for k in range(3)])
    assert torch.equal(batch, single)
    assert torch.equal(frame_difference(as_frames(frames[:3]), as_frames(frames[1:])), batch)


@pytest.mark.parametrize("height,width", [(1080, 1920), (37, 50)])
def test_frames_taken_in_bands_give_the_whole_frames_bits(height, width):
    """uint8 frames are compared BAND_ROWS rows at a time (small temporaries): the same bits as the whole map."""
    f0, f1 = make_frames(2, height, width, seed=3)
    whole = cosine_map(pixel_planes(f0), pixel_planes(f1))
    expected = np.array([mean_of(m) for m in whole], dtype=np.float32)
    assert frame_difference(f0, f1).numpy().view(np.uint32).tolist() == expected.view(np.uint32).tolist()
    batch = frame_difference(np.stack([f0, f1]), np.stack([f1, f0])).numpy()
    assert batch[0] == expected[0] and batch[1] == frame_difference(f1, f0).numpy()[0]
