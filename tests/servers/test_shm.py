"""Shared memory on the servers (ALLOW_SHM=1): the cloud answers with a handle when asked, the edge takes one as a
body, each handle is good once and for its client only, the segments are bounded and counted, expire, and a
killed server's segments are swept at the next start; without ALLOW_SHM, handles are SHM_DISABLED."""

from __future__ import annotations

import gc
import json
import os
import signal
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edensplit.model.checkpoint import load_model
from edensplit.processes import maker_of
from edensplit.servers import shm as server_shm
from edensplit.servers.budget import ByteBudget
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.contract import Reply
from edensplit.servers.edge.service import create_edge_app
from edensplit.servers.launch import ServerProcess
from edensplit.servers.shm import HEADER_BYTES, SharedMemory, SharedOperation
from edensplit.settings import ServerSettings
from edensplit.wire import shm
from edensplit.wire.blob import BLOB_MEDIA_TYPE
from edensplit.wire.buffers import answer_buffer
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames, unpack_frames
from edensplit.wire.messages import pack_binary, unpack_binary
from edensplit.wire.shm import SHM_MEDIA_TYPE, Handle
from tests.conftest import TINY_CONFIG, make_frames, wait_until

FRAMES = make_frames(3, 40, 70)
PAIR = pack_frames({"frame0": FRAMES[0], "frame1": FRAMES[1]})
ASK_HANDLE = {"Content-Type": FRAMES_MEDIA_TYPE, "Accept": f"{SHM_MEDIA_TYPE}, {BLOB_MEDIA_TYPE}"}
HANDLE = {"Content-Type": SHM_MEDIA_TYPE}
ENCODER = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
SAMPLER = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)


def cloud_app(**settings) -> TestClient:
    return TestClient(create_cloud_app(ServerSettings(warmup=False, **{"allow_shm": True, **settings}), ENCODER))


def edge_app(**settings) -> TestClient:
    return TestClient(create_edge_app(ServerSettings(warmup=False, **{"allow_shm": True, **settings}), SAMPLER))


def handle_of(cloud: TestClient, headers: dict[str, str] | None = None) -> bytes:
    r = cloud.post("/api/v1/encode", content=PAIR, headers={**ASK_HANDLE, **(headers or {})})
    assert r.status_code == 200 and r.headers["content-type"] == SHM_MEDIA_TYPE, r.text
    return r.content


def error_of(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def frame_of(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return unpack_frames(r.content, ("frame",))[0]["frame"]


def metric(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def made_by(pid: int) -> list[str]:
    return [name for name, maker, _ in shm.segments() if maker.split("-")[0] == str(pid)]


def test_a_handle_gives_the_same_frame_as_the_bytes_and_no_encoding_crosses_a_socket():
    with cloud_app() as cloud, edge_app() as edge:
        blob = cloud.post("/api/v1/encode", content=PAIR, headers={"Content-Type": FRAMES_MEDIA_TYPE}).content
        by_bytes = frame_of(edge.post("/api/v1/interpolate", content=blob, headers={"Content-Type": BLOB_MEDIA_TYPE}))
        sent_before = metric(edge, "edensplit_request_bytes_total", route="/api/v1/interpolate")
        handle = handle_of(cloud)
        assert len(handle) < 1000 and json.loads(handle)["size"] == len(blob)
        assert np.array_equal(frame_of(edge.post("/api/v1/interpolate", content=handle, headers=HANDLE)), by_bytes)
        assert metric(edge, "edensplit_request_bytes_total", route="/api/v1/interpolate") - sent_before == len(handle)
        assert metric(edge, "edensplit_shm_bytes_moved_total", event="taken") == len(blob)
        assert metric(cloud, "edensplit_shm_bytes_moved_total", event="made") == len(blob)


def test_a_handle_over_websocket_both_ways():
    with cloud_app() as cloud, edge_app() as edge:
        with cloud.websocket_connect("/ws/encode") as ws:
            ws.send_bytes(pack_binary({"type": "encode", "request_id": "e1", "content_type": FRAMES_MEDIA_TYPE,
                                       "accept": f"{SHM_MEDIA_TYPE}, {BLOB_MEDIA_TYPE}"}, PAIR))
            header, handle = unpack_binary(ws.receive_bytes())
        assert header["content_type"] == SHM_MEDIA_TYPE and Handle.loads(handle).media_type == BLOB_MEDIA_TYPE
        with edge.websocket_connect("/ws/interpolate") as ws:
            ws.send_bytes(pack_binary({"type": "interpolate", "request_id": "i1", "content_type": SHM_MEDIA_TYPE},
                                      handle))
            header, body = unpack_binary(ws.receive_bytes())
            assert header["content_type"] == FRAMES_MEDIA_TYPE and unpack_frames(body, ("frame",))[0]["frame"].shape
            ws.send_bytes(pack_binary({"type": "interpolate", "request_id": "i2", "content_type": SHM_MEDIA_TYPE},
                                      handle))
            assert ws.receive_json()["error"]["code"] == "SHM_NOT_FOUND"


def test_hostile_handles_get_exact_codes(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("alice key-a\nbob key-b\n")
    alice, bob = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    with cloud_app(edensplit_api_keys_file=keys) as cloud, edge_app(edensplit_api_keys_file=keys) as edge:
        def post(body: bytes, who: dict[str, str] = alice) -> tuple[int, str]:
            return error_of(edge.post("/api/v1/interpolate", content=body, headers={**HANDLE, **who}))

        handle = handle_of(cloud, alice)
        fields = json.loads(handle)
        unknown = {**fields, "segment": shm.segment_name(maker_of(os.getpid()))}
        assert post(json.dumps(unknown).encode()) == (410, "SHM_NOT_FOUND")
        assert post(handle, bob) == (403, "SHM_FORBIDDEN")  # another client's
        assert post(json.dumps({**fields, "size": fields["size"] - 1}).encode()) == (400, "SHM_INVALID")
        assert post(json.dumps({**fields, "segment": "../../etc/passwd"}).encode()) == (400, "SHM_INVALID")
        assert post(b"{not json") == (400, "SHM_INVALID")
        frames_kind = {**fields, "media_type": FRAMES_MEDIA_TYPE}  # a kind /interpolate does not take
        assert post(json.dumps(frames_kind).encode()) == (400, "SHM_INVALID")
        assert edge.post("/api/v1/interpolate", content=handle, headers={**HANDLE, **alice}).status_code == 200
        assert post(handle) == (410, "SHM_NOT_FOUND")  # used
        foreign = shm.SHM_DIR / shm.segment_name(maker_of(os.getpid()))  # a file that is not our private segment
        try:
            foreign.write_bytes(b"EDSHM1 {}\n" + b"x" * 10)
            foreign.chmod(0o644)
            planted = json.dumps({"segment": foreign.name, "size": 10, "media_type": BLOB_MEDIA_TYPE}).encode()
            assert post(planted) == (403, "SHM_FORBIDDEN")
        finally:
            foreign.unlink()
        assert edge.get("/health/live").status_code == 200  # and it serves on


def test_a_handle_expires_after_the_ttl():
    with cloud_app(shm_ttl_s=1.0) as cloud, edge_app() as edge:  # the sweep runs every second
        handle = handle_of(cloud)
        assert metric(cloud, "edensplit_shm_segments") == 1
        segment = shm.SHM_DIR / Handle.loads(handle).segment
        wait_until(lambda: not segment.exists() and metric(cloud, "edensplit_shm_segments") == 0, 6,
                   "the segment expired and its gauge back to 0")
        assert error_of(edge.post("/api/v1/interpolate", content=handle, headers=HANDLE)) == (410, "SHM_NOT_FOUND")
        assert metric(cloud, "edensplit_shm_segments") == 0 and metric(cloud, "edensplit_shm_bytes") == 0
        assert metric(cloud, "edensplit_shm_bytes_moved_total", event="expired") == Handle.loads(handle).size


def test_segments_are_bounded_in_count_and_bytes_and_counted():
    with cloud_app(shm_max_segments=2) as cloud:
        first, second = handle_of(cloud), handle_of(cloud)
        r = cloud.post("/api/v1/encode", content=PAIR, headers=ASK_HANDLE)
        assert error_of(r) == (503, "OVERLOADED") and "segments" in r.json()["error"]["message"]
        held = metric(cloud, "edensplit_shm_bytes")
        assert held >= Handle.loads(first).size + Handle.loads(second).size
        assert cloud.app.state.pipeline.budget.used == held  # held against the bodies' budget
        # A caller's own segment is refused before it is taken: the retry of the 503 finds it still there.
        mine = shm.write_segment(shm.segment_name(maker_of(os.getpid())), PAIR, None, FRAMES_MEDIA_TYPE)
        try:
            r = cloud.post("/api/v1/encode", content=mine.dumps(), headers={**HANDLE, "Accept": ASK_HANDLE["Accept"]})
            assert error_of(r) == (503, "OVERLOADED") and (shm.SHM_DIR / mine.segment).exists()
        finally:
            shm.remove(mine.segment)
    assert not (shm.SHM_DIR / Handle.loads(first).segment).exists()  # a server that stops removes its own
    with cloud_app(body_memory_mb=20_000 / 2**20) as cloud:  # a budget smaller than one encoding
        assert error_of(cloud.post("/api/v1/encode", content=PAIR, headers=ASK_HANDLE)) == (503, "OVERLOADED")


def test_taken_segments_give_their_room_back_at_once_not_only_at_the_next_sweep(monkeypatch):
    monkeypatch.setattr(server_shm, "SWEEP_S", 3600.0)  # the sweep runs at start only: it frees nothing here
    with cloud_app(shm_max_segments=2) as cloud:
        waiting = [Handle.loads(handle_of(cloud)) for _ in range(2)]
        assert error_of(cloud.post("/api/v1/encode", content=PAIR, headers=ASK_HANDLE)) == (503, "OVERLOADED")
        taken = [shm.take_segment(h, "anonymous", BLOB_MEDIA_TYPE) for h in waiting]  # as the edge takes them
        one = Handle.loads(handle_of(cloud))  # the count: room again at once
        assert metric(cloud, "edensplit_shm_segments") == 1
        # The bytes: a budget for one encoding and a half, the one made held; a second is refused while it waits.
        budget = cloud.app.state.pipeline.budget
        budget.limit = budget.used + (one.size + HEADER_BYTES) // 2 + len(PAIR)
        r = cloud.post("/api/v1/encode", content=PAIR, headers=ASK_HANDLE)
        assert error_of(r) == (503, "OVERLOADED") and "segments not yet taken (limit" in r.json()["error"]["message"]
        taken.append(shm.take_segment(one, "anonymous", BLOB_MEDIA_TYPE))
        handle_of(cloud)  # taken: its bytes given back at once
        assert budget.used == metric(cloud, "edensplit_shm_bytes") == one.size + HEADER_BYTES
        del taken


def test_without_allow_shm_handles_are_refused_and_bytes_still_flow():
    with cloud_app() as shared, cloud_app(allow_shm=False) as cloud, edge_app(allow_shm=False) as edge:
        handle = handle_of(shared)
        assert error_of(edge.post("/api/v1/interpolate", content=handle, headers=HANDLE)) == (415, "SHM_DISABLED")
        r = cloud.post("/api/v1/encode", content=PAIR, headers=ASK_HANDLE)  # handle or blob: the blob
        assert r.status_code == 200 and r.headers["content-type"] == BLOB_MEDIA_TYPE
        only = {**ASK_HANDLE, "Accept": SHM_MEDIA_TYPE}
        assert error_of(cloud.post("/api/v1/encode", content=PAIR, headers=only)) == (415, "SHM_DISABLED")
        assert cloud.get("/health").json()["shared_memory"] is False
        assert shared.get("/health").json()["shared_memory"] is True


def test_a_killed_clouds_segments_go_at_its_next_start(model_env, tmp_path):
    env = {**model_env, "ALLOW_SHM": "1", "SHM_TTL_S": "600"}
    with ServerProcess("edensplit.cloud:app", env=env, log_path=tmp_path / "cloud.log") as cloud:
        r = httpx.post(f"{cloud.url}/api/v1/encode", content=PAIR, headers=ASK_HANDLE)
        assert r.headers["content-type"] == SHM_MEDIA_TYPE
        pid = cloud.proc.pid
        assert Handle.loads(r.content).segment in made_by(pid)  # with the spares made for its next answers
        cloud.proc.send_signal(signal.SIGKILL)
        cloud.proc.wait()
        assert Handle.loads(r.content).segment in made_by(pid)  # nobody removed it: its maker died
        cloud.start()  # the next start sweeps it
        deadline = time.monotonic() + 5
        while made_by(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not made_by(pid)


def test_the_document_lists_handles_where_the_server_takes_them():
    for app, shared in ((cloud_app(), True), (cloud_app(allow_shm=False), False), (edge_app(), True)):
        for path, item in app.app.openapi()["paths"].items():
            if "post" in item and "requestBody" in item["post"]:
                body, answer = item["post"]["requestBody"]["content"], item["post"]["responses"]["200"]["content"]
                assert (SHM_MEDIA_TYPE in body) == shared and (SHM_MEDIA_TYPE in answer) == shared, path
                codes = json.dumps(item["post"]["responses"])
                assert all(code in codes for code in ("SHM_DISABLED", "SHM_NOT_FOUND", "SHM_FORBIDDEN")), path


class Answering:
    """An operation whose binary answer is laid out by `answer_buffer`, as the cloud's encoding is; it may fail
    after allocating, or answer a body of its own instead."""

    inputs = binary_inputs = answers = (BLOB_MEDIA_TYPE,)
    errors = ()

    def __init__(self, fail: bool = False, own_body: bool = False):
        self.fail, self.own_body = fail, own_body

    def encode(self, result: bytes, job: object) -> Reply:
        out = answer_buffer(len(result), BLOB_MEDIA_TYPE)
        out[:] = np.frombuffer(result, np.uint8)
        if self.fail:
            raise RuntimeError("failed after allocating")
        return Reply({}, {"n": len(result)}, memoryview(bytes(result) if self.own_body else out), BLOB_MEDIA_TYPE)


def test_an_answer_is_written_straight_into_a_spare_and_a_failed_one_leaves_nothing_held():
    memory = SharedMemory(True, ByteBudget(10**7))
    mine = lambda: {name for name, maker, _ in shm.segments() if maker == memory.maker}  # noqa: E731
    try:
        payload = os.urandom(200_000)
        first = Handle.loads(SharedOperation(Answering(), memory, True).encode(payload, None).body)
        _settle(memory)  # the first answer asked for spares of its length
        ahead = mine() - {first.segment}
        second = Handle.loads(SharedOperation(Answering(), memory, True).encode(payload[::-1], None).body)
        assert second.segment in ahead  # cast into a spare's pages, not copied into a new segment
        assert memory.budget.used == 2 * (len(payload) + HEADER_BYTES)
        for handle, data in ((first, payload), (second, payload[::-1])):
            assert bytes(memory.take(handle, "anonymous", BLOB_MEDIA_TYPE)) == data
        memory.sweep()
        assert memory.budget.used == 0
        gc.collect()  # the taken views gone: the spares come back, and the sweep takes them in
        wait_until(lambda: (memory.sweep(), not (mine() - set(_spare_names(memory))))[1], what="given back")
        # Failing after the allocation: the draft is dropped, nothing held, no segment left but the spares.
        with pytest.raises(RuntimeError):
            SharedOperation(Answering(fail=True), memory, True).encode(payload, None)
        _settle(memory)
        assert memory.budget.used == 0 and not (mine() - set(_spare_names(memory)))
        # A body not laid out in the draft: written as a segment of its own, the draft let go.
        own = Handle.loads(SharedOperation(Answering(own_body=True), memory, True).encode(payload, None).body)
        assert memory.budget.used == len(payload) + HEADER_BYTES
        assert bytes(memory.take(own, "anonymous", BLOB_MEDIA_TYPE)) == payload
    finally:
        memory.close()
    assert not mine()


def _settle(memory: SharedMemory) -> None:
    """Until no spare is being made (each then either ready or gone)."""
    wait_until(lambda: memory.spares.nbytes and not any(memory.spares._pending.values()), what="spares being made")


def _spare_names(memory: SharedMemory) -> list[str]:
    with memory.spares._lock:
        return [spare.name for ready in memory.spares._ready.values() for spare in ready]
