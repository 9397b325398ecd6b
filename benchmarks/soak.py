"""Soak: thousands of mixed requests against real servers on loopback, and their memory before and after.

    python benchmarks/soak.py [--requests N] [--warmup W] [--max-seconds S] [--seed K] [--output PATH]

Starts a cloud and an edge (uvicorn subprocesses on 127.0.0.1, the tiny random model, MAX_REQUEST_MB = 8,
MAX_PIXELS = 2,000,000, glibc's mmap threshold fixed so that RSS follows what a server holds:
tests/servers/test_hostile.py's SERVER_ENV, which says why), then sends a seeded random mix: half
valid requests of every kind, half the hostile corpus of tests/servers/test_hostile.py (bad JSON, lying
headers, bombs, bodies over the limit, WebSocket framing attacks...), over HTTP (one keep-alive client
per server) and WebSocket (one connection per server, reconnected if lost). Each case is followed by a
valid request on the same connection, as in the corpus test. The first W requests are the warm-up; the
servers' RSS (/proc/<pid>/status) is printed after it and at the end, and the end must be within 10% of
the RSS after warm-up. Bounded in count (N) and time (S). `--output` writes what is printed to a file too
(benchmarks/soak-results.md is such a run's output).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import TINY_YAML  # noqa: E402
from tests.servers.test_hostile import CASES, SERVER_ENV, VALID, Case, Harness, start_servers  # noqa: E402

MB = 2**20
GROWTH_LIMIT = 0.10


@dataclass
class Report:
    requests: int = 0  # after warm-up
    warmup: int = 0
    seconds: float = 0.0
    rss: dict[str, tuple[int, int]] = field(default_factory=dict)  # server -> (after warm-up, end), bytes
    start_rss: dict[str, int] = field(default_factory=dict)
    hwm: dict[str, int] = field(default_factory=dict)
    by_kind: Counter = field(default_factory=Counter)  # (server, transport, valid|hostile) -> count
    outcomes: Counter = field(default_factory=Counter)  # code -> count
    unexpected: list[str] = field(default_factory=list)  # hostile cases whose outcome differed from the corpus's
    valid_failures: list[str] = field(default_factory=list)
    stopped_early: bool = False
    samples: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # (requests so far, server -> RSS)


def pick(rng: random.Random) -> Case:
    """Half valid requests, half hostile ones."""
    return rng.choice(VALID) if rng.random() < 0.5 else rng.choice(CASES)


def send(harness: Harness, case: Case, report: Report, counted: bool) -> None:
    outcome = harness.run(case)
    valid = case.code == "success"
    if counted:
        report.by_kind[(case.server, case.transport, "valid" if valid else "hostile")] += 1
        report.outcomes[outcome.code] += 1
    if valid and outcome.code != "success":
        report.valid_failures.append(f"{case.server} {case.transport} {case.name}: {outcome.code} {outcome.detail}")
    elif (outcome.code, outcome.status) != (case.code, case.expected_status) or (case.keep and not outcome.kept):
        report.unexpected.append(f"{case.server} {case.transport} {case.name}: {outcome.code} {outcome.status} "
                                 f"kept={outcome.kept}")


def soak(harness: Harness, requests: int, warmup: int, seed: int = 0, max_seconds: float = 1800,
         sample_every: int = 500) -> Report:
    """`warmup` mixed requests, then `requests` more; the servers' RSS after each phase (and every
    `sample_every` requests)."""
    rng = random.Random(seed)
    report = Report(warmup=warmup, start_rss={s: m["VmRSS"] for s, m in harness.memory().items()})
    started = time.monotonic()
    for _ in range(warmup):
        send(harness, pick(rng), report, counted=False)
    warm = {s: m["VmRSS"] for s, m in harness.memory().items()}
    harness.reset_peaks()
    deadline = time.monotonic() + max_seconds
    for _ in range(requests):
        if time.monotonic() > deadline:
            report.stopped_early = True
            break
        send(harness, pick(rng), report, counted=True)
        report.requests += 1
        if report.requests % sample_every == 0:
            report.samples.append((report.requests, {s: m["VmRSS"] for s, m in harness.memory().items()}))
    end = harness.memory()
    report.seconds = time.monotonic() - started
    report.rss = {s: (warm[s], end[s]["VmRSS"]) for s in warm}
    report.hwm = {s: end[s]["VmHWM"] for s in end}
    return report


def render(report: Report) -> str:
    lines = [f"{report.requests} requests after a warm-up of {report.warmup}, {report.seconds:.1f} s"
             + (" (stopped at the time limit)" if report.stopped_early else ""), "",
             "| server | RSS at start MB | RSS after warm-up MB | RSS at the end MB | change | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for server, (warm, end) in report.rss.items():
        lines.append(f"| {server} | {report.start_rss[server] / MB:.1f} | {warm / MB:.1f} | {end / MB:.1f} | "
                     f"{(end - warm) / warm * 100:+.1f}% | {report.hwm[server] / MB:.1f} |")
    if report.samples:
        lines += ["", "RSS (MB) every few requests after warm-up:", "",
                  "| requests | " + " | ".join(str(n) for n, _ in report.samples) + " |",
                  "|---|" + "---|" * len(report.samples)]
        for server in report.rss:
            lines.append(f"| {server} | " + " | ".join(f"{rss[server] / MB:.1f}" for _, rss in report.samples) + " |")
    lines += ["", "| server | transport | valid | hostile |", "|---|---|---|---|"]
    for server in ("cloud", "edge"):
        for transport in ("http", "ws"):
            lines.append(f"| {server} | {transport} | {report.by_kind[(server, transport, 'valid')]} | "
                         f"{report.by_kind[(server, transport, 'hostile')]} |")
    lines += ["", "Answers: " + ", ".join(f"{code} {n}" for code, n in sorted(report.outcomes.items())), ""]
    lines.append(f"Valid requests that failed: {len(report.valid_failures)}")
    lines += [f"- {line}" for line in report.valid_failures[:20]]
    distinct = Counter(report.unexpected)
    lines.append(f"Hostile requests answered otherwise than the corpus expects (tests/servers/test_hostile.py): "
                 f"{len(report.unexpected)} ({len(distinct)} distinct cases)")
    lines += [f"- {line} (x{n})" for line, n in sorted(distinct.items())]
    return "\n".join(lines)


def source_version() -> str:
    """The commit the servers ran, and whether the working tree differed from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "edensplit"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes under edensplit/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests after warm-up (default 3000)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up requests (default: a tenth, at least 200)")
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop sending after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    parser.add_argument("--logs", type=Path, default=None, help="keep the servers' logs in this folder")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(200, args.requests // 10)
    with tempfile.TemporaryDirectory(prefix="edensplit-soak-") as tmp:
        config = Path(tmp) / "tiny.yaml"
        config.write_text(TINY_YAML)
        env = {**SERVER_ENV, "EDEN_CONFIG": str(config)}
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
        cloud, edge = start_servers(env, args.logs or Path(tmp))
        harness = Harness(cloud, edge)
        try:
            report = soak(harness, args.requests, warmup, args.seed, args.max_seconds)
        finally:
            harness.close()
            edge.stop()
            cloud.stop()
    header = [f"# Soak: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
              f"`python benchmarks/soak.py --requests {args.requests} --warmup {warmup} --seed {args.seed}` on "
              f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, source "
              f"{source_version()}; servers: "
              + ", ".join(f"{k}={v}" for k, v in sorted(SERVER_ENV.items())) + ", tiny random model.", ""]
    verdict = []
    ok = not report.valid_failures
    for server, (warm, end) in report.rss.items():
        within = end <= warm * (1 + GROWTH_LIMIT)
        ok &= within
        verdict.append(f"{server}: RSS at the end {'within' if within else 'NOT within'} 10% of the RSS after warm-up "
                       f"({(end - warm) / warm * 100:+.1f}%)")
    text = "\n".join([*header, render(report), "", *verdict, ""])
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
