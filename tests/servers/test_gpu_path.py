"""The GPU fast path's parts that a CPU can check: the encoder batched across requests (within float
rounding of one frame at a time, the exact mode), dynamic batching on by default only on CUDA in half
precision, and the cloud batching concurrent requests when asked."""

from __future__ import annotations

import threading

import numpy as np
import torch
from fastapi.testclient import TestClient

from edensplit.model.checkpoint import load_model
from edensplit.model.stages import encode_frames
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.settings import GPU_BATCH, ServerSettings, resolve_max_batch
from edensplit.wire.blob import unpack_encoding
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames
from tests.conftest import TINY_CONFIG, make_frames


def test_batched_encoding_is_one_frame_at_a_time_up_to_rounding(tiny_model):
    frames = make_frames(4, 40, 70, seed=5)
    exact, batched = encode_frames(tiny_model, frames), encode_frames(tiny_model, frames, batched=True)
    for name in ("cond_dit", "cond_dec", "mean", "std"):
        torch.testing.assert_close(getattr(batched, name), getattr(exact, name), rtol=0, atol=2e-5)
    alone = encode_frames(tiny_model, frames[2:3], batched=True)  # each frame is normalised by its own stats
    torch.testing.assert_close(alone.cond_dit[0], batched.cond_dit[2], rtol=0, atol=2e-5)


def test_dynamic_batching_is_on_by_default_only_on_a_gpu_in_half_precision():
    def batch(**kw) -> int:
        return resolve_max_batch(ServerSettings(**kw))

    assert batch(device="cpu") == 1 and batch(device="cpu", eden_dtype="bfloat16") == 1
    assert batch(device="cuda:0") == 1  # float32 is the exact mode everywhere
    assert batch(device="cuda:0", eden_dtype="bfloat16") == batch(device="cuda:1", eden_dtype="float16") == GPU_BATCH
    assert batch(device="cuda:0", eden_dtype="bfloat16", max_batch=1) == 1 and batch(device="cpu", max_batch=4) == 4


def test_the_cloud_batches_concurrent_requests_when_asked():
    model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    calls: list[int] = []
    original = model.encode_tokens
    model.encode_tokens = lambda x: calls.append(x.shape[0]) or original(x)
    settings = ServerSettings(max_batch=3, batch_wait_ms=30_000, warmup=False)  # a batch waits until it is full
    frames = make_frames(3, 40, 70, seed=8)
    answers: dict[int, bytes] = {}
    with TestClient(create_cloud_app(settings, model)) as cloud:
        def send(i: int) -> None:
            answers[i] = cloud.post("/api/v1/encode_frame", content=pack_frames({"frame": frames[i]}),
                                    headers={"Content-Type": FRAMES_MEDIA_TYPE}).content

        threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert calls == [3]  # one encoder call for the three requests
    exact = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    for i in range(3):
        got = unpack_encoding(answers[i], frames=1).encoding
        want = encode_frames(exact, frames[i])
        assert np.allclose(got.cond_dit.numpy(), want.cond_dit.numpy(), atol=2e-5)
