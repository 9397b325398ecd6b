"""`python -m edensplit.training`: train the tiny EDEN and write it where the package ships it (see train.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from edensplit.training.report import HELD_OUT, report_markdown, run
from edensplit.training.train import TrainConfig

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "model" / "tiny"


def main() -> None:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m edensplit.training", description=__doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    for name in ("seed", "dataset", "vae_steps", "dit_steps", "sampled_steps", "vae_batch", "dit_batch",
                 "sampled_batch"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name),
                       help=f"(default {getattr(defaults, name)}; other values are for experiments)")
    p.add_argument("--quick-eval", action="store_true", help="benchmark 32 + 8 held-out triplets, not 200 + 50")
    p.add_argument("--summarise", type=Path, metavar="REPORT", help="print a report's Markdown summary (timings, "
                   "loss curves, held-out results) and exit, training nothing")
    args = p.parse_args()
    if args.summarise:
        print(report_markdown(json.loads(args.summarise.read_text())), end="")
        return
    cfg = dataclasses.replace(defaults, seed=args.seed, dataset=args.dataset, vae_steps=args.vae_steps,
                              dit_steps=args.dit_steps, sampled_steps=args.sampled_steps, vae_batch=args.vae_batch,
                              dit_batch=args.dit_batch, sampled_batch=args.sampled_batch)
    held_out = tuple((s, 32 if n == 200 else 8, f) for s, n, f in HELD_OUT) if args.quick_eval else HELD_OUT
    run(cfg, args.out, held_out)


if __name__ == "__main__":
    main()
