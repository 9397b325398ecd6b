"""The flows over the typed clients: a frame-once session the edge lost is rebuilt (store-only resend of frame
k-1, then frame k again) and gives the same frame; a session's edge requests go in order, one at a time, and a
resumed one starts by storing its first frame; open_backend refuses bad choices before connecting."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edensplit.client.flows import FrameOnceClient, SplitClient, open_backend
from edensplit.client.http import HttpTransport
from edensplit.client.jobs import interpolate_stream
from edensplit.client.requests import Answer, Call
from edensplit.client.services import Cloud, Edge
from edensplit.client.transport import ServerError
from edensplit.errors import EdenError, ErrorCode
from edensplit.model.seeds import noise_seed
from edensplit.servers.launch import free_port
from tests.conftest import make_frames

FRAMES = make_frames(3, 40, 70, seed=5)


class Recording:
    """A transport wrapper that records each call and the error code it got, if any."""

    def __init__(self, inner: HttpTransport):
        self.inner, self.log = inner, []

    def __getattr__(self, name: str):  # config, url, done, ...: the inner transport's
        return getattr(self.inner, name)

    def send(self, call: Call, request_id: str) -> Answer:
        options = call.options if call.binary else call.document or {}  # query / header, or the JSON document
        entry = [call.operation, call.ids.get("index"), options.get("interpolate"), "ok"]
        self.log.append(entry)
        try:
            return self.inner.send(call, request_id)
        except ServerError as exc:
            entry[3] = str(exc.code)
            raise

    def health(self) -> dict:
        return self.inner.health()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("payload", ["binary", "json"])
def test_http_client_resends_the_frame_a_lost_session_needs(cloud, edge, payload):
    """The edge drops the session between pairs (as a restart or expiry would): it answers 409
    SESSION_NOT_FOUND once (after its 2 s grace for an out-of-order frame 1), the client resends frame 1
    store-only and retries frame 2."""
    recording = Recording(HttpTransport("http://testserver", client=edge, name="edge server"))
    client = FrameOnceClient(Cloud(HttpTransport("http://testserver", client=cloud), payload=payload),
                             Edge(recording, payload=payload))
    client.begin_video()
    first = client.interpolate_pair(FRAMES[0], FRAMES[1], noise_seed(3, 0), 0)
    assert edge.delete(f"/api/v1/sessions/{client.session_id}").json()["data"]["dropped"]
    second = client.interpolate_pair(FRAMES[1], FRAMES[2], noise_seed(3, 1), 1)
    assert client.resent == 1
    assert recording.log == [["session_frame", 0, False, "ok"], ["session_frame", 1, None, "ok"],
                             ["session_frame", 2, None, "SESSION_NOT_FOUND"], ["session_frame", 1, False, "ok"],
                             ["session_frame", 2, None, "ok"]]
    pairs = SplitClient(Cloud(HttpTransport("http://testserver", client=cloud)),
                        Edge(HttpTransport("http://testserver", client=edge)))
    assert np.array_equal(first, pairs.interpolate_pair(FRAMES[0], FRAMES[1], noise_seed(3, 0)))
    assert np.array_equal(second, pairs.interpolate_pair(FRAMES[1], FRAMES[2], noise_seed(3, 1)))


@pytest.mark.parametrize("kwargs,phrase", [
    ({"transport": "grpc"}, "unknown transport"),
    ({"flow": "c"}, "unknown flow"),
    ({"payload": "xml"}, "payload must be"),
    ({"wire_dtype": "float8"}, "wire_dtype"),
    ({"transport": "ws", "compress": "zstd"}, "HTTP only"),
])
def test_open_backend_refuses_bad_choices_before_connecting(kwargs, phrase):
    nowhere = f"http://127.0.0.1:{free_port()}"  # a WebSocket transport would fail to connect here instead
    with pytest.raises(EdenError, match=phrase) as err:
        open_backend(cloud_url=nowhere, edge_url=nowhere, **{"transport": "ws", **kwargs})
    assert err.value.code == ErrorCode.INVALID_PARAMETER


class SlowFirstCloud:
    """The in-process cloud, but the encoding of frame 1 waits until frame 2's has started: pair 1's request
    is ready for the edge before pair 0's."""

    def __init__(self, cloud: Cloud):
        self.cloud, self.second_started = cloud, threading.Event()

    def encode_frame(self, frame):
        if np.array_equal(frame, FRAMES[2]):
            self.second_started.set()
        elif np.array_equal(frame, FRAMES[1]):
            assert self.second_started.wait(30), "pair 1 never started while pair 0 encoded"
        return self.cloud.encode_frame(frame)


class Watching(Recording):
    """Recording, and how many edge requests were in flight at once."""

    def __init__(self, inner: HttpTransport):
        super().__init__(inner)
        self.running, self.most, self.lock = 0, 0, threading.Lock()

    def send(self, call: Call, request_id: str) -> Answer:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return super().send(call, request_id)
        finally:
            with self.lock:
                self.running -= 1


def test_a_sessions_edge_requests_go_in_frame_order_one_at_a_time(cloud, edge):
    """Pairs overlap at the cloud, but frame k+1 reaches the edge only after frame k is answered: a request
    waiting at the edge for its predecessor would hold an admission place the predecessor may need."""
    recording = Watching(HttpTransport("http://testserver", client=edge, name="edge server"))
    client = FrameOnceClient(SlowFirstCloud(Cloud(HttpTransport("http://testserver", client=cloud))),  # type: ignore[arg-type]
                             Edge(recording))
    stream = list(interpolate_stream(client, FRAMES, base_seed=3, window=2))
    assert [entry[1] for entry in recording.log] == [0, 1, 2] and recording.most == 1
    pairs = SplitClient(Cloud(HttpTransport("http://testserver", client=cloud)),
                        Edge(HttpTransport("http://testserver", client=edge)))
    for k in range(2):
        assert np.array_equal(stream[2 * k + 1][0], pairs.interpolate_pair(FRAMES[k], FRAMES[k + 1],
                                                                           noise_seed(3, k)))


def test_a_resumed_session_starts_by_storing_its_first_frame(cloud, edge):
    recording = Recording(HttpTransport("http://testserver", client=edge, name="edge server"))
    client = FrameOnceClient(Cloud(HttpTransport("http://testserver", client=cloud)), Edge(recording))
    list(interpolate_stream(client, FRAMES[1:], base_seed=3, window=2, start=1))
    assert recording.log == [["session_frame", 1, False, "ok"], ["session_frame", 2, None, "ok"]]
