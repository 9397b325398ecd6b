"""Resumable jobs through the real CLI and real servers: a job interrupted with SIGINT (Ctrl-C) once some frames are
saved exits with status 130 and one line saying how to resume, leaves nothing at the output path, and the same
command run again sends the edge only the frames not yet done, then writes the same video as an uninterrupted run
(lossless codecs: every decoded frame compared). Another --seed starts over, and says so."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from edensplit.client.resume import saved_frames, state_dir
from edensplit.video.reading import read_frames
from tests.conftest import run_cli
from tests.system import (
    LONG_FRAMES,
    expected_video,
    finish,
    local_frames,
    long_clip,
    requests_total,
    resume,
    start_cli,
    wait_for_saved,
)

WINDOW = 2  # pairs in flight in a job (interpolate_video's default)


@pytest.fixture(scope="module")
def clip(workdir) -> Path:
    return long_clip(workdir)


def interrupt(args: tuple[str, ...], output: Path, at_least: int = 5) -> tuple[int, str]:
    """Run the job, SIGINT it once `at_least` frames are saved; its exit status and stderr."""
    proc = start_cli(*args)
    wait_for_saved({output: proc}, at_least, hold=True)  # stopped there, so that the Ctrl-C lands mid-job
    proc.send_signal(signal.SIGINT)
    resume({output: proc})
    code, _, err = finish(proc, timeout=60)
    return code, err


def edge_requests(edge) -> int:
    return sum(n for (_, method, _), n in requests_total(edge).items() if method == "POST")  # not the drops


@pytest.mark.parametrize("codec", ["ffv1", "libx264rgb"])
def test_an_interrupted_job_resumes_where_it_stopped(servers, clip, workdir, model_env, codec):
    cloud, edge = servers
    out = workdir / f"resume-{codec}"
    output = out / "interpolated.mp4"
    args = ("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--codec", codec, "--no_progress",
            "--cloud_url", cloud.url, "--edge_url", edge.url)
    before = edge_requests(edge)
    code, err = interrupt(args, output)
    first_run = edge_requests(edge) - before
    done = saved_frames(output)
    assert code == 130, err
    assert err.splitlines() == [f"edensplit interpolate: interrupted with {done} generated frames saved in "
                                f"{state_dir(output)}; run the same command again to resume"]
    assert not output.exists() and 5 <= done < LONG_FRAMES - 1, done  # stopped mid-job, nothing at the output

    before = edge_requests(edge)
    rerun = run_cli(*args, env={})
    resent = edge_requests(edge) - before
    assert f"resumed after {done} generated frames" in rerun.stdout
    assert f"resuming {output}: {done} generated frames already done" in rerun.stderr
    # The frames not done, and one store-only request for the frame the new session starts from.
    assert resent == (LONG_FRAMES - 1 - done) + 1, (resent, done)
    # The first run sent the edge the frames it saved, plus at most the pairs in flight when it stopped.
    assert done + 1 <= first_run <= done + 1 + WINDOW, (first_run, done)
    assert not state_dir(output).exists()

    expected = expected_video(clip, local_frames(clip, workdir, model_env))
    written = list(read_frames(output))
    assert len(written) == len(expected) == 2 * LONG_FRAMES - 1
    for k, (a, b) in enumerate(zip(written, expected, strict=True)):
        assert np.array_equal(a, b), f"output frame {k} differs from an uninterrupted run"


def test_another_seed_starts_over_and_says_so(servers, clip, workdir):
    cloud, edge = servers
    out = workdir / "resume-seed"
    output = out / "interpolated.mp4"
    common = ("--video_path", str(clip), "--output_dir", str(out), "--codec", "ffv1", "--no_progress",
              "--cloud_url", cloud.url, "--edge_url", edge.url)
    code, _ = interrupt((*common, "--seed", "3"), output)
    assert code == 130 and saved_frames(output) >= 5
    before = edge_requests(edge)
    rerun = run_cli(*common, "--seed", "4", env={})
    assert f"{state_dir(output)} holds the state of another job (seed 3 -> 4); starting over" in rerun.stderr
    assert "resumed" not in rerun.stdout and output.is_file()
    assert edge_requests(edge) - before == LONG_FRAMES  # every frame: frame 0 stored, then 99 pairs
