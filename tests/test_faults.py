"""Faults mid-job, with real uvicorn servers on loopback and the real CLI: the edge, then the cloud, killed with
SIGKILL while an HTTP job and a WebSocket job are running, and restarted on the same port about 5 s later: both
jobs ride out the outage (retries with back-off, the WebSocket reconnecting, the edge's lost session rebuilt) and
finish with every frame identical to `--local`. A server that stays down fails the job after its --retry_for
budget, with one line saying how many frames are kept, and the same command finishes it once the server is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edensplit.client.resume import saved_frames
from edensplit.servers.launch import ServerProcess
from tests.conftest import generated, run_cli
from tests.system import LONG_FRAMES, finish, local_frames, long_clip, requests_total, resume, start_cli, wait_for_saved

OUTAGE_S = 5.0  # how long a killed server stays down before it is started again (the scenario)
WINDOW = 2  # pairs in flight in a job


class Restartable:
    """A server process that can be killed (SIGKILL) and started again on the same port."""

    def __init__(self, app: str, env: dict[str, str], log_path: Path):
        self.app, self.env, self.log_path = app, env, log_path
        self.server = ServerProcess(app, env=env, log_path=log_path).start()

    @property
    def url(self) -> str:
        return self.server.url

    def kill(self) -> None:
        assert self.server.proc is not None
        self.server.proc.kill()
        self.server.proc.wait()

    def restart(self) -> None:
        self.server = ServerProcess(self.app, env=self.env, port=self.server.port, log_path=self.log_path).start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def fragile(model_env, workdir) -> Iterator[dict[str, Restartable]]:
    """A cloud and an edge of this module's own, since its tests kill them."""
    cloud = Restartable("edensplit.cloud:app", model_env, workdir / "fragile-cloud.log")
    edge = Restartable("edensplit.edge:app", {**model_env, "CLOUD_SERVER_URL": cloud.url}, workdir / "fragile-edge.log")
    yield {"cloud": cloud, "edge": edge}
    edge.stop()
    cloud.stop()


@pytest.fixture(scope="module")
def clip(workdir) -> Path:
    return long_clip(workdir)


@pytest.fixture(scope="module")
def reference(clip, workdir, model_env) -> list[np.ndarray]:
    return local_frames(clip, workdir, model_env)


def job_args(clip: Path, out: Path, servers: dict[str, Restartable], *extra: str) -> tuple[str, ...]:
    return ("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--save_frames", "--codec", "ffv1",
            "--no_progress", "--cloud_url", servers["cloud"].url, "--edge_url", servers["edge"].url, *extra)


def assert_frames(out: Path, reference: list[np.ndarray]) -> None:
    frames = generated(out)
    assert len(frames) == len(reference) == LONG_FRAMES - 1
    for k, (a, b) in enumerate(zip(frames, reference, strict=True)):
        assert np.array_equal(a, b), f"generated frame {k} differs from --local"


@pytest.mark.parametrize("victim", ["edge", "cloud"])
def test_a_server_killed_and_restarted_mid_job_costs_no_frame(fragile, clip, reference, workdir, victim):
    outs = {transport: workdir / f"fault-{victim}-{transport}" for transport in ("http", "ws")}
    jobs = {out / "interpolated.mp4": start_cli(*job_args(clip, out, fragile, "--transport", transport))
            for transport, out in outs.items()}
    at_kill = wait_for_saved(jobs, 5, hold=True)  # the faster job waits (stopped) for the slower one
    fragile[victim].kill()
    resume(jobs)
    time.sleep(OUTAGE_S)  # the outage itself: the server stays down this long
    fragile[victim].restart()
    for proc in jobs.values():
        code, stdout, err = finish(proc)
        assert code == 0, err
        assert f"{LONG_FRAMES} frames in, {2 * LONG_FRAMES - 1} out" in stdout
    for out in outs.values():
        assert_frames(out, reference)
    # The kill landed mid-job, and the restarted server (its counters start at 0) did the rest of both jobs.
    assert all(n < LONG_FRAMES - 1 - WINDOW for n in at_kill.values()), at_kill
    served = sum(requests_total(fragile[victim].server).values())
    left = sum(LONG_FRAMES - 1 - n for n in at_kill.values())
    assert served >= left - 2 * (WINDOW + 1), (served, at_kill)  # less what was in flight or encoded ahead


def test_a_server_that_stays_down_fails_the_job_which_resumes_once_it_is_back(fragile, clip, reference, workdir):
    out = workdir / "fault-stays-down"
    output = out / "interpolated.mp4"
    args = job_args(clip, out, fragile, "--retry_for", "1")
    proc = start_cli(*args)
    wait_for_saved({output: proc}, 5, hold=True)
    fragile["edge"].kill()
    resume({output: proc})
    code, _, err = finish(proc, timeout=120)
    done = saved_frames(output)
    assert code == 2 and not output.exists() and 5 <= done < LONG_FRAMES - 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("edensplit interpolate: error: cannot reach the edge server") and "attempts over" in last
    assert last.endswith(f"({done} generated frames are saved: run the same command again to resume)"), last
    fragile["edge"].restart()
    rerun = run_cli(*args, env={})
    assert f"resumed after {done} generated frames" in rerun.stdout and output.is_file()
    assert_frames(out, reference)
