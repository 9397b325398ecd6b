"""Dynamic batching on the edge: off by default (exact mode); when on, concurrent requests of one
batch key share a model call and each still gets its own frame."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from edensplit.errors import EdenError, ErrorCode
from edensplit.model.checkpoint import load_model
from edensplit.model.pipeline import LocalPipeline
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.servers.batching import HISTORY, Batcher
from edensplit.servers.edge.service import create_edge_app
from edensplit.settings import ServerSettings
from edensplit.wire.blob import BLOB_MEDIA_TYPE, pack_encoding
from edensplit.wire.frames import unpack_frames
from tests.conftest import TINY_CONFIG, make_frames


def test_batcher_groups_by_key_up_to_the_limit_and_returns_each_its_result():
    calls: list[list[tuple[str, int]]] = []

    async def execute(run_batch, jobs):
        return run_batch(None, jobs)

    def run_batch(model, jobs):
        calls.append(list(jobs))
        return [f"{key}{n * 10}" for key, n in jobs]

    async def scenario():
        batcher = Batcher(run_batch, key=lambda job: job[0], execute=execute, max_batch=3, wait_s=0.05)
        jobs = [("a", 1), ("a", 2), ("b", 3), ("a", 4), ("a", 5), ("b", 6)]
        return await asyncio.gather(*(batcher.submit(j) for j in jobs)), batcher.batches

    results, sizes = asyncio.run(scenario())
    assert results == ["a10", "a20", "b30", "a40", "a50", "b60"]
    assert all(len({key for key, _ in batch}) == 1 for batch in calls)  # never mixes keys
    assert max(sizes) == 3 and sum(sizes) == 6


def test_batcher_gives_every_job_of_a_failed_batch_the_error():
    async def execute(run_batch, jobs):
        return run_batch(None, jobs)

    def run_batch(model, jobs):
        raise ValueError("boom")

    async def scenario():
        batcher = Batcher(run_batch, key=lambda job: 0, execute=execute, max_batch=4, wait_s=0.05)
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    assert [str(e) for e in asyncio.run(scenario())] == ["boom"] * 3


def test_a_wrong_number_of_results_fails_every_caller_instead_of_hanging():
    async def execute(run_batch, jobs):
        return run_batch(None, jobs)

    def run_batch(model, jobs):
        return ["only one"]  # a batch of three gets one result

    async def scenario():
        batcher = Batcher(run_batch, key=lambda job: 0, execute=execute, max_batch=3, wait_s=0.05)
        answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(3)),
                                                        return_exceptions=True), timeout=10)
        again = await asyncio.wait_for(batcher.submit(9), timeout=10)  # the worker survived
        return answers, again

    answers, again = asyncio.run(scenario())
    assert all(isinstance(a, EdenError) and a.code == ErrorCode.MODEL_ERROR for a in answers), answers
    assert "1 results for a batch of 3" in str(answers[0]) and again == "only one"


def test_a_long_run_keeps_a_bounded_history():
    async def execute(run_batch, jobs):
        return run_batch(None, jobs)

    async def scenario():
        batcher = Batcher(lambda model, jobs: list(jobs), key=lambda job: 0, execute=execute, max_batch=2,
                          wait_s=0)
        for i in range(3 * HISTORY):
            assert await batcher.submit(i) == i
        return len(batcher.batches)

    assert asyncio.run(scenario()) == HISTORY


def test_close_stops_the_worker_and_fails_what_waits():
    async def execute(run_batch, jobs):
        return run_batch(None, jobs)

    async def scenario():
        batcher = Batcher(lambda model, jobs: list(jobs), key=lambda job: 0, execute=execute, max_batch=2,
                          wait_s=30)  # a lone job waits up to 30 s for a partner
        waiting = asyncio.ensure_future(batcher.submit("lone"))
        while not batcher._queue:
            await asyncio.sleep(0)
        started = asyncio.get_running_loop().time()
        await batcher.close()
        with pytest.raises(EdenError) as err:
            await asyncio.wait_for(waiting, timeout=10)
        return err.value, batcher._worker.done(), asyncio.get_running_loop().time() - started

    error, stopped, seconds = asyncio.run(scenario())
    assert error.code == ErrorCode.NOT_READY and stopped and seconds < 5


def distinct_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Three pairs of one size whose frames and differences differ a lot (raw differences 0.993, 0.750, 0.884), so
    a request answered with another's frame, difference or seed is far from its own exact frame."""
    a, b, c = make_frames(2, 40, 70, seed=0), make_frames(2, 40, 70, seed=5), make_frames(4, 40, 70, seed=9)
    return [(a[0], a[1]), (b[0], 255 - b[1]), (c[0], np.ascontiguousarray(c[3][:, ::-1, ::-1]))]


def test_an_edge_with_batching_on_answers_concurrent_requests_within_rounding_of_exact():
    pairs = distinct_pairs()
    cloud = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    blobs = [pack_encoding(encode_frames(cloud, np.stack(pair)), float(frame_difference(*pair)[0])) for pair in pairs]
    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    decoded_batches: list[int] = []  # the model's own record of its calls: one decode per model call
    decode = model.decode

    def recording_decode(z, *args, **kwargs):
        decoded_batches.append(z.shape[0])
        return decode(z, *args, **kwargs)

    model.decode = recording_decode
    # max_batch 3: the batch runs as soon as the third request is in; the long wait only covers a loaded machine.
    app = create_edge_app(ServerSettings(max_batch=3, batch_wait_ms=30_000, warmup=False), model)  # counts decodes

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
            responses = await asyncio.gather(*(
                client.post("/api/v1/interpolate", params={"seed": 10 + k}, content=blob,
                            headers={"Content-Type": BLOB_MEDIA_TYPE}) for k, blob in enumerate(blobs)))
        return [unpack_frames(r.content, ("frame",))[0]["frame"] for r in responses]

    batched = asyncio.run(scenario())
    assert decoded_batches == [3]  # one model call for all three
    reference = LocalPipeline(load_model(None, TINY_CONFIG, allow_random=True, seed=3))
    exact = [reference.interpolate(f0, f1, seed=10 + k) for k, (f0, f1) in enumerate(pairs)]
    # Measured: each batched frame equals its exact single-call frame (mean and max error 0.0). Bounds: mean 0.02
    # (one-level rounding flips on 2% of the pixels, for other BLAS builds) and max 1 level (the documented
    # allowance). Bugs, measured: two requests' differences swapped: mean 8.2 to 35; seeds swapped: 24 to 42;
    # frames swapped: 34 to 51 (the distance between the exact frames).
    for k, frame in enumerate(batched):
        errors = [float(np.abs(frame.astype(float) - e.astype(float)).mean()) for e in exact]
        assert errors[k] <= 0.02 and np.abs(frame.astype(int) - exact[k].astype(int)).max() <= 1, (k, errors)
        assert min(e for j, e in enumerate(errors) if j != k) > 100 * max(errors[k], 0.01), (k, errors)
