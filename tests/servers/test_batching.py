"""Dynamic batching on the edge: off by default (exact mode); when on, concurrent requests of one
batch key share a model call and each still gets its own frame."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

from edensplit.model import LocalPipeline, encode_frames, frame_difference, load_model
from edensplit.servers.batching import Batcher
from edensplit.servers.edge import create_edge_app
from edensplit.settings import ServerSettings
from edensplit.wire import BLOB_MEDIA_TYPE, pack_encoding, unpack_frames
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


def test_an_edge_with_batching_on_answers_concurrent_requests_within_rounding_of_exact():
    frames = make_frames(4, 40, 70)
    cloud = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    blobs = [pack_encoding(encode_frames(cloud, frames[k: k + 2]),
                           float(frame_difference(frames[k], frames[k + 1])[0])) for k in range(3)]
    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    app = create_edge_app(ServerSettings(max_batch=4, batch_wait_ms=200), model)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
            responses = await asyncio.gather(*(
                client.post("/api/v1/interpolate", params={"seed": 10 + k}, content=blob,
                            headers={"Content-Type": BLOB_MEDIA_TYPE}) for k, blob in enumerate(blobs)))
        return [unpack_frames(r.content, ("frame",))[0]["frame"] for r in responses]

    batched = asyncio.run(scenario())
    assert max(b.batches[0] for b in app.state.runtime.batchers.values()) == 3  # one model call for all three
    reference = LocalPipeline(load_model(None, TINY_CONFIG, allow_random=True, seed=3))
    for k, frame in enumerate(batched):
        exact = reference.interpolate(frames[k], frames[k + 1], seed=10 + k)
        assert np.abs(frame.astype(int) - exact.astype(int)).max() <= 1
