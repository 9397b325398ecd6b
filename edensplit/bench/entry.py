"""`edensplit bench`'s entry: its flags parsed (edensplit.cli) to one mode's run."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from edensplit.bench import overhead
from edensplit.bench.bytes import BYTES_DESIGNS, run_bytes
from edensplit.bench.compare import FLOWS, TRANSPORTS, run_bench
from edensplit.bench.overhead_report import run_overhead
from edensplit.bench.perf import CPU_BATCHES, CPU_SIZES, GPU_BATCHES, GPU_SIZES, run_perf
from edensplit.bench.stages import supported_precisions
from edensplit.bench.systems import USER_DESIGN, Design
from edensplit.settings import ModelSettings
from edensplit.wire import codecs

MODES = ("compare", "perf", "bytes", "overhead", "quality")
OVERHEAD_BUDGET_S = 480.0  # the overhead matrix's rows, start-up aside: within 10 minutes on a 2-core machine


def parse_size(text: str) -> tuple[int, int]:
    """'480x854' (HxW) -> (480, 854)."""
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'256x448,480x854' -> ((256, 448), (480, 854))."""
    return tuple(parse_size(s) for s in text.split(",") if s)


def parse_design(text: str, flow: str = "a-once") -> Design:
    """'ws-binary:int8' (transport-payload:wire dtype) -> a Design of `flow`."""
    transport, _, dtype = text.partition(":")
    kind, _, payload = transport.partition("-")
    return Design(kind, payload or "binary", flow, dtype or codecs.FLOAT16.name)


# Settings that change what a run measures, shown with its command line when set.
COMMAND_ENV = ("MODEL_PATH", "EDEN_CONFIG", "EDEN_RANDOM_WEIGHTS", "DEVICE", "EDEN_DTYPE", "TORCH_THREADS",
               "EDEN_COMPILE", "MAX_BATCH", "BATCH_WAIT_MS")


def run_from_args(args: argparse.Namespace) -> int:
    """`edensplit bench`, its flags parsed (edensplit.cli). SIGTERM (`timeout`) exits through the context
    managers, so the servers a run started are stopped with it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = None
    if "bench" in sys.argv[1:2]:
        settings = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in COMMAND_ENV if os.environ.get(k))
        command = " ".join(filter(None, (settings, "edensplit", *map(shlex.quote, sys.argv[1:]))))
    path = (lambda p: Path(p) if p else None)  # noqa: E731
    log_dir = path(args.log_dir)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)  # the servers' logs go there
    if args.mode == "compare":
        transports = tuple(args.transports.split(",")) if args.transports else TRANSPORTS
        flows = tuple(args.flows.split(",")) if args.flows else FLOWS
        dtypes = tuple(args.dtypes.split(",")) if args.dtypes else (codecs.FLOAT32.name, codecs.FLOAT16.name)
        run_bench(parse_size(args.size), args.frames, transports, dtypes, flows, args.window, path(args.output),
                  log_dir, path(args.json_path))
    elif args.mode == "overhead":
        split = (lambda text, default: tuple(text.split(",")) if text else default)  # noqa: E731
        run_overhead(parse_sizes(args.sizes) if args.sizes else overhead.SIZES,
                     split(args.transports, overhead.PATHS), split(args.dtypes, overhead.DTYPES),
                     split(args.flows, overhead.FLOWS), frames=args.frames, window=args.window,
                     budget_s=args.budget_s if args.budget_s is not None else OVERHEAD_BUDGET_S,
                     output=path(args.output), json_path=path(args.json_path), log_dir=log_dir, command=command)
    elif args.mode == "quality":
        from edensplit.bench.quality import run_quality

        first, second = (int(n) for n in args.triplets.split(","))
        run_quality(counts=(first, second), real_triplets=args.real_triplets, output=path(args.output),
                    json_path=path(args.json_path), command=command)
    elif args.mode == "bytes":
        extra = tuple(parse_design(d) for d in args.designs.split(",")) if args.designs else BYTES_DESIGNS[1:]
        run_bytes(parse_size(args.size), args.frames, (USER_DESIGN, *extra), window=args.window,
                  output=path(args.output), json_path=path(args.json_path), log_dir=log_dir, command=command)
    else:
        device = args.device or ModelSettings().device
        gpu = device.startswith("cuda")
        sizes = parse_sizes(args.sizes) if args.sizes else (GPU_SIZES if gpu else CPU_SIZES)
        precisions = tuple(args.precisions.split(",")) if args.precisions else supported_precisions(device)
        batches = (tuple(int(b) for b in args.batches.split(",")) if args.batches
                   else (GPU_BATCHES if gpu else CPU_BATCHES))
        designs = tuple(parse_design(d) for d in args.designs.split(",")) if args.designs else None
        run_perf(sizes, precisions, batches, device=device, parts=tuple(args.parts.split(",")), designs=designs,
                 n_frames=args.frames, window=args.window, iters=args.iters, min_seconds=args.min_seconds,
                 batch_budget_s=args.batch_budget_s, output=path(args.output), json_path=path(args.json_path),
                 log_dir=log_dir, command=command, budget_s=args.budget_s, clock=args.clock,
                 edge_device=args.edge_device)
    return 0
