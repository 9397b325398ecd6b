"""`inference_http.py` and `inference_ws.py`, the plan's HTTP and WebSocket clients: a video over each gives the
`--local` frames; a --transport that disagrees is one line on stderr and exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import N_FRAMES, ROOT, generated, run_cli


@pytest.mark.parametrize("script,extra", [("inference_http.py", ()), ("inference_ws.py", ("--transport", "ws"))],
                         ids=["http", "ws"])
def test_each_script_gives_the_local_frames(servers, clip, local_run, workdir, script, extra):
    cloud, edge = servers
    out = workdir / script.removesuffix(".py")
    result = run_cli("--video_path", str(clip), "--output_dir", str(out), "--seed", "3", "--save_frames",
                     "--no_progress", *extra, env={"CLOUD_SERVER_URL": cloud.url, "EDGE_SERVER_URL": edge.url},
                     entry=(script,))
    assert f"{N_FRAMES} frames in" in result.stdout and ("WS binary" if extra else "HTTP binary") in result.stdout
    frames = generated(out)
    assert len(frames) == N_FRAMES - 1
    assert all(np.array_equal(a, b) for a, b in zip(frames, local_run, strict=True))


@pytest.mark.parametrize("script,flag,phrase", [
    ("inference_ws.py", ["--transport", "http"],
     "this is the WebSocket client; --transport http disagrees (use inference_http.py)"),
    ("inference_http.py", ["--transport=ws"],
     "this is the HTTP client; --transport ws disagrees (use inference_ws.py)"),
], ids=["ws-given-http", "http-given-ws"])
def test_a_transport_that_disagrees_is_refused(clip, script, flag, phrase):
    result = subprocess.run([sys.executable, script, "--video_path", str(clip), *flag], cwd=ROOT, env=dict(os.environ),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{script}: error: {phrase}"
    assert not result.stdout
