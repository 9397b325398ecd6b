"""The tiny EDEN's run and its report: train, save, benchmark the saved files on held-out triplets, and the
report as JSON beside the weights and as Markdown (for docs/quality.md)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from edensplit.training import synthetic
from edensplit.training.train import CONFIG_NAME, REPORT_NAME, WEIGHTS_NAME, TrainConfig, train

HELD_OUT = ((synthetic.HELD_OUT_SEED, 200, 1), (synthetic.HELD_OUT_SEED + 1, 50, 2))  # (seed, count, size factor)


def benchmark(weights: Path, config_path: Path, size: int, held_out: tuple[tuple[int, int, int], ...] = HELD_OUT
              ) -> dict[str, Any]:
    """The shipped files, loaded as any user loads them, on held-out triplets at the training size and larger."""
    from edensplit.model.checkpoint import load_model
    from edensplit.model.config import load_config
    from edensplit.training.evaluate import evaluate_model

    model = load_model(weights, load_config(config_path))
    results = {}
    for seed, count, factor in held_out:
        side = size * factor
        t0 = time.perf_counter()
        results[f"{side}x{side}"] = {"seed": seed, "count": count, **evaluate_model(model, seed, count, side, side)}
        print(f"-- held-out {side}x{side} ({count} triplets, seed {seed}): {time.perf_counter() - t0:.0f} s",
              flush=True)
    return results


def format_results(results: dict[str, Any]) -> str:
    lines = []
    for size, r in results.items():
        lines.append(f"held-out {size}, {r['count']} triplets (stream {r['seed']}):")
        lines.append(f"  {'method':<8} {'PSNR dB':>8} {'SSIM':>7} {'centroid px':>12}")
        for name in ("eden", "blend", "nearest"):
            m = r[name]
            lines.append(f"  {name:<8} {m['psnr']:>8.2f} {m['ssim']:>7.4f} {m['centroid_px']:>12.2f}")
        lines.append(f"  eden - blend: {r['eden']['psnr'] - r['blend']['psnr']:+.2f} dB")
    return "\n".join(lines)


def run(cfg: TrainConfig, out: Path, held_out: tuple[tuple[int, int, int], ...] = HELD_OUT) -> dict[str, Any]:
    """Train, save, benchmark the saved files; write and return the report."""
    from edensplit.model.checkpoint import file_digest

    trained = train(cfg, out)
    weights = out / WEIGHTS_NAME
    results = benchmark(weights, out / CONFIG_NAME, cfg.size, held_out)
    report = {"weights_sha256_16": file_digest(weights), "weights_bytes": weights.stat().st_size,
              "torch": torch.__version__, "load_average_at_end": os.getloadavg(), **trained, "results": results}
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    print(format_results(results))
    print(f"weights {weights} ({report['weights_bytes'] / 1e6:.2f} MB, sha256 {report['weights_sha256_16']}...)")
    return report


def report_markdown(report: dict[str, Any], points: int = 6) -> str:
    """A report as Markdown: the timings, the constants, the loss curves at a few steps, the held-out results."""
    t = report["timings"]
    lines = [f"Weights {report['weights_bytes'] / 1e6:.2f} MB (sha256 {report['weights_sha256_16']}...), torch "
             f"{report['torch']}; vae_shift {report['vae_shift']:.6f}, vae_scaler {report['vae_scaler']:.6f}.", "",
             "| phase | wall s (cumulative) | CPU s (cumulative) |", "|---|---|---|"]
    lines += [f"| {name} | {v['wall_s']} | {v['cpu_s']} |" for name, v in t.items()]
    ceiling = report.get("tokenizer_ceiling")
    if ceiling:
        lines += ["", f"The tokenizer's ceiling (its decoder on the posterior means of {ceiling['count']} held-out "
                  f"triplets, what the transformer could reach with perfect latents): {ceiling['psnr']:.2f} dB "
                  f"PSNR, the blend {ceiling['blend_psnr']:.2f} dB on the same triplets."]
    for stage, curve in report["curves"].items():
        picks = sorted({round(i * (len(curve) - 1) / (points - 1)) for i in range(points)})
        keys = list(dict.fromkeys(k for point in curve for k in point if k != "step"))
        lines += ["", f"{stage} loss curve (means over each logging interval):", "",
                  "| step | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for i in picks:
            cells = [str(curve[i]["step"]), *(f"{curve[i][k]:.4f}" if k in curve[i] else "-" for k in keys)]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "```", format_results(report["results"]), "```"]
    return "\n".join(lines) + "\n"
