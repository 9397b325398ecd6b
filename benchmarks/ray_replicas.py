"""Ray Serve measurements: session affinity on and off, a replica lost mid-job, batching (@serve.batch vs the
project's batcher vs none), and the startup, on a local Ray cluster (loopback only).

    python benchmarks/ray_replicas.py [--jobs 3] [--frames 12] [--requests 32] [--output benchmarks/ray-replicas.md]

Each configuration is one `edensplit serve-ray` (edensplit.serve_ray.launch.RayServeProcess): one Encoder
replica, two Interpolator replicas, CPU, TORCH_THREADS=1 each, a small random-weight EDEN (hidden 128, 4 heads,
DiT depth 2). What it runs:

- affinity on / off (MAX_BATCH 1): `--jobs` HTTP frame-once video jobs at once (the client unchanged), their
  wall time, the edge's SESSION_NOT_FOUND answers (Ray's replica logs), frames against --local.
- replica loss (affinity on): a longer job; once a third of it is done, the replica holding its session is
  killed (SIGKILL); the job's wall time, its SESSION_NOT_FOUND answers, frames against --local.
- batching: `--requests` flow-B pairs (the composed route: edge -> Encoder handle) with 8 in flight, MAX_BATCH
  1, then 4 with `batching: project` and `batching: serve` on both deployments, `--repeats` times each: pairs/s,
  latency, the encoder's mean batch size (its /metrics). And the batchers alone in one process (no cluster),
  the three modes interleaved `--rounds` times, which the machine's load disturbs less.

Writes Markdown (and --json) with the machine's description; benchmarks/ray-replicas.md is such a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edensplit.serve_ray.launch import RayServeProcess, replica_pids, replica_requests  # noqa: E402
from edensplit.video.images import read_png  # noqa: E402
from edensplit.video.sample import make_sample_clip  # noqa: E402
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames  # noqa: E402

MODEL_YAML = "model_args: {hidden_dim: 128, num_heads: 4, dit_depth: 2, decoder_depth: 1}\n"
SESSION_NOT_FOUND = re.compile(r" -- POST \S+/sessions/\S+ 409 ")


def ray_yaml(affinity: bool, max_batch: int, batching: str) -> str:
    return f"""\
ray: {{num_cpus: 2}}
settings: {{TORCH_THREADS: 1, MAX_BATCH: {max_batch}, BATCH_WAIT_MS: 10}}
session_affinity: {str(affinity).lower()}
cloud:
  batching: {batching}
  deployment: {{num_replicas: 1, max_ongoing_requests: 32, ray_actor_options: {{num_cpus: 0}}}}
edge:
  batching: {batching}
  deployment: {{num_replicas: 2, max_ongoing_requests: 16, max_queued_requests: 64, ray_actor_options: {{num_cpus: 0}}}}
"""


def run_job(clip: Path, out: Path, env: dict[str, str], *extra: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "edensplit", "interpolate", "--video_path", str(clip),
                             "--output_dir", str(out), "--seed", "3", "--save_frames", "--codec", "ffv1",
                             "--no_progress", "--no_resume", *extra], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"job {out.name} failed: {result.stderr.strip()[-400:]}")
    return time.perf_counter() - started


def frames(out: Path) -> list[np.ndarray]:
    return [read_png(p) for p in sorted((out / "generated").glob("*.png"))]


def done_frames(out: Path) -> int:
    """Generated frames a running job has kept so far (its resumable state, or --save_frames' folder)."""
    return max(len(list((out / ".interpolated.mp4.job" / "frames").glob("*.png"))),
               len(list((out / "generated").glob("*.png"))))


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def not_found(session_dir: str) -> int:
    return sum(len(SESSION_NOT_FOUND.findall(p.read_text(errors="replace")))
               for p in Path(session_dir, "logs", "serve").glob("replica_edge_*.log"))


def jobs_at_once(served: RayServeProcess, clip: Path, work: Path, env: dict[str, str], n: int, tag: str,
                 reference: list[np.ndarray], *extra: str) -> dict:
    env = {**env, "CLOUD_SERVER_URL": served.cloud_url, "EDGE_SERVER_URL": served.edge_url}
    walls: list[float] = [0.0] * n
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            walls[i] = run_job(clip, work / f"{tag}-{i}", env, *extra)
        except RuntimeError as exc:
            errors.append(str(exc))

    before = not_found(served.session_dir)
    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    identical = sum(same(frames(work / f"{tag}-{i}"), reference) for i in range(n) if walls[i])
    per_replica = {r: sum(c.values()) for r, c in replica_requests(served.session_dir, "edge", "Interpolator").items()}
    return {"jobs": n, "failed": len(errors), "errors": errors[:2], "wall_s": round(wall, 2),
            "job_s": [round(w, 2) for w in walls], "session_not_found": not_found(served.session_dir) - before,
            "identical_to_local": identical, "edge_requests_per_replica": per_replica}


def replica_loss(served: RayServeProcess, clip: Path, work: Path, env: dict[str, str], reference: list[np.ndarray],
                 unkilled_s: float) -> dict:
    env = {**env, "CLOUD_SERVER_URL": served.cloud_url, "EDGE_SERVER_URL": served.edge_url}
    out = work / "loss"
    result: dict = {}
    before = not_found(served.session_dir)
    route = "POST /edge/api/v1/sessions/{session_id}/frames/{index}"
    earlier = {r: c.get(route, 0) for r, c in replica_requests(served.session_dir, "edge", "Interpolator").items()}
    job = threading.Thread(target=lambda: result.update(wall=run_job(clip, out, env, "--num_steps", "8")))
    job.start()
    total = len(reference)
    while done_frames(out) < total // 3 and job.is_alive():
        time.sleep(0.1)
    now = replica_requests(served.session_dir, "edge", "Interpolator")
    busiest = max(now, key=lambda r: now[r].get(route, 0) - earlier.get(r, 0))  # the one serving this session
    pid = replica_pids("edge", "Interpolator").get(busiest)
    killed_at = done_frames(out)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    job.join()
    return {"frames": total, "killed_replica": busiest, "killed_after_frames": killed_at, "wall_s":
            round(result.get("wall", float("nan")), 2), "unkilled_wall_s": round(unkilled_s, 2),
            "session_not_found": not_found(served.session_dir) - before,
            "identical_to_local": same(frames(out), reference)}


async def flow_b_pairs(url: str, requests: int, in_flight: int = 8, size: tuple[int, int] = (144, 256)) -> dict:
    rng = np.random.default_rng(0)
    body = pack_frames({n: rng.integers(0, 255, (*size, 3), dtype=np.uint8) for n in ("frame0", "frame1")})
    headers = {"Content-Type": FRAMES_MEDIA_TYPE, "Accept": FRAMES_MEDIA_TYPE}
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []
    statuses: list[int] = []

    async def one(http: httpx.AsyncClient, i: int) -> None:
        async with gate:
            started = time.perf_counter()
            response = await http.post(f"{url}/api/v1/interpolate_frames?seed={i}&num_steps=2", content=body,
                                       headers=headers)
            statuses.append(response.status_code)
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=300) as http:
        await one(http, 0)  # warm
        latencies.clear()
        statuses.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one(http, i) for i in range(requests)))
        wall = time.perf_counter() - started
    return {"requests": requests, "ok": statuses.count(200), "pairs_per_s": round(requests / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies)), "p95_ms":
            round(1000 * sorted(latencies)[int(0.95 * (len(latencies) - 1))])}


def batching_runs(served: RayServeProcess, requests: int, repeats: int) -> dict:
    """`repeats` runs of `flow_b_pairs`; the median run's figures (by pairs/s) and every run's pairs/s."""
    runs = sorted((asyncio.run(flow_b_pairs(served.edge_url, requests)) for _ in range(repeats)),
                  key=lambda x: x["pairs_per_s"])
    return {**runs[len(runs) // 2], "runs_pairs_per_s": [x["pairs_per_s"] for x in runs],
            "encoder_mean_batch": encoder_mean_batch(served.cloud_url)}


def batchers_in_process(model_yaml: Path, requests: int, rounds: int, size: tuple[int, int] = (144, 256)) -> dict:
    """The batchers alone, without Ray's processes and proxy in the measurement: one process, the edge's and the
    encoder's models, `requests` concurrent jobs through ModelRuntime.predict (what a replica's routes and the
    composed route call) with MAX_BATCH 1, the project's Batcher (MAX_BATCH 4) and ServeBatcher (@serve.batch,
    max 4), interleaved `rounds` times; the median pairs/s of each."""
    import torch
    from ray.serve import batching

    from edensplit.model.checkpoint import load_model
    from edensplit.model.config import load_config
    from edensplit.model.eden import ENCODE, INTERPOLATE
    from edensplit.serve_ray.deployments import use_batching
    from edensplit.servers.cloud.operations import EncodeJob
    from edensplit.servers.cloud.service import cloud_service
    from edensplit.servers.contract import Cancellation
    from edensplit.servers.edge.service import edge_service
    from edensplit.servers.edge.validation import pair_job
    from edensplit.servers.runtime import ModelRuntime
    from edensplit.settings import ServerSettings
    from edensplit.wire.blob import unpack_encoding
    from edensplit.wire.options import Options

    # Outside a replica @serve.batch works as in one, except for a warning check that reads the replica's
    # max_ongoing_requests: not there in one plain process.
    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None
    torch.set_num_threads(1)
    config = load_config(model_yaml)
    encoder = load_model(None, config, stages={ENCODE}, allow_random=True)
    edge = load_model(None, config, stages={INTERPOLATE}, allow_random=True)
    rng = np.random.default_rng(0)
    pair = rng.integers(0, 255, (2, *size, 3), dtype=np.uint8)
    settings = ServerSettings()
    encoding, sampling = cloud_service(settings).endpoint("encode"), edge_service(settings).endpoint("interpolate")

    async def run(mode: str) -> float:
        batch = 1 if mode == "1" else 4
        runtimes = [ModelRuntime(stage, 64, model, max_batch=batch, batch_wait_s=0.01)
                    for stage, model in ((ENCODE, encoder), (INTERPOLATE, edge))]
        if mode == "serve":
            use_batching(runtimes[0], [encoding], "serve")
            use_batching(runtimes[1], [sampling], "serve")

        async def one(i: int) -> None:
            job = EncodeJob(pair, "float32", f"r{i}")
            blob = (await runtimes[0].predict(encoding.operation, job, None, encoding.batcher)).blob
            job = pair_job(edge, unpack_encoding(blob, frames=2), Options(seed=i), f"r{i}", cancellation=Cancellation())
            await runtimes[1].predict(sampling.operation, job, None, sampling.batcher)

        await one(requests)  # warm
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        seconds = time.perf_counter() - started
        for runtime in runtimes:
            await runtime.close()
        return requests / seconds

    figures: dict[str, list[float]] = {"1": [], "project": [], "serve": []}
    for _ in range(rounds):
        for mode in figures:
            figures[mode].append(round(asyncio.run(run(mode)), 2))
    return {mode: {"median_pairs_per_s": statistics.median(v), "runs": v} for mode, v in figures.items()}


def encoder_mean_batch(cloud_url: str) -> float | None:
    text = httpx.get(f"{cloud_url}/metrics", timeout=10).text
    total = re.search(r"^edensplit_batch_size_sum (\S+)", text, re.M)
    count = re.search(r"^edensplit_batch_size_count (\S+)", text, re.M)
    if not total or not count or float(count.group(1)) == 0:
        return None
    return round(float(total.group(1)) / float(count.group(1)), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3, help="video jobs at once (affinity on/off)")
    parser.add_argument("--frames", type=int, default=12, help="frames of their clip (96x72)")
    parser.add_argument("--loss_frames", type=int, default=40, help="frames of the replica-loss job's clip")
    parser.add_argument("--requests", type=int, default=32, help="flow-B pairs per batching run")
    parser.add_argument("--repeats", type=int, default=3, help="batching runs per mode (the median is shown)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the in-process batchers")
    parser.add_argument("--output", type=Path, help="write the Markdown here too")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    (work / "model.yaml").write_text(MODEL_YAML)
    env = {"EDEN_CONFIG": str(work / "model.yaml"), "EDEN_RANDOM_WEIGHTS": "1", "DEVICE": "cpu", "TORCH_THREADS": "1"}
    clip = make_sample_clip(work / "clip.mkv", n_frames=args.frames, width=96, height=72, rate=Fraction(30000, 1001))
    long_clip = make_sample_clip(work / "long.mkv", n_frames=args.loss_frames, width=96, height=72,
                                 rate=Fraction(30000, 1001))
    run_job(clip, work / "local", env, "--local")
    run_job(long_clip, work / "local-long", env, "--local", "--num_steps", "8")
    reference, long_reference = frames(work / "local"), frames(work / "local-long")
    results: dict = {"startup_s": {}, "stop_s": {}}

    def cluster(name: str, affinity: bool, max_batch: int, batching: str) -> RayServeProcess:
        config = work / f"{name}.yaml"
        config.write_text(ray_yaml(affinity, max_batch, batching))
        process = RayServeProcess(config, env=env, log_path=work / f"{name}.log").start()
        results["startup_s"][name] = round(process.ready_s, 1)
        print(f"{name}: ready in {process.ready_s:.1f} s", flush=True)
        return process

    results["batchers_in_process"] = batchers_in_process(work / "model.yaml", args.requests, args.rounds)
    print("batchers in one process:", results["batchers_in_process"], flush=True)
    served = cluster("affinity", True, 1, "project")
    try:
        results["affinity_on"] = jobs_at_once(served, clip, work, env, args.jobs, "on", reference)
        print("affinity on:", results["affinity_on"], flush=True)
        unkilled = run_job(long_clip, work / "long-unkilled", {**env, "CLOUD_SERVER_URL": served.cloud_url,
                                                               "EDGE_SERVER_URL": served.edge_url}, "--num_steps", "8")
        results["replica_loss"] = replica_loss(served, long_clip, work, env, long_reference, unkilled)
        print("replica loss:", results["replica_loss"], flush=True)
        time.sleep(5)  # the lost replica replaced
        results["batch_1"] = batching_runs(served, args.requests, args.repeats)
        print("MAX_BATCH 1:", results["batch_1"], flush=True)
    finally:
        results["stop_s"]["affinity"] = round(served.stop(), 1)

    served = cluster("no-affinity", False, 1, "project")
    try:
        results["affinity_off"] = jobs_at_once(served, clip, work, env, args.jobs, "off", reference)
        print("affinity off:", results["affinity_off"], flush=True)
    finally:
        results["stop_s"]["no-affinity"] = round(served.stop(), 1)

    for batching in ("project", "serve"):
        served = cluster(f"batch-{batching}", True, 4, batching)
        try:
            results[f"batch_4_{batching}"] = batching_runs(served, args.requests, args.repeats)
            print(f"MAX_BATCH 4 {batching}:", results[f"batch_4_{batching}"], flush=True)
        finally:
            results["stop_s"][f"batch-{batching}"] = round(served.stop(), 1)

    text = report(results, args)
    print(text)
    if args.output:
        args.output.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def report(r: dict, args: argparse.Namespace) -> str:
    import ray
    import torch

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"benchmarks/ray_replicas.py: {os.cpu_count()} cores ({platform.machine()}), CPU, "
            f"torch {torch.__version__}, ray {ray.__version__}, {when}. One Encoder and two Interpolator replicas "
            "(TORCH_THREADS=1 each), "
            f"EDEN hidden 128 / 4 heads / DiT depth 2, random weights; a local cluster on loopback.\n")
    on, off, loss = r["affinity_on"], r["affinity_off"], r["replica_loss"]
    lines = [head, "## Session affinity", "",
             f"{args.jobs} HTTP frame-once video jobs at once ({args.frames} frames, 96x72), the client unchanged:", "",
             "| routing | wall s | each job s | SESSION_NOT_FOUND | jobs failed | identical to --local | edge requests "
             "per replica |", "|---|---|---|---|---|---|---|"]
    for name, x in (("session affinity (consistent hash)", on), ("Ray's default for every request", off)):
        lines.append(f"| {name} | {x['wall_s']} | {', '.join(map(str, x['job_s']))} | {x['session_not_found']} | "
                     f"{x['failed']} | {x['identical_to_local']}/{x['jobs']} | "
                     f"{', '.join(map(str, x['edge_requests_per_replica'].values()))} |")
    lines += ["", "## A replica lost mid-job", "",
              f"A {loss['frames']}-pair HTTP frame-once job (num_steps 8); the replica holding its session killed "
              f"(SIGKILL) after {loss['killed_after_frames']} generated frames: the job took {loss['wall_s']} s "
              f"({loss['unkilled_wall_s']} s without the kill), {loss['session_not_found']} SESSION_NOT_FOUND "
              f"answer(s), frames identical to --local: {loss['identical_to_local']}.", "",
              "## Batching (flow B, the composed route)", "",
              f"{args.requests} pairs (144x256, num_steps 2), 8 in flight, through /edge/api/v1/interpolate_frames "
              f"(the edge has the Encoder deployment encode over a Ray handle); {args.repeats} runs per mode, the "
              "median run shown, every run's pairs/s in the last column:", "",
              "| MAX_BATCH | batcher | pairs/s | p50 ms | p95 ms | encoder mean batch | runs, pairs/s |",
              "|---|---|---|---|---|---|---|"]
    for name, key in (("1", "batch_1"), ("4", "batch_4_project"), ("4", "batch_4_serve")):
        x = r[key]
        batcher = {"batch_1": "-", "batch_4_project": "project (Batcher)", "batch_4_serve": "@serve.batch"}[key]
        lines.append(f"| {name} | {batcher} | {x['pairs_per_s']} | {x['p50_ms']} | {x['p95_ms']} | "
                     f"{x['encoder_mean_batch']} | {', '.join(map(str, x['runs_pairs_per_s']))} |")
    b = r["batchers_in_process"]
    lines += ["", "The batchers alone, in one process (no Ray processes or proxy: ModelRuntime.predict, as a "
              f"replica's routes and the composed route call it), {args.requests} concurrent pairs encoded then "
              f"interpolated, the three modes interleaved {args.rounds} times (median, then every run):", "",
              "| MAX_BATCH | batcher | pairs/s | runs |", "|---|---|---|---|"]
    for mode, name, batcher in (("1", "1", "-"), ("project", "4", "project (Batcher)"), ("serve", "4", "@serve.batch")):
        lines.append(f"| {name} | {batcher} | {b[mode]['median_pairs_per_s']} | "
                     f"{', '.join(map(str, b[mode]['runs']))} |")
    lines += ["", "## Startup and stop", "",
              "| configuration | ready s | stop s |", "|---|---|---|"]
    lines += [f"| {name} | {s} | {r['stop_s'].get(name, '-')} |" for name, s in r["startup_s"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
