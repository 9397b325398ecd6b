"""Shared fixtures: where the golden vectors live, and a tiny random-weight EDEN for fast tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig, ModelArgs
from edensplit.servers.cloud.service import create_cloud_app
from edensplit.servers.edge.service import create_edge_app
from edensplit.servers.launch import ServerProcess
from edensplit.settings import ServerSettings
from edensplit.video.images import read_png
from edensplit.video.sample import make_sample_clip

# In-process apps are asked by name: http://testserver (Starlette's TestClient), http://cloud and http://edge (httpx's
# ASGITransport); a server without a key answers names only when ALLOWED_HOSTS lists them (DNS rebinding needs a
# name; tests/servers/test_access.py tests the rule itself).
os.environ.setdefault("ALLOWED_HOSTS", "testserver,cloud,edge")
# No test touches the network: huggingface_hub (MODEL_PATH=hf://...) reads only its cache, in this process and in
# every server and CLI process a test starts (set before anything imports huggingface_hub, which reads it once).
os.environ["HF_HUB_OFFLINE"] = "1"

# In-repo golden vectors by default, so a clone tests on its own; EDEN_FIXTURES may point at another copy.
FIXTURES = Path(os.environ.get("EDEN_FIXTURES", Path(__file__).resolve().parent / "fixtures" / "eden-reference"))
TINY_ARGS = ModelArgs(hidden_dim=32, num_heads=2, dit_depth=1, decoder_depth=1, qkv_bias=True)
TINY_CONFIG = EdenConfig(model_args=TINY_ARGS)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"golden fixtures not found at {FIXTURES} (set EDEN_FIXTURES)"
    return FIXTURES


def fixture_checkpoint(folder: Path, name: str) -> Path:
    """The checkpoint of golden case `name`: NAME.safetensors (in-repo copy) or NAME.pt (the original folder)."""
    for suffix in (".safetensors", ".pt"):
        if (path := folder / f"{name}{suffix}").is_file():
            return path
    raise FileNotFoundError(f"no {name}.safetensors or {name}.pt in {folder}")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache of this test's own, offline (HF_HUB_CACHE, HF_HUB_OFFLINE=1), for this process (whose
    huggingface_hub may have read the variables already) and the processes it starts; tests.hub fills it."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    for name, value in (("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", True)):
        monkeypatch.setenv(name, "1" if value is True else str(value))
        monkeypatch.setattr(constants, name, value if value is True else str(value))
    return cache


@pytest.fixture
def tiny_dir(tmp_path, monkeypatch) -> Path:
    """A stand-in for the tiny EDEN installed with the package (MODEL_PATH=tiny), where EDENSPLIT_TINY_DIR points: a
    random TINY_CONFIG model's safetensors and its config, as the package's model/tiny folder holds them."""
    from safetensors.torch import save_file

    from edensplit.model.sources import TINY_CONFIG_FILE, TINY_DIR_ENV, TINY_WEIGHTS_FILE

    folder = tmp_path / "tiny"
    folder.mkdir()
    save_file(load_model(None, TINY_CONFIG, allow_random=True, seed=11).state_dict(), folder / TINY_WEIGHTS_FILE)
    (folder / TINY_CONFIG_FILE).write_text(TINY_YAML)
    monkeypatch.setenv(TINY_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def no_tiny(tmp_path, monkeypatch) -> Path:
    """A copy of edensplit without the tiny EDEN, whether or not this one has it."""
    from edensplit.model.sources import TINY_DIR_ENV

    folder = tmp_path / "no-tiny"
    folder.mkdir()
    monkeypatch.setenv(TINY_DIR_ENV, str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_model():
    return load_model(None, TINY_CONFIG, allow_random=True, seed=3)


def wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "", poll_s: float = 0.05) -> None:
    """Poll `condition` until it holds, failing after `timeout` seconds: for state another thread or process
    changes with no event to wait on (a background thread's segments, a page, another process's files)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what or condition}"
        time.sleep(poll_s)


def make_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """n smooth, moving uint8 RGB frames [n, H, W, 3]: a gradient with a bright square sliding right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        img = np.stack([xx / width * 200, yy / height * 180, np.full_like(xx, 60.0)], axis=-1)
        x0 = (4 + 3 * i) % max(width - 12, 1)
        img[height // 3: height // 3 + 12, x0: x0 + 12] = (250, 240, 30)
        img += rng.normal(0, 4, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


# -- in-process apps around the tiny random model: fast tests of the HTTP/WS contract (TestClient) --

@pytest.fixture(scope="session")
def server_settings() -> ServerSettings:
    return ServerSettings(max_request_mb=4, max_inflight=4, eden_random_weights=True)


@pytest.fixture(scope="session")
def cloud(server_settings):
    model = load_model(None, TINY_CONFIG, stages={"encode"}, allow_random=True, seed=3)
    with TestClient(create_cloud_app(server_settings, model)) as client:
        yield client


@pytest.fixture(scope="session")
def edge(server_settings):
    model = load_model(None, TINY_CONFIG, stages={"interpolate"}, allow_random=True, seed=3)
    with TestClient(create_edge_app(server_settings, model)) as client:
        yield client


def loaded(client: TestClient, timeout: float = 120.0) -> TestClient:
    """`client` once its app's model is loaded and warmed up, or failed to load: a server started without a model
    in hand loads it after it starts listening (/health says "loading" meanwhile)."""
    import time

    deadline = time.monotonic() + timeout
    while client.get("/health").json()["status"] == "loading":
        assert time.monotonic() < deadline, f"the model did not load within {timeout} s"
        time.sleep(0.02)  # the app's event loop loads it on its own thread: no event to wait on from here
    return client


# -- end-to-end: real servers, the real CLI, a real video -----------------------------------------

ROOT = Path(__file__).resolve().parents[1]
N_FRAMES = 12
TINY_YAML = """\
model_args:
  hidden_dim: 32
  num_heads: 2
  dit_depth: 1
  decoder_depth: 1
  qkv_bias: true
"""


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def model_env(workdir) -> dict[str, str]:
    config = workdir / "tiny.yaml"
    config.write_text(TINY_YAML)
    return {"EDEN_CONFIG": str(config), "EDEN_RANDOM_WEIGHTS": "1", "DEVICE": "cpu"}


@pytest.fixture(scope="session")
def servers(model_env, workdir):
    """A cloud and an edge (which knows the cloud, for flow B), real uvicorn processes on loopback."""
    with ServerProcess("edensplit.cloud:app", env=model_env, log_path=workdir / "cloud.log") as cloud, \
            ServerProcess("edensplit.edge:app", env={**model_env, "CLOUD_SERVER_URL": cloud.url},
                          log_path=workdir / "edge.log") as edge:
        yield cloud, edge


@pytest.fixture(scope="session")
def clip(workdir) -> Path:
    # Lossless input at an NTSC rate: the output must come back at exactly 60000/1001.
    return make_sample_clip(workdir / "clip.mkv", n_frames=N_FRAMES, width=96, height=72, rate=Fraction(30000, 1001))


CLI = ("-m", "edensplit", "interpolate")


def run_cli(*args: str, env: dict[str, str], entry: tuple[str, ...] = CLI, cwd: Path = ROOT,
            subprocess_: bool = False) -> subprocess.CompletedProcess:
    """`edensplit interpolate ARGS` with `env` added to the environment; it must succeed. In this process (the CLI's
    own `main`, its stdout and stderr captured) unless it is another entry point, another folder, or
    `subprocess_` asks for a process of its own (where exit codes, signals or a fresh interpreter are the point):
    a subprocess costs seconds of start-up."""
    if entry == CLI and cwd == ROOT and not subprocess_:
        result = run_cli_here(["interpolate", *args], env)
    else:
        result = subprocess.run([sys.executable, *entry, *args], env={**os.environ, **env}, cwd=cwd,
                                capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def run_cli_here(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`edensplit ARGV` in this process: the environment, the root logger and torch's thread count are put back
    after it, whatever it changed."""
    import contextlib
    import io
    import logging

    import torch

    from edensplit.cli import main

    saved_env, root = dict(os.environ), logging.getLogger()
    saved_level, threads = root.level, torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # what the CLI logs goes where a subprocess would have printed it
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["edensplit", *argv], code, out.getvalue(), err.getvalue())


def generated(out: Path) -> list[np.ndarray]:
    return [read_png(p) for p in sorted((out / "generated").glob("*.png"))]


@pytest.fixture(scope="session")
def local_run(clip, model_env, workdir) -> list[np.ndarray]:
    out = workdir / "local"
    run_cli("--video_path", str(clip), "--output_dir", str(out), "--local", "--seed", "3", "--save_frames",
            "--codec", "ffv1", env=model_env)
    return generated(out)


