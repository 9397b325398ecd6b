"""The copies of encodings between the host and a GPU (edensplit.model.transfers) on a real device, at 480x854 and
1080x1920: the bits against the CPU's, and the model thread's time against the way before.

- to_host (the cloud's answer), per wire dtype: the tokens cast on the device and copied to pinned memory, against
  a cast on the CPU; `queue_ms`, the model thread's share (queueing), `until_on_host_ms`, until the copy is done,
  `before_ms`, the copy before (float32 to pageable memory, then the CPU's cast), all on the model thread.
- to_device (the edge's request), per model dtype, from float16 on the wire: the copy on the copy stream, then the
  model's cast on the device, against `.to(device, dtype)`; `stage_ms`, the decode step's time (thread pool),
  `use_ms`, the model thread's (wait and cast, until done), `before_ms`, the copy before (on the model thread).
- frames_to_host (the edge's answer): its uint8 frame copied to pinned memory on the copy stream, against `.cpu()`.
- split_vs_local: the tiny EDEN's frames through the servers' own steps with all of these copies, against the local
  pipeline on the same device (float32, the exact mode: the same bits).

Run by benchmarks/gpu.sh first; on a machine without CUDA it checks the CPU's path (nothing moves).

    python benchmarks/transfers_check.py [DEVICE] [--json FILE]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.model.transfers import tensor_to_host, to_device, to_host

SIZES = {"480x854": Geometry(480, 854, 16, 8), "1080x1920": Geometry(1080, 1920, 16, 8)}
HIDDEN = 768
TOKENS = ("cond_dit", "cond_dec")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoding(geo: Geometry, device: torch.device, seed: int, dtype: torch.dtype = torch.float32) -> FrameEncoding:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = [torch.randn(1, geo.tokens, HIDDEN, generator=gen) * 3 for _ in range(2)]
    tokens[0].view(-1)[:4] = torch.tensor([65504.0, 65520.0, 1e-8, 2.0 ** -24 * 1.5])  # half's edges
    return FrameEncoding(*(t.to(device, dtype) for t in tokens), torch.rand(1).to(device), torch.rand(1).to(device),
                         geo)


def same(a: FrameEncoding, b: FrameEncoding, dtype: torch.dtype) -> bool:
    return all(torch.equal(getattr(a, k).cpu().to(dtype), getattr(b, k).cpu().to(dtype)) for k in TOKENS) and \
        all(torch.equal(getattr(a, k).cpu(), getattr(b, k).cpu()) for k in ("mean", "std"))


def median_ms(device: torch.device, *steps: Callable[[], object]) -> list[float]:
    """Each step's median ms over 5 runs of them in turn (the device idle before each run)."""
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(5):
        sync(device)
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            step()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [round(statistics.median(t), 3) for t in times]


def host_row(device: torch.device, name: str, geo: Geometry, dtype: torch.dtype) -> dict[str, object]:
    enc = encoding(geo, device, seed=len(name))
    # what the blob holds: the host tokens in the wire dtype (from a GPU cast there; from a CPU cast later, as the
    # blob is written) against the CPU's cast of the same tokens
    ok = same(to_host(enc, dtype).wait(), enc, dtype)
    pending: list = []

    def before() -> None:
        host = enc.to("cpu")
        host.cond_dit.to(dtype), host.cond_dec.to(dtype)

    queue, wait, old = median_ms(device, lambda: pending.append(to_host(enc, dtype)), lambda: pending.pop().wait(),
                                 before)
    return {"direction": "to_host", "size": name, "dtype": str(dtype).removeprefix("torch."), "bits_equal": ok,
            "queue_ms": queue, "until_on_host_ms": round(queue + wait, 3), "before_ms": old}


def device_row(device: torch.device, name: str, geo: Geometry, dtype: torch.dtype) -> dict[str, object]:
    wire = encoding(geo, torch.device("cpu"), seed=len(name), dtype=torch.float16)
    staged = to_device(wire, device)
    moved = staged.use() if staged is not None else wire
    ok = same(moved.to(device, dtype), wire.to(device, dtype), dtype)
    pending: list = []

    def use() -> None:
        copy = pending.pop()
        (copy.use() if copy is not None else wire).to(device, dtype)
        sync(device)

    def before() -> None:
        wire.to(device, dtype)
        sync(device)

    stage, used, old = median_ms(device, lambda: pending.append(to_device(wire, device)), use, before)
    return {"direction": "to_device", "size": name, "dtype": str(dtype).removeprefix("torch."), "bits_equal": ok,
            "stage_ms": stage, "use_ms": used, "before_ms": old}


def frames_row(device: torch.device, name: str, geo: Geometry) -> dict[str, object]:
    frames = torch.randint(0, 256, (1, geo.height, geo.width, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1)).to(device)
    ok = torch.equal(tensor_to_host(frames).wait().cpu(), frames.cpu())
    pending: list = []
    queue, wait, old = median_ms(device, lambda: pending.append(tensor_to_host(frames)), lambda: pending.pop().wait(),
                                 lambda: frames.cpu())
    return {"direction": "frames_to_host", "size": name, "dtype": "uint8", "bits_equal": ok, "queue_ms": queue,
            "until_on_host_ms": round(queue + wait, 3), "before_ms": old}


def split_row(device: torch.device) -> dict[str, object]:
    """The tiny EDEN in float32 on `device`: a 4-frame clip through the servers' own steps (the cloud's encode with
    its copy to the host, the blob, the edge's copy to the device started as its decode step does, contexts, the
    frames' copy to the host waited for as its encode step does) against the local pipeline, frame by frame."""
    from edensplit.model.checkpoint import load_model
    from edensplit.model.pipeline import LocalPipeline
    from edensplit.model.stages import frame_difference
    from edensplit.servers.cloud.operations import EncodeJob, encode_jobs
    from edensplit.servers.edge.operations import generate
    from edensplit.servers.edge.validation import make_job
    from edensplit.video.sample import sample_middle_frame
    from edensplit.wire.blob import encoding_view, unpack_encoding
    from edensplit.wire.options import Options

    model = load_model("tiny", device=device)
    clip = [sample_middle_frame(k, 128, 96) for k in range(4)]
    local = LocalPipeline(model)
    started = time.perf_counter()
    encodings = []
    for k, frame in enumerate(clip):  # the cloud: frame -> blob; the edge: blob -> its copy to the device
        blob = bytearray(encoding_view(encode_jobs(model, [EncodeJob(frame[None], "float32", f"f{k}")])[0].encoding))
        host = unpack_encoding(blob, frames=1).encoding
        encodings.append((host, to_device(host, device)))
    worst = 0
    for k in range(3):
        (enc0, staged0), (enc1, staged1) = encodings[k], encodings[k + 1]
        job = make_job(model, enc0, enc1, Options.from_flat({"seed": k}),
                       float(frame_difference(clip[k], clip[k + 1])[0]), f"p{k}")
        job.staged = staged0, staged1
        split = generate(model, [job])[0].array()
        worst = max(worst, int(np.abs(split.astype(int) - local.video_pair(clip[k], clip[k + 1], k, k)).max()))
    return {"direction": "split_vs_local", "size": "96x128", "dtype": "float32 (tiny EDEN)", "bits_equal": worst == 0,
            "max_abs_grey_levels": worst, "ms": round((time.perf_counter() - started) * 1e3, 1)}


def main() -> int:
    args = sys.argv[1:]
    out = args[args.index("--json") + 1] if "--json" in args else None
    device = torch.device(args[0] if args and not args[0].startswith("--") else
                          ("cuda:0" if torch.cuda.is_available() else "cpu"))
    rows = [host_row(device, name, geo, dtype) for name, geo in SIZES.items()
            for dtype in (torch.float16, torch.bfloat16, torch.float32)]
    rows += [device_row(device, name, geo, dtype) for name, geo in SIZES.items()
             for dtype in (torch.bfloat16, torch.float16, torch.float32)]
    rows += [frames_row(device, name, geo) for name, geo in SIZES.items()]
    rows.append(split_row(device))
    for row in rows:
        print(json.dumps(row), flush=True)
    failures = sum(not row["bits_equal"] for row in rows)
    if out:
        with open(out, "w") as f:
            json.dump({"device": str(device), "rows": rows, "ok": failures == 0}, f, indent=1)
    print("transfers_check:", "the same bits as on the CPU" if failures == 0 else f"{failures} rows DIFFER", "on",
          device)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
