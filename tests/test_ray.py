"""Ray Serve (#11): `edensplit serve-ray` on a local Ray cluster (loopback only), one Encoder replica and two
Interpolator replicas on CPU, the tiny random-weight model; the existing client through the one proxy under
/cloud and /edge, over HTTP and WebSocket, flows A and B; Ray's queue bound answered with 503; the proxy's own
refusals (no key, a body over the limit) before it reads a body. Without a cluster: the config file, the
session router, the proxy's middlewares and how the keys reach the cluster (never as deployment arguments).
Ray is in the `test` extra: this module is never skipped. The cluster starts once for the module (about 25 s on
2 cores). Measurements (session affinity on and off, a replica lost mid-job, @serve.batch vs the project's
batcher, load) are in benchmarks/ray_replicas.py."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import ray  # noqa: F401  (the test extra installs ray[serve]: a missing Ray fails here, it is not skipped)
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient, WebSocketDenialResponse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from edensplit.errors import EdenError
from edensplit.serve_ray import router
from edensplit.serve_ray.cluster import cluster_environment, deployment_options, proxy_checks_keys, resource_shortfall
from edensplit.serve_ray.config import KEY_SETTINGS, load_config
from edensplit.serve_ray.deployments import Mounted
from edensplit.serve_ray.launch import RayServeProcess, replica_requests
from edensplit.serve_ray.proxy import CALLBACK, CALLBACK_ENV, LIMIT_ENV, Gate, ReplicaLost, middlewares
from edensplit.serve_ray.router import SessionAffinityRouter, session_of, session_replica
from edensplit.servers.auth import Access
from edensplit.video.sample import make_sample_clip
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames

from .conftest import ROOT, generated, run_cli

KEY = "ray-test-key"
SESSION_ROUTE = "POST /edge/api/v1/sessions/{session_id}/frames/{index}"
RAY_YAML = """\
ray: {num_cpus: 2}
settings: {TORCH_THREADS: 1}
cloud:
  route_prefix: /cloud
  deployment: {num_replicas: 1, ray_actor_options: {num_cpus: 0}}
edge:
  route_prefix: /edge
  deployment:
    num_replicas: 2
    max_ongoing_requests: 4
    max_queued_requests: 4
    ray_actor_options: {num_cpus: 0}
"""


# -- without a cluster: the config file, the router's session key, the ASGI middlewares ----------------------

def test_example_config_and_errors(tmp_path):
    example = load_config(ROOT / "configs" / "ray.yaml")
    assert example.edge.options()["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in example.edge.options()
    assert example.cloud.options()["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    assert example.cloud.settings == {"max_batch": 8} and example.settings["eden_dtype"] == "bfloat16"
    assert deployment_options(example.edge, True)["request_router_config"]["request_router_class"].endswith(
        "SessionAffinityRouter")
    assert "request_router_config" not in deployment_options(example.cloud, False)
    assert resource_shortfall(example, {"CPU": 8.0}) == ["2 GPU (the cluster has 0)"]
    assert resource_shortfall(example, {"CPU": 2.0, "GPU": 2.0}) == []
    default = load_config(None)
    assert (default.cloud.route_prefix, default.edge.route_prefix, default.http.host) == ("/cloud", "/edge",
                                                                                          "127.0.0.1")
    for text, message in (("edge: {deployment: {num_replica: 2}}", "unknown Ray Serve deployment options"),
                          ("edge: {settings: {MAX_BACH: 2}}", "unknown server settings"),
                          ("cloud: {route_prefix: cloud}", "route prefix"),
                          ("edge: {deployment: {num_replicas: 2, autoscaling_config: {max_replicas: 3}}}",
                           "not both"),
                          ("- a list", "mapping"), ("edge: [", "not valid YAML"),
                          ("settings: {EDENSPLIT_API_KEY: k}", "not in this file"),
                          ("edge: {settings: {EDENSPLIT_API_KEYS_FILE: /k}}", "not in this file")):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(EdenError, match=message):
            load_config(path)


def pending(session: str = "") -> SimpleNamespace:
    """A pending request as Ray's router gets it: its session is the metadata Ray's proxy takes from X-Session-ID."""
    return SimpleNamespace(metadata=SimpleNamespace(session_id=session, internal_request_id="r"),
                           routing_context=SimpleNamespace(should_backoff=False), args=[b"never read"])


def replicas(*names: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(replica_id=SimpleNamespace(unique_id=name)) for name in names]


def test_router_keys_sessions_by_the_session_id_alone():
    assert session_of(pending("abc123")) == "abc123"
    assert session_of(pending()) is None and session_of(None) is None
    assert "pickle" not in Path(router.__file__).read_text()
    router_ = SessionAffinityRouter.__new__(SessionAffinityRouter)  # no Ray deployment needed for the choice
    router_.initialize_state()
    four = replicas("a", "b", "c", "d")
    chosen = {s: asyncio.run(router_.choose_replicas(four, pending(s))) for s in (f"s{i}" for i in range(40))}
    assert all(len(ranks) == 1 and len(ranks[0]) == 1 for ranks in chosen.values())  # its replica, no fallback
    owner = {s: ranks[0][0].replica_id.unique_id for s, ranks in chosen.items()}
    assert len(set(owner.values())) == 4  # sessions spread over the replicas
    assert all(asyncio.run(router_.choose_replicas(four[::-1], pending(s)))[0][0].replica_id.unique_id == o
               for s, o in owner.items())  # whatever the candidates' order
    three = [r for r in four if r.replica_id.unique_id != "b"]  # b lost: only its sessions move
    assert all(session_replica(s, three).replica_id.unique_id == o for s, o in owner.items() if o != "b")
    spread = asyncio.run(router_.choose_replicas(four, pending()))  # not a session: every replica, in turn
    assert len(spread) == 1 and sorted(r.replica_id.unique_id for r in spread[0]) == ["a", "b", "c", "d"]
    assert asyncio.run(router_.choose_replicas(four, pending()))[0][0] is not spread[0][0]


# -- the proxy's gate: a key and a size checked before the body is read ---------------------------------------

class Inner:
    """What stands for Ray's proxy: reads the whole body (as it does, into its queue), answers 200 with the
    headers it got; records what it read."""

    def __init__(self):
        self.calls, self.read, self.headers = 0, 0, {}

    async def __call__(self, scope, receive, send):
        self.calls += 1
        self.headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # Ray's proxy: the client left, the request is cancelled, nothing is sent
            self.read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await Response(b"ok")(scope, receive, send)


def gate(access: Access | None = None, limit_mb: float = 1.0) -> tuple[TestClient, Inner]:
    inner = Inner()
    app = Gate(ReplicaLost(inner), access=access if access is not None else Access(KEY), max_request_mb=limit_mb)
    return TestClient(app), inner


BEARER = {"Authorization": f"Bearer {KEY}"}


def test_gate_refuses_a_request_without_a_key_before_reading_its_body():
    client, inner = gate()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        answer = client.post("/edge/api/v1/interpolate", content=b"x" * 1000, headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]["code"] == "UNAUTHORIZED"
        assert answer.json()["error"]["details"] == {"refused_by": "ray-proxy"}
    assert inner.calls == 0 and inner.read == 0
    assert client.post("/edge/api/v1/interpolate", content=b"x" * 1000, headers=BEARER).text == "ok"
    assert inner.read == 1000


def test_gate_leaves_health_open_without_a_body():
    client, inner = gate()
    for path in ("/edge/health", "/edge/health/ready", "/cloud/health/live/", "/-/healthz", "/-/routes"):
        assert client.get(path).status_code == 200, path
    assert inner.calls == 5
    for method, path, body in (("POST", "/edge/health", b""), ("GET", "/edge/health", b"x"),
                               ("GET", "/health-cloud/api/v1/encode", b""), ("GET", "/edge/api/v1/health/x", b"")):
        assert client.request(method, path, content=body).status_code == 401, (method, path)
    assert inner.calls == 5


def test_gate_knows_every_client_of_a_keys_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("alice key-of-alice\nbob key-of-bob\n")
    client, inner = gate(Access(keys_file=keys))
    for key, status in (("key-of-alice", 200), ("key-of-bob", 200), (KEY, 401)):
        assert client.post("/cloud/api/v1/encode", headers={"Authorization": f"Bearer {key}"}).status_code == status


def test_gate_refuses_a_body_over_the_limit():
    client, inner = gate(limit_mb=1.0)
    big = b"x" * (2**20 + 1)
    answer = client.post("/edge/api/v1/interpolate", content=big, headers=BEARER)  # declared: refused unread
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert inner.calls == 0

    def chunks():  # no Content-Length: counted as the proxy reads it, cut at the limit
        for _ in range(4):
            yield b"x" * 2**19

    answer = client.post("/edge/api/v1/interpolate", content=chunks(), headers=BEARER)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert inner.read <= 2**20
    keyless, inner = gate(Access())  # a server without keys: every request passes, the limit still holds
    assert keyless.post("/edge/api/v1/interpolate", content=b"x" * 10).text == "ok"
    assert keyless.post("/edge/api/v1/interpolate", content=big).status_code == 413


def test_gate_sets_the_headers_that_steer_rays_proxy():
    client, inner = gate()
    steering = {"X-Session-ID": "other", "X-Request-Timeout-Seconds": "0", "X-Request-Disconnect-Disabled": "?1"}
    client.post("/edge/api/v1/sessions/abc/frames/3", headers={**BEARER, **steering})
    assert inner.headers["x-session-id"] == "abc"  # the path's session, whatever the caller said
    assert "x-request-timeout-seconds" not in inner.headers and "x-request-disconnect-disabled" not in inner.headers
    client.post("/edge/api/v1/interpolate", headers={**BEARER, **steering})
    assert not {"x-session-id", "x-request-timeout-seconds"} & set(inner.headers)
    with client.websocket_connect("/edge/ws/interpolate", headers={**BEARER, **steering}):
        pass
    assert inner.headers["x-request-timeout-seconds"] == "0" and "x-session-id" not in inner.headers
    client.post("/edge/api/v1/interpolate", headers={**BEARER, "X_Session_ID": "pinned"})  # Ray's other spelling
    assert not any(k.replace("_", "-") == "x-session-id" for k in inner.headers)
    client.post("/edge/api/v1/sessions/caf%C3%A9/frames/1", headers=BEARER)  # not an id: the servers refuse it
    assert "x-session-id" not in inner.headers and inner.calls == 5


def test_gate_refuses_a_websocket_handshake_without_a_key(monkeypatch):
    client, inner = gate()
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/edge/ws/interpolate"):
        pass
    assert denied.value.status_code == 401 and denied.value.json()["error"]["code"] == "UNAUTHORIZED"
    assert inner.calls == 0
    assert middlewares()[-1].cls is Gate  # the outermost: it runs first
    monkeypatch.setenv("EDENSPLIT_API_KEY", "")  # a key that cannot be: every request refused, health open
    broken = TestClient(Gate(Inner()))
    assert broken.post("/edge/api/v1/interpolate", headers=BEARER).status_code == 503
    assert broken.get("/edge/health").status_code == 200


def test_keys_never_reach_rays_cluster_state(tmp_path, monkeypatch):
    """The keys stay in the environment (inherited by a local cluster's processes), never deployment arguments;
    --api_key cannot reach a cluster started with `ray start`."""
    monkeypatch.setenv("EDENSPLIT_API_KEY", KEY)
    monkeypatch.setenv("EDENSPLIT_CLOUD_API_KEY", "another")
    base = {"eden_random_weights": True, "edensplit_api_key": KEY}
    config = load_config(None)
    assert config.http.request_timeout_s == 360
    settings = config.service_settings(config.edge, base)
    assert not set(settings) & set(KEY_SETTINGS)
    keyed, env = cluster_environment(config, base, settings, settings)
    assert keyed and env["EDENSPLIT_API_KEY"] == KEY and env[LIMIT_ENV] == "512" and env[CALLBACK_ENV] == CALLBACK
    config.ray.address = "auto"
    assert cluster_environment(config, base, settings, settings) == (True, {})
    with pytest.raises(EdenError, match="ray start"):
        cluster_environment(config, {**base, "edensplit_api_key": "flag"}, settings, settings)


def test_mounted_app_sees_its_own_paths_and_one_request_id():
    async def where(request):
        return JSONResponse({"path": request.scope["path"], "route_path": request.url.path})

    async def echo(request):
        return Response(b"", headers={"X-Request-ID": "abc"})

    inner = Starlette(routes=[Route("/api/v1/x", where), Route("/id", echo)])
    app = Mounted(inner)
    with TestClient(app, root_path="/edge") as client:
        assert client.get("/edge/api/v1/x").json()["path"] == "/api/v1/x"
        assert "x-request-id" not in client.get("/edge/id").headers
        assert client.get("/edge/nowhere").status_code == 404


def test_replica_lost_becomes_503_not_ready():
    async def silent(scope, receive, send):  # what Ray's proxy does when the replica died: no answer at all
        return None

    async def answers(scope, receive, send):
        await Response(b"ok")(scope, receive, send)

    lost = TestClient(ReplicaLost(silent)).get("/edge/api/v1/interpolate")  # no lifespan: plain ASGI apps
    assert lost.status_code == 503 and lost.headers["retry-after"] == "1"
    assert lost.json()["error"]["code"] == "NOT_READY"
    assert TestClient(ReplicaLost(answers)).get("/").text == "ok"


# -- a local Ray cluster -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_env(model_env) -> dict[str, str]:
    return {**model_env, "EDENSPLIT_API_KEY": KEY, "TORCH_THREADS": "1"}


@pytest.fixture(scope="module")
def served(ray_env, workdir):
    config = workdir / "ray.yaml"
    config.write_text(RAY_YAML)
    with RayServeProcess(config, env=ray_env, log_path=workdir / "serve-ray.log") as process:
        assert process.ready(KEY)
        yield process
    assert process.proc is not None and process.proc.returncode == 0, (workdir / "serve-ray.log").read_text()[-2000:]


@pytest.fixture(scope="module")
def ray_clip(workdir) -> Path:
    return make_sample_clip(workdir / "ray-clip.mkv", n_frames=6, width=96, height=72, rate=Fraction(30000, 1001))


def job(clip: Path, out: Path, env: dict[str, str], *extra: str) -> list[np.ndarray]:
    run_cli("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--save_frames", "--codec", "ffv1",
            "--no_progress", "--retry_for", "60", *extra, env=env)
    return generated(out)


@pytest.fixture(scope="module")
def ray_local(ray_env, ray_clip, workdir) -> list[np.ndarray]:
    """The reference, with the replicas' thread count (TORCH_THREADS=1): the exact mode wants the same."""
    frames = job(ray_clip, workdir / "ray-local", ray_env, "--local")
    assert len(frames) == 5
    return frames


def test_video_through_the_proxy_identical_to_local_on_both_replicas(served, ray_env, ray_clip, ray_local, workdir):
    """The client, unchanged, with CLOUD_SERVER_URL=.../cloud and EDGE_SERVER_URL=.../edge: HTTP and WebSocket,
    flow A (frame-once and pairs) and flow B (the composed route: the edge has the Encoder deployment encode
    over a Ray handle, so nothing reaches /cloud over HTTP)."""
    local = ray_local
    urls = {"CLOUD_SERVER_URL": served.cloud_url, "EDGE_SERVER_URL": served.edge_url}
    env = {**ray_env, **urls}
    for name, extra in (("http-a", ()), ("ws-a", ("--transport", "ws")), ("http-pairs", ("--pairs",))):
        frames = job(ray_clip, workdir / f"ray-{name}", env, *extra)
        assert len(frames) == len(local) and all(np.array_equal(a, b) for a, b in zip(frames, local, strict=True)), name
    cloud_http = sum(n for c in replica_requests(served.session_dir, "cloud", "Encoder").values()
                     for route, n in c.items() if route.startswith("POST /cloud"))
    for name, extra in (("http-b", ("--flow", "b")), ("ws-b", ("--flow", "b", "--transport", "ws"))):
        frames = job(ray_clip, workdir / f"ray-{name}", env, *extra)
        assert all(np.array_equal(a, b) for a, b in zip(frames, local, strict=True)), name
    encoder = replica_requests(served.session_dir, "cloud", "Encoder")
    assert sum(n for c in encoder.values() for route, n in c.items() if route.startswith("POST /cloud")) == cloud_http
    assert sum(n for c in encoder.values() for route, n in c.items() if route.startswith("CALL")) == 12  # 2 x 6 frames
    served_by = {replica: sum(c.values()) for replica, c in
                 replica_requests(served.session_dir, "edge", "Interpolator").items()}
    assert len(served_by) == 2 and all(n > 0 for n in served_by.values()), served_by
    # Session affinity: each HTTP session's 6 requests on one replica, none refused as SESSION_NOT_FOUND.
    log = "".join(p.read_text() for p in Path(served.session_dir, "logs", "serve").glob("replica_edge_*.log"))
    assert " 409 " not in log


def head_only(url: str, headers: dict[str, str]) -> tuple[int, dict]:
    """POST a request's head without its body, then read the answer (the server closes the connection)."""
    where = httpx.URL(url)
    head = f"POST {where.raw_path.decode()} HTTP/1.1\r\nHost: {where.host}:{where.port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection((where.host, where.port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_the_proxy_refuses_before_reading_a_body(served, workdir):
    """Ray's proxy reads a body into its memory as it hands the request on; the Gate answers first: a request
    without the key that declares a terabyte it never sends is refused at once (401), with the key the same
    declared size is 413, a WebSocket handshake without the key is 401, all from the proxy (its answers say so:
    a replica's would not)."""
    url = f"{served.edge_url}/api/v1/interpolate_frames"
    for headers, status, code in (({}, 401, "UNAUTHORIZED"),
                                  ({"Authorization": f"Bearer {KEY}"}, 413, "PAYLOAD_TOO_LARGE")):
        started = time.monotonic()
        got, body = head_only(url, {"Content-Length": str(10**12), "Content-Type": FRAMES_MEDIA_TYPE, **headers})
        assert time.monotonic() - started < 5, "the proxy waited for a body"
        assert (got, body["error"]["code"]) == (status, code), body
        assert body["error"]["details"]["refused_by"] == "ray-proxy"
    with pytest.raises(InvalidStatus) as denied:
        ws_connect(served.edge_url.replace("http://", "ws://") + "/ws/interpolate", open_timeout=10).close()
    assert denied.value.response.status_code == 401 and b"ray-proxy" in denied.value.response.body
    assert proxy_checks_keys(served.cloud_url) is True
    assert "does not check keys" not in (workdir / "serve-ray.log").read_text()


def test_beyond_the_queue_is_503(served, ray_env, ray_clip, ray_local, workdir):
    """2 replicas x max_ongoing_requests 4 + max_queued_requests 4: a burst of 24 slow requests gets 200 or 503
    (Ray's backpressure), never another status; a client job sent meanwhile retries its 503s and finishes."""
    rng = np.random.default_rng(0)
    body = pack_frames({name: rng.integers(0, 255, (512, 512, 3), dtype=np.uint8) for name in ("frame0", "frame1")})
    headers = {"Content-Type": FRAMES_MEDIA_TYPE, "Accept": FRAMES_MEDIA_TYPE, "Authorization": f"Bearer {KEY}"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=32)) as http:
            return await asyncio.gather(*(http.post(f"{served.edge_url}/api/v1/interpolate_frames?seed={i}&"
                                                    "num_steps=32", content=body, headers=headers)
                                          for i in range(24)))

    env = {**ray_env, "CLOUD_SERVER_URL": served.cloud_url, "EDGE_SERVER_URL": served.edge_url}
    with ThreadPoolExecutor(1) as pool:
        client_job = pool.submit(job, ray_clip, workdir / "ray-under-load", env, "--pairs")
        answers = asyncio.run(burst())
        for _ in range(5):
            if client_job.done():
                break
            answers += asyncio.run(burst())
        frames = client_job.result(timeout=300)
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) == {200, 503}, statuses
    refused = next(r for r in answers if r.status_code == 503)
    assert "backpressure" in refused.text or json.loads(refused.text)["error"]["code"] in ("OVERLOADED", "NOT_READY")
    assert all(np.array_equal(a, b) for a, b in zip(frames, ray_local, strict=True))
