"""Helpers for the system tests of the client's reliability (tests/test_faults.py, test_resume.py, test_load.py):
a longer clip and its `--local` reference (made once per session, kept on disk), CLI jobs run as subprocesses,
the servers' request counters, and waiting on a job's saved frames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from edensplit.client.resume import saved_frames
from edensplit.servers.launch import ServerProcess
from edensplit.video.reading import read_frames
from edensplit.video.sample import make_sample_clip
from tests.conftest import ROOT, generated, run_cli

LONG_FRAMES = 40  # long enough that a kill or a Ctrl-C after a few saved frames lands mid-job (~25 ms a pair)
HIDDEN = ("/metrics", "/health")  # the tests' own requests


def long_clip(workdir: Path) -> Path:
    """A 100-frame lossless clip (made once per session)."""
    path = workdir / "long.mkv"
    if not path.is_file():
        make_sample_clip(path, n_frames=LONG_FRAMES, width=96, height=72, rate=Fraction(30000, 1001))
    return path


def local_frames(clip: Path, workdir: Path, model_env: dict[str, str], seed: int = 3) -> list[np.ndarray]:
    """The generated frames of `clip` by `edensplit interpolate --local` (computed once per session)."""
    out = workdir / f"local-{clip.stem}-{seed}"
    if not (out / "interpolated.mp4").is_file():
        run_cli("--video_path", str(clip), "--output_dir", str(out), "--local", "--seed", str(seed), "--save_frames",
                "--codec", "ffv1", "--no_progress", env=model_env)
    return generated(out)


def expected_video(clip: Path, middles: list[np.ndarray]) -> list[np.ndarray]:
    """The output a job must write: input frame k, then generated frame k, ..., the last input frame."""
    out: list[np.ndarray] = []
    for k, frame in enumerate(read_frames(clip)):
        out.append(frame)
        if k < len(middles):
            out.append(middles[k])
    return out


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`edensplit interpolate ARGS` as a subprocess (stdout/stderr captured), with Ctrl-C's default meaning (a suite
    started in the background of a shell without job control inherits SIGINT ignored, and so would the job)."""
    return subprocess.Popen([sys.executable, "-m", "edensplit", "interpolate", *args], cwd=ROOT, text=True,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_saved(jobs: dict[Path, subprocess.Popen[str]], at_least: int, timeout: float = 120.0,
                   hold: bool = False) -> dict[Path, int]:
    """Wait until every job (output path -> process) has saved `at_least` generated frames, and return how many
    each has. Fails if a job ends first, and checks meanwhile that no output path holds a file. With `hold`, each
    job is stopped (SIGSTOP) as soon as it has them, so that a fast job cannot finish while a slower one catches up:
    the caller resumes them (`resume`)."""
    deadline = time.monotonic() + timeout
    held: set[Path] = set()
    while True:
        counts = {output: saved_frames(output) for output in jobs}
        for output, proc in jobs.items():
            if output.exists():
                resume(jobs)
                raise AssertionError(f"{output} exists while its job is unfinished")
            if proc.poll() is not None:
                resume(jobs)
                out, err = proc.communicate()
                raise AssertionError(f"the job writing {output} ended (code {proc.returncode}) before "
                                     f"{at_least} frames were saved: {err[-2000:]}")
            if hold and output not in held and counts[output] >= at_least:
                proc.send_signal(signal.SIGSTOP)
                held.add(output)
        if all(n >= at_least for n in counts.values()):
            return {output: saved_frames(output) for output in jobs} if hold else counts
        if time.monotonic() >= deadline:
            resume(jobs)
            raise AssertionError(f"no {at_least} saved frames within {timeout} s: {counts}")
        time.sleep(0.01)  # polling files another process writes: no event to wait on


def resume(jobs: dict[Path, subprocess.Popen[str]]) -> None:
    """Let jobs that `wait_for_saved(..., hold=True)` stopped go on (SIGCONT; harmless to a running job)."""
    for proc in jobs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)


def finish(proc: subprocess.Popen[str], timeout: float = 300.0) -> tuple[int, str, str]:
    """Wait for a job; its exit status, stdout and stderr."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def requests_total(server: ServerProcess | str) -> Counter[tuple[str, str, str]]:
    """The server's edensplit_requests_total by (route, method, status), without the tests' own requests."""
    url = server if isinstance(server, str) else server.url
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            route = sample.labels.get("route", "")
            if sample.name == "edensplit_requests_total" and not route.startswith(HIDDEN):
                counts[(route, sample.labels["method"], sample.labels["status"])] += int(sample.value)
    return counts


def since(before: Counter[tuple[str, str, str]], after: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str, str]]:
    """Requests counted between two readings."""
    return Counter({key: n - before.get(key, 0) for key, n in after.items() if n != before.get(key, 0)})
