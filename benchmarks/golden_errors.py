"""Print how far this implementation is from the reference EDEN's golden vectors, array by array.

    python benchmarks/golden_errors.py [FIXTURES_DIR]

(default tests/fixtures/eden-reference, the in-repo copy; a folder holding NAME.pt instead of
NAME.safetensors works too). tests/model/test_golden.py asserts the bounds; this prints the
measured max absolute errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig
from edensplit.model.stages import encode_frames, frame_difference, interpolate, normalise_difference

DEFAULT_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "eden-reference"


def checkpoint(fixtures: Path, name: str) -> Path:
    """NAME.safetensors (the in-repo copy) or NAME.pt (the original folder), whichever is there."""
    for suffix in (".safetensors", ".pt"):
        if (path := fixtures / f"{name}{suffix}").is_file():
            return path
    raise FileNotFoundError(f"no {name}.safetensors or {name}.pt in {fixtures}")


def errors(fixtures: Path, name: str) -> dict[str, float]:
    meta = json.loads((fixtures / f"{name}.json").read_text())
    ref = dict(np.load(fixtures / f"{name}.npz"))
    config = EdenConfig.from_dict(meta)
    model = load_model(checkpoint(fixtures, name), config)
    enc0, enc1 = encode_frames(model, ref["frame0_u8"]), encode_frames(model, ref["frame1_u8"])
    raw = frame_difference(ref["frame0_u8"], ref["frame1_u8"])
    trace: dict = {}
    out = interpolate(model, enc0, enc1, raw, torch.from_numpy(ref["noise"]), trace=trace)
    ours = {"cond_dit": torch.cat([enc0.cond_dit, enc1.cond_dit]),
            "cond_dec": torch.cat([enc0.cond_dec, enc1.cond_dec]),
            "difference": normalise_difference(raw, config.cos_sim_mean, config.cos_sim_std),
            "latents_t075": trace["latents"][0], "latents_t1": trace["latents"][1],
            "decoded_padded": trace["decoded_padded"], "output": out}
    return {k: float(np.abs(v.numpy().reshape(ref[k].shape) - ref[k]).max()) for k, v in ours.items()}


def main(argv: list[str]) -> int:
    fixtures = Path(argv[0]) if argv else DEFAULT_FIXTURES
    cases = sorted(p.stem for p in fixtures.glob("*.npz"))
    if not cases:
        print(f"no golden cases (*.npz) in {fixtures}", file=sys.stderr)
        return 1
    for case in cases:
        print(case, "  ".join(f"{k} {v:.2e}" for k, v in errors(fixtures, case).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
