"""The user's production commands: `gunicorn edge_server.main:app -w 2 -k uvicorn.workers.UvicornWorker --bind
...` and the same for `cloud_server.main:app`, run from the repository root with no environment beyond the
model's variables (EDEN_CONFIG, DEVICE; EDEN_RANDOM_WEIGHTS since tests have no checkpoint).

A video job over HTTP and over WebSocket must give the frames of `--local`, ship as many bytes per generated
frame as against one process (a frame-once session stays with the edge worker that holds its frames: no frame
resent), and every scrape of /metrics, whichever worker answers it, must count every request of the job.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from edensplit.servers.launch import GunicornProcess, ServerProcess
from edensplit.servers.metrics import master_dir, process_identity
from tests.conftest import N_FRAMES, ROOT, generated, run_cli

WORKERS = 2
API = ("/api/", "/ws/")
SCRAPES_FOR_S = 30.0  # scrapes go on this long at most, until both workers have answered one


def scrape(url: str) -> str:
    """/metrics on a connection of its own: the kernel hands each new connection to either worker."""
    return httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10).text


def api_requests(text: str) -> Counter[tuple[str, str, str]]:
    """edensplit_requests_total of the API routes, by (route, method, status)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "edensplit_requests_total" and s.labels["route"].startswith(API):
                counts[s.labels["route"], s.labels["method"], s.labels["status"]] += s.value
    return counts


def api_bytes(text: str) -> float:
    """Request and response body bytes counted on the API routes (HTTP and WebSocket)."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name in ("edensplit_request_bytes_total", "edensplit_response_bytes_total")
               and s.labels["route"].startswith(API))


def per_worker(server: GunicornProcess, route: str) -> dict[int, float]:
    """{worker pid: requests it answered on `route`}, from the files the workers write their metrics to."""
    folder = Path(master_dir(str(process_identity(server.proc.pid))))
    counts: dict[int, float] = {}
    for path in folder.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if name == "edensplit_requests_total" and labels["route"] == route:
                counts[pid] = counts.get(pid, 0) + value
    return counts


@pytest.fixture(scope="module")
def gunicorn_servers(model_env, workdir):
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    cloud = GunicornProcess("cloud_server.main:app", workers=WORKERS, cwd=ROOT, log_path=workdir / "g-cloud.log")
    edge = GunicornProcess("edge_server.main:app", workers=WORKERS, cwd=ROOT, log_path=workdir / "g-edge.log")
    for server in (cloud, edge):
        server.env = {**env, **model_env}  # the user's command: nothing set beyond the model's variables
    try:
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(server.start) for server in (cloud, edge)]:
                started.result()
        yield cloud, edge
    finally:
        cloud.stop()
        edge.stop()
    for server in (cloud, edge):
        log = server.log_path.read_text()
        assert "Traceback" not in log and "WORKER TIMEOUT" not in log, log[-3000:]


def run_job(cloud: ServerProcess, edge: ServerProcess, clip: Path, out: Path, transport: str
            ) -> tuple[list[Counter[tuple[str, str, str]]], float]:
    """Run the video job; the API requests the cloud and the edge counted for it, and its bytes per generated
    frame (both servers, both ways)."""
    before = [scrape(s.url) for s in (cloud, edge)]
    run_cli("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--save_frames",
            "--transport", transport, "--cloud_url", cloud.url, "--edge_url", edge.url, env={})
    after = [scrape(s.url) for s in (cloud, edge)]
    requests = [api_requests(a) - api_requests(b) for a, b in zip(after, before, strict=True)]
    sent = sum(api_bytes(a) - api_bytes(b) for a, b in zip(after, before, strict=True))
    return requests, sent / (N_FRAMES - 1)


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_gunicorn_workers_serve_a_video_like_one_process(gunicorn_servers, servers, clip, local_run, workdir,
                                                         transport):
    cloud, edge = gunicorn_servers
    single, single_bytes = run_job(*servers, clip, workdir / f"one-process-{transport}", transport)
    edge_route = "/ws/interpolate" if transport == "ws" else "/api/v1/sessions/{session_id}/frames/{index}"
    edge_before = per_worker(edge, edge_route)
    before = [api_requests(scrape(s.url)) for s in (cloud, edge)]

    out = workdir / f"gunicorn-{transport}"
    requests, per_frame = run_job(cloud, edge, clip, out, transport)
    split = generated(out)
    assert len(split) == len(local_run) == N_FRAMES - 1
    for k, (a, b) in enumerate(zip(split, local_run, strict=True)):
        assert np.array_equal(a, b), f"generated frame {k} differs from --local"

    # The requests of one process (no 409 SESSION_NOT_FOUND, no frame sent twice) and its bytes; the session's
    # edge requests all answered by one worker (frame 0 stored, then 11 pairs).
    assert requests == single, (requests, single)
    assert abs(per_frame - single_bytes) <= 0.10 * single_bytes, (per_frame, single_bytes)
    grown = {pid: n - edge_before.get(pid, 0) for pid, n in per_worker(edge, edge_route).items()}
    assert sorted(n for n in grown.values() if n) == [N_FRAMES], f"the session's requests by worker: {grown}"

    # Every scrape counts the whole job, whichever worker answers it; scrape until both workers have answered.
    for server, was, job in zip((cloud, edge), before, requests, strict=True):
        scraped = per_worker(server, "/metrics")
        answered: set[int] = set()
        deadline, scrapes = time.monotonic() + SCRAPES_FOR_S, 0
        while len(answered) < WORKERS:
            assert time.monotonic() < deadline, f"{server.app}: only workers {answered} answered {scrapes} scrapes"
            assert api_requests(scrape(server.url)) == was + job
            scrapes += 1
            answered = {pid for pid, n in per_worker(server, "/metrics").items() if n > scraped.get(pid, 0)}


def workers_of(server: GunicornProcess) -> set[int]:
    pid = server.proc.pid
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def gauge(server: GunicornProcess, pid: int, name: str) -> float | None:
    """A live-summed gauge as worker `pid` last set it, from its file; None before it has."""
    folder = Path(master_dir(str(process_identity(server.proc.pid))))
    path = folder / f"gauge_livesum_{pid}.db"
    if not path.is_file():
        return None
    return next((value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
                 if json.loads(key)[1] == name), None)


def metric(text: str, name: str) -> float:
    return next(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name)


def test_a_dead_workers_counts_stay_and_its_gauges_go(gunicorn_servers):
    """A worker killed: gunicorn starts another; the counts of the dead one stay on /metrics, its gauges go."""
    edge = gunicorn_servers[1]
    before = api_requests(scrape(edge.url))
    workers = workers_of(edge)
    assert len(workers) == WORKERS
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)  # a worker of the gunicorn this module started
    deadline = time.monotonic() + 120
    while not ((new := workers_of(edge) - workers) and gauge(edge, next(iter(new)), "edensplit_workers_ready") == 1):
        assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
        time.sleep(0.2)  # polling the master's children and the new worker's file: no event to wait on
    for _ in range(4):
        text = scrape(edge.url)
        assert metric(text, "edensplit_workers_ready") == WORKERS
        assert metric(text, "edensplit_inflight") == 0
        assert api_requests(text) == before


# What a local user could plant where the master's metrics directory goes (a plain file, once enough to stop every
# worker from booting), planted by the master itself in this gunicorn config's hook, before any worker starts: at
# the directory's place in this user's `<tmp>/edensplit-<uid>/`, and at the name it had directly in <tmp>.
TRAP = """\
import os, tempfile
from edensplit.servers.metrics import DIR_PREFIX, process_identity

def on_starting(server):
    name = DIR_PREFIX + process_identity(os.getpid())
    root = os.path.join(tempfile.gettempdir(), f"edensplit-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    for path in (os.path.join(root, name), os.path.join(tempfile.gettempdir(), name)):
        with open(path, "w") as f:
            f.write("not a directory")
"""


def test_a_worker_boots_whatever_is_at_its_metrics_directory(model_env, tmp_path):
    """The user's command (plus the hook that plants the file): the worker warns once and serves its own
    /metrics."""
    (tmp_path / "trap.py").write_text(TRAP)
    log = tmp_path / "g-trap.log"
    server = GunicornProcess("edensplit.cloud:app", workers=1, cwd=ROOT, log_path=log,
                             extra_args=("-c", str(tmp_path / "trap.py")))
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    server.env = {**env, **model_env, "TMPDIR": str(tmp_path)}
    with server:
        text = scrape(server.url)
    assert metric(text, "edensplit_workers_ready") == 1
    assert log.read_text().count("metrics directory not used") == 1, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
