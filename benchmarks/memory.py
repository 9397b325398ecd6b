"""Peak client memory against video length: `edensplit interpolate` on a 30-frame and a 300-frame clip.

The client streams (frames decoded, sent, generated, written one at a time; audio remuxed as the video is
written; each level of midpoints with a bounded window), so its peak RSS should not grow with the video's
length. This starts a cloud and an edge on loopback (a small random-weight EDEN: the client's memory does not
depend on the model), makes two clips of the same frames at 640x360 with an AAC audio track, runs the CLI on
each as a subprocess (HTTP, frame-once sessions, scene detection on) and reads its peak RSS from the kernel
(`wait4`'s ru_maxrss). The goal: the 300-frame peak within 20% of the 30-frame one.

    python benchmarks/memory.py                      # 2x and 4x, writes benchmarks/memory-results.md
    python benchmarks/memory.py --multis 2 --frames 30,300 --size 640x360
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from edensplit.servers.launch import ServerProcess
from edensplit.video.sample import _sample_frame

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = "model_args:\n  hidden_dim: 32\n  num_heads: 2\n  dit_depth: 1\n  decoder_depth: 1\n  qkv_bias: true\n"
RATE = Fraction(30000, 1001)


def make_clip(path: Path, frames: int, width: int, height: int) -> Path:
    """The sample clip's moving shapes (libx264) with a 440 Hz AAC track as long as the video."""
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=RATE)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    audio = container.add_stream("aac", rate=48000)
    audio.layout = "mono"
    written, total = 0, int(48000 * frames / RATE)
    for k in range(frames):
        vf = av.VideoFrame.from_ndarray(_sample_frame(k, width, height), format="rgb24")
        vf.pts = k
        for packet in video.encode(vf):
            container.mux(packet)
        until = min(int(48000 * (k + 1) / RATE), total)
        while written < until:
            n = min(1024, until - written)
            t = np.arange(written, written + n) / 48000
            af = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :],
                                            format="flt", layout="mono")
            af.sample_rate, af.pts = 48000, written
            for packet in audio.encode(af):
                container.mux(packet)
            written += n
    for stream in (audio, video):
        for packet in stream.encode(None):
            container.mux(packet)
    container.close()
    return path


def run_and_measure(args: list[str]) -> tuple[float, float, str]:
    """Run `edensplit interpolate ARGS` to the end; its peak RSS (MB, from wait4), wall seconds and stdout."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = subprocess.Popen([sys.executable, "-m", "edensplit", "interpolate", *args], cwd=ROOT, stdout=out,
                               stderr=err).pid
        _, status, usage = os.wait4(pid, 0)
        out.seek(0)
        err.seek(0)
        if status != 0:
            raise RuntimeError(f"edensplit interpolate failed: {err.read()[-2000:]}")
        return usage.ru_maxrss / 1024, time.perf_counter() - started, out.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="30,300", help="clip lengths, comma-separated (default 30,300)")
    parser.add_argument("--multis", default="2,4", help="multipliers, comma-separated (default 2,4)")
    parser.add_argument("--size", default="640x360", help="WxH (default 640x360)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "memory-results.md"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    lengths = [int(v) for v in args.frames.split(",")]
    multis = [int(v) for v in args.multis.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "tiny.yaml").write_text(TINY_YAML)
        env = {"EDEN_CONFIG": str(work / "tiny.yaml"), "EDEN_RANDOM_WEIGHTS": "1", "DEVICE": "cpu"}
        clips = {n: make_clip(work / f"clip-{n}.mp4", n, width, height) for n in lengths}
        with ServerProcess("edensplit.cloud:app", env=env, log_path=work / "cloud.log") as cloud, \
                ServerProcess("edensplit.edge:app", env={**env, "CLOUD_SERVER_URL": cloud.url},
                              log_path=work / "edge.log") as edge:
            for multi in multis:
                peaks = {}
                for n in lengths:
                    out = work / f"out-{multi}-{n}"
                    peak, wall, stdout = run_and_measure(
                        ["--video_path", str(clips[n]), "--output_dir", str(out), "--multi", str(multi),
                         "--no_progress", "--cloud_url", cloud.url, "--edge_url", edge.url])
                    peaks[n] = peak
                    frames_out = multi * (n - 1) + 1
                    rows.append((multi, n, frames_out, peak, wall))
                    print(f"{multi}x, {n} frames in, {frames_out} out: peak RSS {peak:.1f} MB, {wall:.1f} s "
                          f"({stdout.strip().splitlines()[0]})", flush=True)
                base, longest = peaks[min(lengths)], peaks[max(lengths)]
                print(f"{multi}x: {max(lengths)} frames peak {longest:.1f} MB vs {min(lengths)} frames "
                      f"{base:.1f} MB: {100 * (longest / base - 1):+.1f}%", flush=True)
    lines = [
        "# Peak client memory against video length",
        "",
        f"`python benchmarks/memory.py --frames {args.frames} --multis {args.multis} --size {args.size}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores ({platform.machine()}), "
        f"Python {platform.python_version()}, PyAV {av.__version__}.",
        "",
        "The client (`edensplit interpolate`, HTTP, frame-once sessions, scene detection on) against a cloud and an "
        "edge on loopback (a small random-weight EDEN), on the sample clip's moving shapes at "
        f"{width}x{height}, 30000/1001 fps, with an AAC track (remuxed into the output). Peak RSS is the "
        "kernel's (`wait4` ru_maxrss) for the client process alone.",
        "",
        "| multiplier | frames in | frames out | peak RSS (MB) | wall (s) | vs the shortest clip |",
        "|---|---|---|---|---|---|",
    ]
    for multi, n, frames_out, peak, wall in rows:
        base = next(p for m, k, _, p, _ in rows if m == multi and k == min(lengths))
        lines.append(f"| {multi}x | {n} | {frames_out} | {peak:.1f} | {wall:.1f} | {100 * (peak / base - 1):+.1f}% |")
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
