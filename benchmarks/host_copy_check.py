"""The cloud's copy of an encoding to the host (edensplit.model.host_copy) on a real device: the bits against a
cast on the CPU, and the time the model thread spends queueing it against the time until it is there, beside the
copy the cloud made before (float32 to the host at once, then cast there). Run by benchmarks/gpu.sh first; on a
machine without CUDA it checks the CPU's path only.

    python benchmarks/host_copy_check.py [DEVICE] [--json FILE]
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.model.host_copy import to_host

SIZES = {"480x854": Geometry(480, 854, 16, 8), "1080x1920": Geometry(1080, 1920, 16, 8)}
HIDDEN = 768


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoding(geo: Geometry, device: torch.device, seed: int) -> FrameEncoding:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = [torch.randn(1, geo.tokens, HIDDEN, generator=gen) * 3 for _ in range(2)]
    tokens[0].view(-1)[:4] = torch.tensor([65504.0, 65520.0, 1e-8, 2.0 ** -24 * 1.5])  # half's edges
    return FrameEncoding(*(t.to(device) for t in tokens), torch.rand(1).to(device), torch.rand(1).to(device), geo)


def main() -> int:
    args = sys.argv[1:]
    out = args[args.index("--json") + 1] if "--json" in args else None
    device = torch.device(args[0] if args and not args[0].startswith("--") else
                          ("cuda:0" if torch.cuda.is_available() else "cpu"))
    report: dict[str, object] = {"device": str(device), "rows": []}
    failures = 0
    for name, geo in SIZES.items():
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            enc = encoding(geo, device, seed=len(name))
            got = to_host(enc, dtype).wait()
            # what the blob holds: the host tokens in the wire dtype (from a GPU cast there; from a CPU cast later,
            # as the blob is written) against the CPU's cast of the same tokens
            same = all(torch.equal(getattr(got, k).to(want), getattr(enc, k).cpu().to(want))
                       for k, want in (("cond_dit", dtype), ("cond_dec", dtype), ("mean", torch.float32),
                                       ("std", torch.float32)))
            failures += not same
            queued, ready, before = [], [], []
            for _ in range(5):
                sync(device)
                t0 = time.perf_counter()
                pending = to_host(enc, dtype)
                t1 = time.perf_counter()
                pending.wait()
                queued.append((t1 - t0) * 1e3)
                ready.append((time.perf_counter() - t0) * 1e3)
                sync(device)
                t0 = time.perf_counter()
                host = enc.to("cpu")  # the cloud's copy before: float32 to the host, then the cast there
                host.cond_dit.to(dtype), host.cond_dec.to(dtype)
                before.append((time.perf_counter() - t0) * 1e3)
            row = {"size": name, "dtype": str(dtype).removeprefix("torch."), "bits_equal": same,
                   "queue_ms": round(statistics.median(queued), 3),
                   "until_on_host_ms": round(statistics.median(ready), 3),
                   "before_ms": round(statistics.median(before), 3)}
            report["rows"].append(row)  # type: ignore[union-attr]
            print(json.dumps(row), flush=True)
    report["ok"] = failures == 0
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
    print("host_copy_check:", "the same bits as a cast on the CPU" if failures == 0 else f"{failures} rows DIFFER",
          "on", device)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
