"""Throughput with 1 and 2 gunicorn workers per server: the production command of docs/scaling.md on loopback.

    python benchmarks/workers.py [--streams K] [--frames N] [--size HxW] [--workers 1,2] [--repeat R]
                                 [--output PATH]

For each worker count W it starts `gunicorn cloud_server.main:app -w W -k uvicorn.workers.UvicornWorker` and the
same for `edge_server.main:app` (127.0.0.1, random weights of a small EDEN config: MODEL_ARGS below, DEVICE=cpu),
with torch's default thread count and again with TORCH_THREADS=1, then runs K video streams at once (each a
frame-once session over HTTP, as `edensplit interpolate` sends it: its own client, edge requests one at a time
on one connection) of N frames, R times after one warm-up stream, and prints the fastest run's generated
frames per second (the cores are shared with whatever else runs on the machine), the edge
requests each worker answered, the sessions' lookups that missed (a frame resent) and the bytes per generated
frame. The client runs on the same machine and competes for its cores. `--output` writes what is printed to a
file too (benchmarks/workers-results.md is such a run's output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from prometheus_client.mmap_dict import MmapedDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edensplit.client.flows import open_backend  # noqa: E402
from edensplit.servers.launch import GunicornProcess  # noqa: E402
from edensplit.servers.metrics import DIR_PREFIX, process_identity  # noqa: E402

MODEL_ARGS = {"hidden_dim": 384, "num_heads": 6, "dit_depth": 6, "decoder_depth": 4, "qkv_bias": "true"}
EDGE_ROUTE = "/api/v1/sessions/{session_id}/frames/{index}"
THREADS = {"torch default": None, "TORCH_THREADS=1": "1"}


@contextmanager
def deployment(workers: int, env: dict[str, str], logs: Path) -> Iterator[tuple[GunicornProcess, GunicornProcess]]:
    cloud = GunicornProcess("cloud_server.main:app", workers=workers, env=env, cwd=ROOT,
                            log_path=logs / f"cloud-w{workers}.log")
    edge = GunicornProcess("edge_server.main:app", workers=workers, env=env, cwd=ROOT,
                           log_path=logs / f"edge-w{workers}.log")
    with cloud, edge:
        yield cloud, edge


def make_frames(n: int, height: int, width: int) -> np.ndarray:
    """n smooth uint8 RGB frames [n, H, W, 3]: a gradient with a bright square moving right, and some noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        img = np.stack([xx / width * 200, yy / height * 180, np.full_like(xx, 60.0)], axis=-1)
        x0 = (8 + 6 * i) % max(width - 24, 1)
        img[height // 3: height // 3 + 24, x0: x0 + 24] = (250, 240, 30)
        frames.append(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def stream(cloud_url: str, edge_url: str, frames: np.ndarray, seed: int) -> None:
    """One video, pair after pair, as one frame-once session."""
    backend = open_backend(cloud_url=cloud_url, edge_url=edge_url)
    try:
        backend.begin_video()
        for k in range(len(frames) - 1):
            backend.interpolate_pair(frames[k], frames[k + 1], seed=seed + k, index=k)
    finally:
        backend.close()


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10).text


def total(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    found = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                found += float(match.group(2))
    return found


def api_bytes(text: str) -> float:
    return sum(float(v) for route, v in re.findall(r'^edensplit_(?:request|response)_bytes_total\{route="([^"]+)"\} '
                                                  r"(\S+)$", text, re.MULTILINE) if route.startswith("/api/"))


def edge_requests_by_worker(edge: GunicornProcess) -> dict[int, float]:
    folder = Path(tempfile.gettempdir()) / (DIR_PREFIX + str(process_identity(edge.proc.pid)))
    counts: dict[int, float] = {}
    for path in folder.glob("counter_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if name == "edensplit_requests_total" and labels["route"] == EDGE_ROUTE:
                pid = int(path.stem.split("_")[1])
                counts[pid] = counts.get(pid, 0) + value
    return counts


def measure(workers: int, threads: str | None, streams: int, frames: np.ndarray, logs: Path, repeat: int
            ) -> dict[str, Any]:
    """The fastest of `repeat` runs on one deployment of `workers` workers per server."""
    env = {"EDEN_CONFIG": str(logs / "model.yaml"), "EDEN_RANDOM_WEIGHTS": "1", "DEVICE": "cpu"}
    if threads:
        env["TORCH_THREADS"] = threads
    with deployment(workers, env, logs) as (cloud, edge):
        stream(cloud.url, edge.url, frames[:4], seed=0)  # warm-up: first calls, connections
        runs = [run_streams(cloud, edge, streams, frames) for _ in range(repeat)]
    return {"workers": workers, **max(runs, key=lambda r: r["fps"])}


def run_streams(cloud: GunicornProcess, edge: GunicornProcess, streams: int, frames: np.ndarray) -> dict[str, Any]:
    """`streams` videos at once; frames per second, edge requests by worker, session misses, bytes per frame."""
    before = [scrape(s.url) for s in (cloud, edge)]
    by_worker = edge_requests_by_worker(edge)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            stream(cloud.url, edge.url, frames, seed=1000 * i)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    load = os.getloadavg()[0]  # what else runs on the machine shows here
    started = time.perf_counter()
    runners = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    after = [scrape(s.url) for s in (cloud, edge)]
    generated = streams * (len(frames) - 1)
    grown = {pid: n - by_worker.get(pid, 0) for pid, n in edge_requests_by_worker(edge).items()}
    misses = total(after[1], "edensplit_session_lookups_total", result="miss") - \
        total(before[1], "edensplit_session_lookups_total", result="miss")
    sent = sum(api_bytes(a) - api_bytes(b) for a, b in zip(after, before, strict=True))
    return {"seconds": seconds, "fps": generated / seconds, "generated": generated, "load": load,
            "edge_by_worker": sorted((int(n) for n in grown.values() if n), reverse=True), "misses": int(misses),
            "bytes_per_frame": sent / generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=4, help="video streams at once (default 4)")
    parser.add_argument("--frames", type=int, default=9, help="frames per stream (default 9)")
    parser.add_argument("--size", default="240x428", help="HxW of the frames (default 240x428)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per deployment, the fastest reported "
                        "(default 3: the machine's cores may be shared)")
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args()
    height, width = (int(x) for x in args.size.split("x"))
    frames = make_frames(args.frames, height, width)
    counts = [int(w) for w in args.workers.split(",")]

    lines = [f"# gunicorn workers: throughput ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"`python benchmarks/workers.py --streams {args.streams} --frames {args.frames} --size {args.size} "
             f"--workers {args.workers} --repeat {args.repeat}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
             f"torch {torch.__version__} (CPU). Model: random weights, "
             + ", ".join(f"{k} {v}" for k, v in MODEL_ARGS.items())
             + f". {args.streams} video streams at once, {args.frames} frames of {height}x{width} each "
             f"({args.streams * (args.frames - 1)} generated frames), flow A over HTTP, frame-once sessions. "
             "Cloud, edge and client share the machine's cores.", "",
             "| torch threads | workers per server | seconds | generated frames/s | relative | edge requests by "
             "worker | session misses | bytes per generated frame | load average before |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="edensplit-workers-") as tmp:
        logs = Path(tmp)
        (logs / "model.yaml").write_text("model_args:\n" + "".join(f"  {k}: {v}\n" for k, v in MODEL_ARGS.items()))
        for label, threads in THREADS.items():
            base = None
            for w in counts:
                r = measure(w, threads, args.streams, frames, logs, args.repeat)
                base = base or r["fps"]
                line = (f"| {label} | {w} | {r['seconds']:.2f} | {r['fps']:.2f} | {r['fps'] / base:.2f}x | "
                        f"{' + '.join(map(str, r['edge_by_worker']))} | {r['misses']} | "
                        f"{r['bytes_per_frame'] / 1e6:.3f} MB | {r['load']:.2f} |")
                lines.append(line)
                print(line, flush=True)
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
