"""Ray Serve (#11): `edensplit serve-ray` on a local Ray cluster (loopback only), one Encoder replica and two
Interpolator replicas on CPU, the tiny random-weight model; the existing client through the one proxy under
/cloud and /edge, over HTTP and WebSocket, flows A and B; Ray's queue bound answered with 503. Ray is in the
`test` extra: this module is never skipped. The cluster starts once for the module (about 25 s on 2 cores).
Measurements (session affinity on and off, a replica lost mid-job, @serve.batch vs the project's batcher,
load) are in benchmarks/ray_replicas.py."""

from __future__ import annotations

import asyncio
import json
import pickle
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import ray  # noqa: F401  (the test extra installs ray[serve]: a missing Ray fails here, it is not skipped)
from ray.serve._private.common import StreamingHTTPRequest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from edensplit.errors import EdenError
from edensplit.serve_ray.cluster import deployment_options, resource_shortfall
from edensplit.serve_ray.config import load_config
from edensplit.serve_ray.deployments import Mounted
from edensplit.serve_ray.launch import RayServeProcess, replica_requests
from edensplit.serve_ray.proxy import ReplicaLost
from edensplit.serve_ray.router import session_of
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


# -- without a cluster: the config file, the router's session key, the two ASGI middlewares --------------------

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
                          ("- a list", "mapping"), ("edge: [", "not valid YAML")):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(EdenError, match=message):
            load_config(path)


def pending(path: str, *, session_header: str = "", kind: str = "http") -> SimpleNamespace:
    scope = {"type": kind, "path": path, "root_path": "/edge", "headers": []}
    arg = pickle.dumps(StreamingHTTPRequest(asgi_scope=scope, proxy_actor_name="proxy"))
    return SimpleNamespace(metadata=SimpleNamespace(session_id=session_header), args=[arg])


def test_router_finds_the_session_in_the_path():
    assert session_of(pending("/edge/api/v1/sessions/abc123/frames/7")) == "abc123"
    assert session_of(pending("/edge/api/v1/sessions/abc123/frames/7", session_header="hdr")) == "hdr"
    assert session_of(pending("/edge/api/v1/interpolate")) is None
    assert session_of(pending("/edge/ws/interpolate", kind="websocket")) is None
    assert session_of(SimpleNamespace(metadata=SimpleNamespace(session_id=""), args=[b"not a pickle"])) is None
    assert session_of(None) is None


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
