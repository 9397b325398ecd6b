"""benchmarks/gpu.sh, the one GPU run of issues #9 and #16, runs here on a CPU at a tiny size (--cpu-smoke): the same
script, the same `edensplit bench --mode perf` (stages and system), end to end with shared memory and HTTP binary,
and `--mode overhead`, their JSON and Markdown written where it is told."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edensplit.bench.perf import SYSTEM_COLUMNS
from edensplit.bench.stages import STAGE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def run_script(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    # PYTHON: the script's interpreter is this one (the venv the suite runs in, activated or not)
    return subprocess.run(["bash", str(SCRIPT), *args], env={**os.environ, "PYTHON": sys.executable, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_gpu_script_cpu_smoke_writes_json_and_markdown(model_env, tmp_path):
    out = tmp_path / "out"
    result = run_script("--cpu-smoke", str(out), env={**model_env, "TORCH_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{part}-cpu-smoke{suffix}" for part in ("perf", "e2e", "overhead")
         for suffix in (".json", ".log", ".md", "-servers.log")]
        + ["transfers-cpu-smoke.json", "transfers-cpu-smoke.log"])
    copies = json.loads((out / "transfers-cpu-smoke.json").read_text())
    assert copies["ok"] and copies["device"] == "cpu" and all(row["bits_equal"] for row in copies["rows"])
    document = json.loads((out / "perf-cpu-smoke.json").read_text())
    assert document["kind"] == "edensplit.bench.perf"
    assert "--budget_s" in document["command"] and "--device cpu" in document["command"]
    stages, system = document["stages"], document["system"]
    # As on the GPU: the stages in the order given (half precision first), the system part from float32.
    assert [(s["size"], s["precision"]) for s in stages] == [([48, 64], "bfloat16"), ([48, 64], "float32")]
    assert all(s["failed"] is None and s["edge_ms_per_pair"] > 0 for s in stages)
    assert [(s["precision"], s["design"], s["wire_dtype"]) for s in system] == [
        ("float32", "user's design", "float32"), ("float32", "frame-once", "float16"),
        ("float32", "frame-once", "int8"), ("bfloat16", "frame-once", "float16"), ("bfloat16", "frame-once", "int8")]
    assert all(s["failed"] is None and s["pairs_per_s"] > 0 for s in system)
    text = (out / "perf-cpu-smoke.md").read_text()
    assert "| size | precision | encoder ms/frame |" in text and "| 48x64 | bfloat16 | frame-once (a-once) |" in text
    widths = {line.count("|") - 1 for line in text.splitlines() if line.startswith("|")}
    assert widths == {len(STAGE_COLUMNS), len(SYSTEM_COLUMNS)}
    assert "gpu.sh: perf-cpu-smoke exit 0" in (out / "perf-cpu-smoke.log").read_text()
    assert "system-float32-edge.log" in (out / "perf-cpu-smoke-servers.log").read_text()
    # End to end through both servers: shared memory (only handles over the sockets) and HTTP binary beside it.
    e2e = json.loads((out / "e2e-cpu-smoke.json").read_text())
    assert [(s["size"], s["transport"], s["payload"], s["wire_dtype"]) for s in e2e["system"]] == [
        ([48, 64], "http", "shm", "float16"), ([48, 64], "http", "binary", "float16")]
    assert all(s["failed"] is None and s["pairs_per_s"] > 0 for s in e2e["system"]) and not e2e["stages"]
    assert e2e["edge_device"] == "cpu" and "--parts system" in e2e["command"]
    shared, binary = e2e["system"]
    assert shared["encodings"] * 4 < binary["encodings"]  # handles, not encodings, crossed the sockets
    # The overhead mode (on the GPU its four paths; here two, to keep the suite short): each row beside its floor.
    overhead = json.loads((out / "overhead-cpu-smoke.json").read_text())
    assert [r["path"] for r in overhead["rows"]] == ["http-binary", "http-shm"]
    assert all(r["failed"] is None and r["floor_ms"] > 0 and r["overhead_ms"] is not None for r in overhead["rows"])
    assert "gpu.sh: overhead-cpu-smoke exit 0" in (out / "overhead-cpu-smoke.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_script_without_a_gpu_says_so(tmp_path):
    result = run_script(str(tmp_path), env={}, timeout=60)
    assert result.returncode != 0
    assert "no CUDA device (use --cpu-smoke)" in result.stderr
    assert not list(tmp_path.iterdir())
