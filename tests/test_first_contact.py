"""First contact with the split (issue 18): a job with no server running fails within 1.5 s in one line naming
the commands that start them; one loading its model is waited for; a cloud and an edge running different models
are refused at the job's start; `edensplit doctor` checks the whole split and says so in a table (or JSON)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edensplit.client.preflight import probe_ready
from edensplit.client.transport import ClientConfig
from edensplit.errors import EdenError
from edensplit.model.checkpoint import load_model
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.launch import ServerProcess, free_port
from edensplit.settings import ServerSettings
from tests.conftest import ROOT, TINY_CONFIG, TINY_YAML, run_cli_here


@pytest.fixture(scope="module")
def other_edge(model_env, workdir) -> Iterator[ServerProcess]:
    """An edge started with another configuration than the `servers` pair: a wider tiny model (hidden_dim 64)."""
    config = workdir / "wider.yaml"
    config.write_text(TINY_YAML.replace("hidden_dim: 32", "hidden_dim: 64"))
    with ServerProcess("edensplit.edge:app", env={**model_env, "EDEN_CONFIG": str(config)},
                       log_path=workdir / "other-edge.log") as edge:
        yield edge


def nowhere() -> tuple[str, str]:
    """Two loopback URLs nothing listens on."""
    return f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"


def test_no_server_running_fails_the_job_in_one_line_within_1_5_s(clip, tmp_path):
    cloud, edge = nowhere()
    args = ["interpolate", "--video_path", str(clip), "--output_dir", str(tmp_path / "out"), "--cloud_url", cloud,
            "--edge_url", edge]
    started = time.perf_counter()
    here = run_cli_here(args, {})
    took = time.perf_counter() - started  # the CLI's own work, its start-up (imports) aside
    assert here.returncode == 2 and took < 1.5, (took, here.stderr)
    lines = here.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in here.stderr, here.stderr
    line = lines[0]
    assert line.startswith(f"edensplit interpolate: error: nothing answers at {cloud} (the cloud server: ")
    assert f"nor at {edge} (the edge server: " in line and "tries of GET /health/ready over" in line
    assert "connection refused" in line
    assert f"`edensplit cloud --port {cloud.rsplit(':', 1)[1]}`" in line
    assert f"`edensplit edge --port {edge.rsplit(':', 1)[1]}`" in line and line.endswith("with --local")
    assert not (tmp_path / "out" / "interpolated.mp4").exists()

    # As its own process: exit status 2 within 1.5 s beyond the CLI's start-up, which a refused --fps measures
    # (the same imports and the same probe of the video, then one line and status 2).
    def timed(*extra: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "edensplit", "interpolate", "--video_path", str(clip),
                               "--output_dir", str(tmp_path / "out"), *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        return time.perf_counter() - began, done

    start_up, refused = timed("--fps", "7")
    assert refused.returncode == 2 and "--fps 7" in refused.stderr
    took, proc = timed("--cloud_url", cloud, "--edge_url", edge)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nothing answers at" in proc.stderr
    # The CLI's own part is held to 1.5 s above, in this process. Here, that the process ends with it (not after a
    # minute of retries): within 1.5 s beyond its start-up, give or take as much again as the start-up itself
    # (a cold start is 2-3 s on 2 idle cores and twice that on cores as busy as the test run makes them).
    assert took - start_up < 1.5 + start_up, (took, start_up)


IN_PROCESS = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument with the TestClient")


@IN_PROCESS
def test_a_server_loading_its_model_is_waited_for_with_a_progress_line():
    # The real cloud app before its model is there: /health/ready answers 503 "loading" (as a server does while it
    # loads), and 200 once the model is loaded and warmed up.
    settings = ServerSettings(eden_random_weights=True)
    app = create_cloud_app(settings)
    runtime = app.state.runtime
    model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    said: list[str] = []
    loaded = threading.Timer(1.0, runtime.warm_up, args=(None, model))
    client = TestClient(app)  # no lifespan: nothing loads the model but the timer
    assert client.get("/health/ready").status_code == 503
    loaded.start()
    try:
        found = probe_ready("cloud", "http://testserver", ClientConfig(), startup_wait=30, say=said.append,
                            http=client)
    finally:
        loaded.join()
    assert found.answered and found.health and found.health["ready"] is True
    assert 0.5 < found.waited < 10 and found.tries > 2
    assert said and said[0].startswith("the cloud server at http://testserver is loading its model; waiting up to "
                                       "30 s for it (--startup_wait)"), said


@IN_PROCESS
def test_a_server_whose_model_failed_to_load_is_said_at_once():
    app = create_cloud_app(ServerSettings(eden_random_weights=True))
    app.state.runtime.load_error = "checkpoint not found"  # as the lifespan records a load that failed
    started = time.perf_counter()
    with pytest.raises(EdenError, match="could not load its model") as caught:
        probe_ready("edge", "http://testserver", ClientConfig(), startup_wait=30, http=TestClient(app))
    assert time.perf_counter() - started < 1.0 and "checkpoint" not in caught.value.message  # no error text leaks


def test_a_job_refuses_to_start_when_the_cloud_and_the_edge_run_different_models(servers, other_edge, clip,
                                                                                  tmp_path):
    cloud, _ = servers
    out = tmp_path / "mismatch"
    r = run_cli_here(["interpolate", "--video_path", str(clip), "--output_dir", str(out), "--cloud_url", cloud.url,
                      "--edge_url", other_edge.url], {})
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"edensplit interpolate: error: the cloud server at {cloud.url} and the edge server at "
                           f"{other_edge.url} run different models (model arguments hidden_dim 32 vs 64; weights "
                           "random (seed 0) (digest ")
    assert line.endswith("start both with the same MODEL_PATH (and EDEN_CONFIG); the job was not started"), line
    assert not (out / "interpolated.mp4").exists()


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli_here(["doctor", "--size", "64x96", *args], {})


def verdicts(stdout: str) -> dict[str, str]:
    """The table's check -> verdict."""
    rows = {}
    for line in stdout.splitlines()[1:]:
        if line.startswith("edensplit doctor:"):
            continue
        name, verdict = line[:line.index("  ")].strip(), line[line.index("  "):].split()[0]
        rows[name] = verdict
    return rows


def test_doctor_says_all_is_well_on_a_matching_pair(servers):
    cloud, edge = servers
    r = doctor("--cloud_url", cloud.url, "--edge_url", edge.url)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = verdicts(r.stdout)
    assert rows == {"cloud server": "ok", "edge server": "ok", "versions": "ok", "model": "ok",
                    "wire and transports": "ok", "round trip": "ok", "cloud TLS and key": "ok",
                    "edge TLS and key": "ok", "shared memory": "info", "GPUs": "info"}, r.stdout
    assert r.stdout.splitlines()[-1] == "edensplit doctor: all well (10 checks)"
    assert "cloud: HTTP, WebSocket; edge: HTTP, WebSocket; the cloud encodes float32, float16" in r.stdout
    assert "two 64x96 frames to a middle frame in" in r.stdout and "cloud encode_frame x2" in r.stdout

    document = json.loads(doctor("--cloud_url", cloud.url, "--edge_url", edge.url, "--json").stdout)
    assert document["ok"] is True
    trip = next(c for c in document["checks"] if c["check"] == "round trip")["figures"]
    # Two float32 frames of 64x96 to the cloud, their two encodings to the edge, one 64x96 frame back.
    assert trip["cloud"]["requests"] == 2 and trip["cloud"]["bytes_sent"] > 2 * 64 * 96 * 3
    assert trip["edge"]["requests"] == 2 and trip["edge"]["bytes_received"] >= 64 * 96 * 3
    gpus = next(c for c in document["checks"] if c["check"] == "GPUs")["figures"]
    assert gpus["cloud"] == {"device": "cpu", "gpus": 0}


def test_doctor_reports_a_model_mismatch_as_an_error(servers, other_edge):
    cloud, _ = servers
    r = doctor("--cloud_url", cloud.url, "--edge_url", other_edge.url)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = verdicts(r.stdout)
    assert rows["model"] == "FAIL" and rows["cloud server"] == rows["edge server"] == "ok", r.stdout
    assert "the cloud and the edge run different models: model arguments hidden_dim 32 vs 64; weights" in r.stdout
    # The round trip shows it too: the edge refuses the cloud's encodings of another model.
    assert rows["round trip"] == "FAIL" and "enc_out has hidden size 32, the loaded model 64" in r.stdout
    assert r.stdout.splitlines()[-1] == "edensplit doctor: 2 of 10 checks failed"


def test_doctor_with_nothing_running_and_a_usage_error(tmp_path: Path):
    cloud, edge = nowhere()
    started = time.perf_counter()
    r = doctor("--cloud_url", cloud, "--edge_url", edge, "--json")
    assert r.returncode == 1 and time.perf_counter() - started < 5
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["cloud server"]["verdict"] == "FAIL" and "edensplit cloud --port" in checks["cloud server"]["detail"]
    assert checks["round trip"]["verdict"] == "skipped"
    bad = run_cli_here(["doctor", "--size", "256by448"], {})
    assert bad.returncode == 2 and bad.stderr.strip() == ("edensplit doctor: error: --size must be HxW, e.g. "
                                                          "256x448; got '256by448'")


def test_a_server_that_takes_the_connection_but_is_too_busy_to_answer_is_there():
    """A listening socket that never answers (the kernel takes the connection: a saturated proxy) is a server
    that is there, left to the job's retries; nothing listening is a server that never answered."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(8)  # never accepted, never answered
        started = time.monotonic()
        found = probe_ready("cloud", f"http://127.0.0.1:{busy.getsockname()[1]}", ClientConfig(), probe_s=0.5)
        assert found.answered and found.health == {} and time.monotonic() - started < 1.5
    nobody = probe_ready("cloud", f"http://127.0.0.1:{free_port()}", ClientConfig(), probe_s=0.5)
    assert not nobody.answered and nobody.failure == "connection refused" and nobody.tries >= 2
