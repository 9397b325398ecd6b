"""Many clients, one server: EDENSPLIT_API_KEYS_FILE names a client per key; sessions and idempotency keys are per
client (two clients choosing the same session and request ids never meet), logs and metrics name the client, never
the key; the file is read again when it changes (within about a second) and at once on SIGHUP."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edensplit.client.flows import FrameOnceClient
from edensplit.client.http import HttpTransport
from edensplit.client.jobs import interpolate_video
from edensplit.client.services import Cloud, Edge
from edensplit.errors import ConfigError, EdenError
from edensplit.servers.launch import ServerProcess
from edensplit.wire.blob import BLOB_MEDIA_TYPE
from tests.conftest import generated, run_cli

KEYS = "# the clients of this test\nalice alice-key-0123456789\n\nbob   bob-key-9876543210   # Bob's laptop\n"


class SameIds(HttpTransport):
    """A client transport that names its requests r-0, r-1, ... (the other client does too, on purpose); a retry
    keeps its request's name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.named: dict[str, str] = {}
        self.lock = threading.Lock()

    def send(self, call, request_id):
        with self.lock:
            rid = self.named.setdefault(request_id, f"r-{len(self.named)}")
        return super().send(call, rid)


class SameSession(FrameOnceClient):
    """A frame-once client whose session id is `session` (the other client's is too, on purpose)."""

    session = "shared"

    def begin_video(self, start: int = 0) -> None:
        super().begin_video(start)
        self.session_id = self.session


@pytest.fixture(scope="module")
def keyed(model_env, workdir):
    """A cloud and an edge that know alice and bob (the edge presents bob's key to the cloud, flow B)."""
    keys = workdir / "clients.keys"
    keys.write_text(KEYS)
    env = {**model_env, "EDENSPLIT_API_KEYS_FILE": str(keys)}
    with ServerProcess("edensplit.cloud:app", env=env, log_path=workdir / "keyed-cloud.log") as cloud, \
            ServerProcess("edensplit.edge:app", env={**env, "CLOUD_SERVER_URL": cloud.url,
                                                     "EDENSPLIT_CLOUD_API_KEY": "bob-key-9876543210"},
                          log_path=workdir / "keyed-edge.log") as edge:
        yield cloud, edge, keys


def backend(cloud: ServerProcess, edge: ServerProcess, key: str, same_ids: bool = True,
            session: str = "shared") -> SameSession:
    def link(url: str, name: str) -> HttpTransport:
        return (SameIds if same_ids else HttpTransport)(url, api_key=key, name=name, max_connections=1)

    client = SameSession(Cloud(link(cloud.url, "cloud server")), Edge(link(edge.url, "edge server")))
    client.session = session
    return client


def client_counts(server: ServerProcess, key: str) -> dict[str, float]:
    """edensplit_requests_total of the session frames route, by client_name."""
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edensplit_requests_total" and sample.labels["route"].endswith("/frames/{index}"):
                name = sample.labels["client_name"]
                counts[name] = counts.get(name, 0) + sample.value
    return counts


def test_two_clients_with_the_same_ids_each_get_their_own_frames(keyed, clip, local_run, workdir, model_env):
    """Alice and Bob run a job each at once, with the same session id and the same request ids: if the servers
    mixed them up, a replayed answer or a frame of the other's session would show (Bob's job has another seed)."""
    cloud, edge, _ = keyed
    bob_local = workdir / "bob-local"
    run_cli("--video_path", str(clip), "--output_dir", str(bob_local), "--local", "--seed", "4", "--save_frames",
            "--codec", "ffv1", "--no_progress", env=model_env)
    jobs = {"alice": (3, workdir / "alice"), "bob": (4, workdir / "bob")}
    backends = {name: backend(cloud, edge, f"{name}-key-" + ("0123456789" if name == "alice" else "9876543210"))
                for name in jobs}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        seed, out = jobs[name]
        try:
            interpolate_video(backends[name], clip, out, seed=seed, save_frames=True, progress=False, codec="ffv1")
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for b in backends.values():
        b.close()
    assert not errors, errors
    assert all(np.array_equal(a, b) for a, b in zip(generated(workdir / "alice"), local_run, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(generated(workdir / "bob"), generated(bob_local), strict=True))
    assert backends["alice"].resent == backends["bob"].resent == 0  # neither lost its session to the other
    counts = client_counts(edge, "alice-key-0123456789")
    frames = len(local_run) + 1
    assert counts == {"alice": frames, "bob": frames}, counts  # the metric names the client


def test_another_clients_session_is_answered_as_an_unknown_one(keyed, clip):
    cloud, edge, _ = keyed
    frames = [np.full((72, 96, 3), v, np.uint8) for v in (10, 200)]
    alice = backend(cloud, edge, "alice-key-0123456789", same_ids=False, session="alices")
    alice.begin_video()
    alice.interpolate_pair(frames[0], frames[1], 0, 0)  # alice's session "alices" holds frames 0 and 1
    headers = {"Authorization": "Bearer bob-key-9876543210"}
    dropped = httpx.delete(f"{edge.url}/api/v1/sessions/alices", headers=headers, timeout=30)
    assert dropped.json()["data"] == {"dropped": False}  # as for a session that does not exist
    blob = alice.cloud.encode_frame(frames[1])
    r = httpx.post(f"{edge.url}/api/v1/sessions/alices/frames/2", content=blob.raw, params={"difference": 1.0},
                   headers={**headers, "Content-Type": BLOB_MEDIA_TYPE}, timeout=30)
    assert r.status_code == 409 and r.json()["error"]["code"] == "SESSION_NOT_FOUND"  # bob cannot write into it
    assert alice.interpolate_pair(frames[1], frames[0], 0, 1).shape == (72, 96, 3)  # alice's session is intact
    alice.close()


def test_logs_name_the_client_and_never_the_key(keyed, workdir):
    cloud, _, _ = keyed
    r = httpx.get(f"{cloud.url}/metrics", headers={"Authorization": "Bearer alice-key-0123456789",
                                                  "X-Request-ID": "who-is-it"}, timeout=30)
    assert r.status_code == 200
    deadline = time.monotonic() + 5  # the access line is written after the answer
    while not (lines := [line for line in (workdir / "keyed-cloud.log").read_text().splitlines()
                         if "who-is-it" in line]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(lines) == 1 and "client_name=alice" in lines[0], lines
    log = (workdir / "keyed-cloud.log").read_text()
    assert "alice-key-0123456789" not in log and "bob-key-9876543210" not in log


def test_a_removed_key_is_refused_after_sighup_and_within_two_seconds_without(model_env, workdir):
    keys = workdir / "reload.keys"
    keys.write_text("alice alice-key-0123456789\nbob bob-key-9876543210\n")
    env = {**model_env, "EDENSPLIT_API_KEYS_FILE": str(keys)}

    def status(server: ServerProcess, key: str) -> int:
        return httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code

    with ServerProcess("edensplit.cloud:app", env=env, log_path=workdir / "reload-cloud.log") as server:
        assert status(server, "bob-key-9876543210") == 200 and status(server, "carol-key-555") == 401
        keys.write_text("alice alice-key-0123456789\ncarol carol-key-555\n")  # bob out, carol in
        os.kill(server.proc.pid, signal.SIGHUP)  # at once: the next request sees the new file
        deadline = time.monotonic() + 5.0  # a few requests at most; the bound only ends a loop that would not
        while status(server, "carol-key-555") != 200:  # the signal is handled between two requests
            assert time.monotonic() < deadline, "SIGHUP did not reload the keys file"
        assert status(server, "bob-key-9876543210") == 401 and server.proc.poll() is None  # and it still runs
        keys.write_text("carol carol-key-555\n")  # alice out, no signal: the file's change is noticed
        changed = time.monotonic()
        while status(server, "alice-key-0123456789") != 401:
            assert time.monotonic() - changed < 2.0, "the keys file's change was not noticed within 2 s"
            time.sleep(0.05)  # polling a server for a change it notices on its own
        assert status(server, "carol-key-555") == 200


def test_the_keys_file_is_read_as_documented(tmp_path):
    from edensplit.servers.auth import Access, parse_keys

    assert parse_keys(KEYS, "keys") == {"alice-key-0123456789": "alice", "bob-key-9876543210": "bob"}
    for text, problem in (("alice", "expected `<name> <key>`"), ("al/ice k", "a client name is"),
                          ("a k\nb k", "b's key is also a's"), ("a k1\na k2", "named twice")):
        with pytest.raises(ConfigError, match=problem) as err:
            parse_keys(text, "keys")
        assert "k1" not in err.value.message and "k2" not in err.value.message  # a key is never shown
    with pytest.raises(ConfigError, match="empty"):
        Access(key="  ")
    missing = tmp_path / "none.keys"
    with pytest.raises(ConfigError, match="cannot read"):
        Access(keys_file=missing)
    access = Access(key="k-123")
    assert access.client("/api/v1/encode", "Bearer k-123") == "default" and access.names() == ["default"]
    with pytest.raises(EdenError) as err:
        access.client("/api/v1/encode", "Bearer nope")
    assert err.value.code == "UNAUTHORIZED"
    assert Access().client("/api/v1/encode", None) == "anonymous"


def test_an_empty_key_refuses_to_start_in_one_line(model_env, workdir):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "uvicorn", "edensplit.cloud:app", "--port", "1"],
                       env={**os.environ, **model_env, "EDENSPLIT_API_KEY": ""}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["edensplit cloud: error: EDENSPLIT_API_KEY is set but empty: unset it "
                                             "to serve without a key, or give a key"]


def test_flow_b_presents_the_cloud_key(keyed, clip):
    """The edge's own key for the cloud is EDENSPLIT_CLOUD_API_KEY (bob's here); alice's flow-B pair goes through."""
    _, edge, _ = keyed
    frames = [np.full((72, 96, 3), v, np.uint8) for v in (10, 200)]
    with Edge(HttpTransport(edge.url, api_key="alice-key-0123456789")) as client:
        assert client.interpolate_frames(frames[0], frames[1], seed=1).shape == (72, 96, 3)
