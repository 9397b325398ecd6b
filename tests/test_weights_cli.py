"""Weights by name from the command line, offline on a hub cache the tests build: `edensplit download` says the file
is there (or, not cached, how to fetch it, in one line, status 2), `--local` runs MODEL_PATH=hf://..., the tiny EDEN
is the try-out default of `--local` and says so, and a server without MODEL_PATH refuses, naming MODEL_PATH=tiny."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch

from edensplit.model.checkpoint import file_digest, load_model
from edensplit.model.sources import TINY, TINY_NAME
from edensplit.video.images import write_png
from tests.conftest import ROOT, TINY_CONFIG, make_frames, run_cli, run_cli_here
from tests.hub import COMMIT, cache_file

URI = "hf://someone/eden-test/eden.pt"


@pytest.fixture
def cached(hub_cache):
    """The tests' checkpoint in the hub cache as URI's file; its snapshot path."""
    buffer = io.BytesIO()
    torch.save({"eden": load_model(None, TINY_CONFIG, allow_random=True, seed=5).state_dict()}, buffer)
    return cache_file(hub_cache, "someone/eden-test", "eden.pt", buffer.getvalue())


@pytest.fixture
def pair(tmp_path) -> list[str]:
    frames = make_frames(2, 40, 56)
    return ["--frame_0_path", str(write_png(tmp_path / "0.png", frames[0])),
            "--frame_1_path", str(write_png(tmp_path / "1.png", frames[1]))]


def edensplit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m edensplit ARGS`, a process of its own: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE as a
    user's process would, at its start."""
    return subprocess.run([sys.executable, "-m", "edensplit", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_download_says_a_cached_file_is_there_with_its_revision_and_digest(cached, hub_cache):
    r = edensplit("download", URI, env={})
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"{URI} is in the Hugging Face cache: {cached}")
    assert f"revision {COMMIT}" in first and f"digest {file_digest(cached)}" in first


def test_download_not_cached_and_offline_is_one_line_with_the_command_to_fetch_it(hub_cache):
    r = run_cli_here(["download"], {})  # the released checkpoint by default
    one_line_error(r, "edensplit download: error:", "hf://zhZ524/EDEN/eden.pt is not in the Hugging Face cache",
                   "HF_HUB_OFFLINE=1", "`edensplit download hf://zhZ524/EDEN/eden.pt`")
    for arg, phrase in (("hf://onlyname", "does not name a file"), ("eden.pt", "give hf://owner/name/file")):
        one_line_error(run_cli_here(["download", arg], {}), phrase)


def test_local_runs_model_path_by_name_offline_and_fails_in_one_line_without_the_cache(cached, hub_cache, pair,
                                                                                      tmp_path):
    env = {"MODEL_PATH": URI, "EDEN_CONFIG": str(tmp_path / "tiny.yaml"), "DEVICE": "cpu"}
    (tmp_path / "tiny.yaml").write_text("model_args: {hidden_dim: 32, num_heads: 2, dit_depth: 1, "
                                        "decoder_depth: 1, qkv_bias: true}\n")
    r = edensplit("interpolate", *pair, "--local", "--output_dir", str(tmp_path / "out"), env=env)
    assert r.returncode == 0, r.stderr
    assert f"locally ({URI} (revision {COMMIT}) on cpu)" in r.stdout and str(hub_cache) not in r.stdout
    assert (tmp_path / "out" / "interpolated.png").is_file()
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    r = edensplit("interpolate", *pair, "--local", "--output_dir", str(tmp_path / "out2"),
                  env={**env, "HF_HUB_CACHE": str(empty)})
    one_line_error(r, f"{URI} is not in the Hugging Face cache", f"`edensplit download {URI}`")


def test_local_without_model_path_runs_the_tiny_eden_and_says_so(tiny_dir, pair, tmp_path, monkeypatch):
    for name in ("MODEL_PATH", "EDEN_RANDOM_WEIGHTS", "EDEN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    r = run_cli(*pair, "--local", "--output_dir", str(tmp_path / "out"), env={"DEVICE": "cpu"})
    notices = [line for line in r.stderr.splitlines() if "no MODEL_PATH" in line]
    assert len(notices) == 1 and TINY_NAME in notices[0] and "hf://zhZ524/EDEN/eden.pt" in notices[0]
    assert f"locally ({TINY_NAME} on cpu)" in r.stdout
    random = run_cli(*pair, "--local", "--output_dir", str(tmp_path / "random"),
                     env={"DEVICE": "cpu", "EDEN_RANDOM_WEIGHTS": "1", "EDEN_CONFIG": str(tiny_dir / "eden_tiny.yaml")})
    assert "no MODEL_PATH" not in random.stderr and "locally (random (seed 0) on cpu)" in random.stdout


def test_tiny_absent_or_with_a_conflicting_config_is_one_line(no_tiny, pair, tmp_path, monkeypatch):
    for name in ("MODEL_PATH", "EDEN_RANDOM_WEIGHTS", "EDEN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    args = ["interpolate", *pair, "--local", "--output_dir", str(tmp_path / "out")]
    one_line_error(run_cli_here(args, {}), "the tiny EDEN is not installed in this copy")
    one_line_error(run_cli_here(args, {"MODEL_PATH": TINY}), "the tiny EDEN is not installed in this copy")


def test_tiny_with_a_conflicting_eden_config_is_one_line(tiny_dir, pair, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("model_args: {hidden_dim: 48, num_heads: 2}\n")
    r = run_cli_here(["interpolate", *pair, "--local", "--output_dir", str(tmp_path / "out")],
                     {"MODEL_PATH": TINY, "EDEN_CONFIG": str(other)})
    one_line_error(r, "MODEL_PATH=tiny carries its own config", "unset EDEN_CONFIG")


def test_a_server_without_model_path_refuses_naming_tiny_for_a_try_out(tiny_dir, monkeypatch):
    """Even where the tiny EDEN is installed: a production server never serves it because a variable was forgotten."""
    for name in ("MODEL_PATH", "EDEN_RANDOM_WEIGHTS", "EDEN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for stage in ("cloud", "edge"):
        r = run_cli_here([stage, "--port", "0"], {})
        one_line_error(r, f"edensplit {stage}: error: no checkpoint given: set MODEL_PATH", "MODEL_PATH=tiny to try")
