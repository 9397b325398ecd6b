"""Issue #9's acceptance for the bytes of frame-once sessions, through real servers.

At 176x144 (width x height), the full-size EDEN with random weights (the released config: EDEN_CONFIG is
ignored here; MODEL_PATH, if set, is used), a 40-frame clip, flow A over HTTP: the user's design (pair at a
time, float32, JSON/base64), then frame-once float16 and frame-once int8 (binary). Bytes of encodings are
counted on both hops (the cloud's responses + the edge's requests, from the servers' /metrics by route).
Asked: int8 at least 10x fewer bytes than the user's design, float16 at least 5x, int8's frames within 3 grey
levels (mean absolute difference) of float32's. Each server's model runs on one thread (TORCH_THREADS=1), so
the cloud, the edge and the client share 2 cores without contention.

    python benchmarks/acceptance.py --output benchmarks/acceptance-176x144.md \
        --json benchmarks/acceptance-176x144.json

Prints the table and one line per criterion; exits 1 if any is not met. It takes about 2 minutes, so the suite
does not run it: tests/test_acceptance.py checks the committed output against every criterion.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from edensplit.bench.bytes import ACCEPTANCE_FRAMES, ACCEPTANCE_SIZE, acceptance, run_bytes
from edensplit.bench.output import write_json


def run(output: Path | None = None, json_path: Path | None = None, log_dir: Path | None = None) -> tuple[list, float]:
    """The acceptance run: (run_bytes rows, seconds). The servers get the released config, on the CPU."""
    os.environ.pop("EDEN_CONFIG", None)
    started = time.perf_counter()
    command = "python benchmarks/acceptance.py" + "".join(
        f" --{name} {path}" for name, path in (("output", output), ("json", json_path)) if path)
    rows = run_bytes(ACCEPTANCE_SIZE, ACCEPTANCE_FRAMES, env={"DEVICE": "cpu", "TORCH_THREADS": "1"}, output=output,
                     json_path=json_path, log_dir=log_dir, command=command)
    return rows, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="also write the Markdown (table and verdict) here")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    rows, seconds = run(args.output, args.json)
    verdicts = acceptance(rows)
    lines = ["", f"Issue #9 acceptance ({seconds:.0f} s, servers' start-up included):", ""]
    lines += [f"- {'met' if ok else 'NOT MET'}: {text}" for text, ok in verdicts]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with args.output.open("a") as f:
            f.write(text)
    if args.json:
        document = json.loads(args.json.read_text())
        document.update(seconds=seconds, acceptance=[{"criterion": t, "met": ok} for t, ok in verdicts])
        write_json(args.json, document)
    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
