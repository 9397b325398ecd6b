"""What HTTP body compression really does to edensplit's payloads: sizes, CPU time, and when it pays.

Builds the full-size EDEN encoder (the released config) with random weights, encodes two consecutive
frames of the synthetic sample clip at the given size, packs the enc_out blob in each wire dtype, and
measures every codec of `edensplit.wire.compression` on it, on the raw-frames container and on the two
frames as PNG (the multipart request) for scale. Also measured: `ws-deflate`, WebSocket
permessage-deflate as the `websockets` library configures it by default (raw deflate, 4 KiB window,
memLevel 5, zlib's default level 6), which is not an HTTP codec.

    python benchmarks/compression.py [--size 480x854] [--repeats 1] [--output benchmarks/compression-results.md]

Prints a markdown report (machine, table, break-even link speeds, verdict); `--output` also writes it.
MB are 10^6 bytes; times are single-threaded wall clock, best of `--repeats`. The break-even link speed
of a codec is the speed at which the time it saves on the wire, (raw - compressed) / speed, equals its
compress + decompress time: on slower links it pays, on faster ones it costs (no overlap of compression
with sending is assumed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import lz4
import numpy as np
import torch
import zstandard

from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig
from edensplit.model.stages import encode_frames, frame_difference
from edensplit.video.reading import read_frames
from edensplit.video.sample import make_sample_clip
from edensplit.wire import codecs
from edensplit.wire.blob import pack_encoding
from edensplit.wire.compression import CompressionResult, best_time, measure
from edensplit.wire.frames import pack_frames
from edensplit.wire.images import encode_png

CODEC_SPECS: tuple[tuple[str, int | None], ...] = (
    ("identity", None), ("gzip", 1), ("gzip", 6), ("deflate", 1), ("deflate", 6), ("zstd", 1), ("zstd", 3),
    ("lz4", 0),
)
WS_DEFLATE = "ws-deflate"
WS_LEVEL, WS_WBITS, WS_MEMLEVEL = 6, 12, 5  # websockets' ServerPerMessageDeflateFactory defaults
LINKS_MB_S = ((12.5, "100 Mbit/s"), (125.0, "1 Gbit/s"), (1250.0, "10 Gbit/s"))
PLAN_CLAIM = (0.50, 0.70)  # "gzip can cut 50-70%"
PLANES = "enc_out byte planes*"
REFERENCE_LINK = (125.0, "1 Gbit/s")  # the link the on/off verdict is stated for
PLANE_SPECS: tuple[tuple[str, int | None], ...] = (("gzip", 1), ("zstd", 1), ("lz4", 0))


@dataclass(frozen=True)
class Row:
    payload: str
    dtype: str
    result: CompressionResult

    @property
    def label(self) -> str:
        r = self.result
        return r.codec if r.level is None or r.codec == "lz4" else f"{r.codec}-{r.level}"

    @property
    def break_even_mb_s(self) -> float | None:
        """Link speed (MB/s) below which this codec saves time; None when it saves no bytes."""
        r = self.result
        saved = r.raw_bytes - r.compressed_bytes
        if r.codec == "identity" or saved <= 0:
            return None
        return saved / 1e6 / (r.compress_s + r.decompress_s)

    def total_s(self, link_mb_s: float) -> float:
        """Compress, send at `link_mb_s`, decompress, one after the other."""
        r = self.result
        return r.compress_s + r.compressed_bytes / 1e6 / link_mb_s + r.decompress_s


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH, e.g. 480x854, got {text!r}")
    return int(match[1]), int(match[2])


def sample_pair(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Two consecutive frames of the synthetic sample clip (ffv1 .mkv, so decoded losslessly)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = make_sample_clip(Path(tmp) / "clip.mkv", n_frames=2, width=width, height=height)
        frames = list(read_frames(path))
    return frames[0], frames[1]


def measure_ws_deflate(data: bytes, repeats: int) -> CompressionResult:
    """permessage-deflate (RFC 7692) of one message with websockets' default settings, best of `repeats`."""

    def squeeze() -> bytes:
        c = zlib.compressobj(WS_LEVEL, zlib.DEFLATED, -WS_WBITS, WS_MEMLEVEL)
        return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]  # RFC 7692 drops the 00 00 ff ff tail

    packed, compress_s = best_time(squeeze, repeats)
    restored, decompress_s = best_time(lambda: zlib.decompressobj(-WS_WBITS).decompress(packed + b"\x00\x00\xff\xff"),
                                   repeats)
    if restored != data:
        raise AssertionError("ws-deflate did not round-trip")
    return CompressionResult(WS_DEFLATE, WS_LEVEL, len(data), len(packed), compress_s, decompress_s)


def measure_byte_planes(cond: torch.Tensor, repeats: int) -> list[CompressionResult]:
    """The hypothetical: the cond tensors' bytes regrouped by position in the value (all lowest bytes, then
    the next, ...), as blosc's shuffle filter does, then compressed. The regrouping (numpy, so far slower
    than blosc's SIMD shuffle) and its inverse are timed in."""
    size = cond.element_size()
    word = np.dtype(f"<u{size}")
    raw = cond.contiguous().view(torch.uint8).numpy().reshape(-1, size)
    planes, split_s = best_time(lambda: np.ascontiguousarray(raw.T).tobytes(), repeats)
    back = np.frombuffer(planes, np.uint8).reshape(size, -1)

    def join() -> bytes:
        values = back[0].astype(word)
        for i in range(1, size):
            values |= back[i].astype(word) << word.type(8 * i)
        return values.tobytes()

    joined, join_s = best_time(join, repeats)
    if joined != raw.tobytes():
        raise AssertionError("byte planes did not round-trip")
    return [replace(r, compress_s=r.compress_s + split_s, decompress_s=r.decompress_s + join_s)
            for r in measure(planes, PLANE_SPECS, repeats=repeats)]


def payloads(height: int, width: int, model_path: Path | None, repeats: int
             ) -> tuple[list[tuple[str, str, bytes]], list[Row], dict[str, str]]:
    """(payload, dtype, bytes) to measure, the byte-plane rows, and facts about how they were made."""
    frame0, frame1 = sample_pair(height, width)
    config = EdenConfig()
    model = load_model(model_path, config, stages={"encode"}, allow_random=model_path is None)
    pair = np.stack([frame0, frame1])
    encode_frames(model, pair)  # warm-up: the first call pays for allocations and kernel selection
    encode_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        enc = encode_frames(model, pair)
        encode_s = min(encode_s, time.perf_counter() - start)
    difference = float(frame_difference(frame0, frame1)[0])
    items = [("enc_out", dtype, pack_encoding(enc, difference, dtype)) for dtype in codecs.names()]
    items.append(("frames container", "uint8", pack_frames({"frame0": frame0, "frame1": frame1})))
    items.append(("2 PNGs (level 1)", "uint8", encode_png(frame0) + encode_png(frame1)))
    planes = [Row(PLANES, name, r) for name in codecs.names()
              for r in measure_byte_planes(torch.cat([enc.cond_dit, enc.cond_dec]).to(codecs.get(name).dtype), repeats)]
    ph, pw = enc.geometry.grid
    weights = "random weights" if model_path is None else "trained weights"
    facts = {"model": f"full-size EDEN encoder (hidden_dim {config.model_args.hidden_dim}, patch "
                      f"{config.model_args.patch_size}), {weights} ({model.weights_source})",
             "input": f"frames 0 and 1 of edensplit.video.sample.make_sample_clip at {height}x{width} (HxW), "
                      f"token grid {ph}x{pw}, difference {difference:.4f}",
             "encode_s": f"{encode_s:.6f}"}
    return items, planes, facts


def machine() -> dict[str, str]:
    cpu = platform.processor() or "(platform.processor() is empty)"
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        if names:
            cpu += f"; /proc/cpuinfo: {names[0]}"
    except OSError:
        pass
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "processor": f"{cpu} ({platform.machine()})",
            "cores": f"{os.cpu_count()} (torch threads {torch.get_num_threads()}; codecs run single-threaded)",
            "software": f"Python {platform.python_version()}, torch {torch.__version__}, zlib "
                        f"{zlib.ZLIB_RUNTIME_VERSION}, zstandard {zstandard.__version__} (libzstd "
                        f"{zstandard.ZSTD_VERSION[0]}.{zstandard.ZSTD_VERSION[1]}.{zstandard.ZSTD_VERSION[2]}), "
                        f"lz4 {lz4.__version__} (liblz4 {lz4.library_version_string()})",
            "os": platform.platform()}


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}"


def _speed(r: CompressionResult, x: float) -> str:
    return "—" if r.codec == "identity" or x == float("inf") else f"{x:,.0f}"


def table(rows: Sequence[Row]) -> list[str]:
    out = ["| payload | dtype | codec | raw MB | compressed MB | saved % | compress MB/s | decompress MB/s "
           "| break-even link MB/s |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        r, even = row.result, row.break_even_mb_s
        out.append(f"| {row.payload} | {row.dtype} | {row.label} | {_mb(r.raw_bytes)} | {_mb(r.compressed_bytes)} "
                   f"| {100 * r.saved:.1f} | {_speed(r, r.compress_mb_s)} | {_speed(r, r.decompress_mb_s)} "
                   f"| {'—' if even is None else f'{even:,.1f}'} |")
    return out


def best_per_link(rows: Sequence[Row]) -> list[str]:
    """For each enc_out dtype and link: the fastest way to move one pair's blob, and how long it takes."""
    head = " | ".join(f"{name} ({speed:g} MB/s)" for speed, name in LINKS_MB_S)
    out = [f"| enc_out dtype | {head} |", "|---|" + "---|" * len(LINKS_MB_S)]
    for dtype in codecs.names():
        group = [r for r in rows if r.payload == "enc_out" and r.dtype == dtype]
        plain = next(r for r in group if r.result.codec == "identity")
        cells = []
        for speed, _ in LINKS_MB_S:
            best = min(group, key=lambda r, s=speed: r.total_s(s))
            cell = f"{best.label}: {best.total_s(speed) * 1e3:,.0f} ms"
            if best is not plain:
                cell += f" (identity {plain.total_s(speed) * 1e3:,.0f} ms)"
            cells.append(cell)
        out.append(f"| {dtype} | " + " | ".join(cells) + " |")
    return out


def verdict(rows: Sequence[Row], encode_s: float) -> str:
    """One paragraph, from the numbers."""
    enc = [r for r in rows if r.payload == "enc_out"]
    by = {(r.dtype, r.label): r for r in rows if r.payload == "enc_out"}
    lo, hi = PLAN_CLAIM
    top = max((r for r in enc if r.result.codec != "identity"), key=lambda r: r.result.saved)
    s = top.result.saved
    claim = (f"well short of the {lo:.0%}–{hi:.0%} the plan expected" if s < lo
             else f"within the {lo:.0%}–{hi:.0%} the plan expected" if s <= hi else "more than the plan expected")
    parts = [f"On the enc_out blob the best any codec removes is {s:.1%} ({top.label} on {top.dtype}), {claim}: "
             "the tokens are LayerNorm outputs, roughly unit normal, whose mantissa bits are close to random; only "
             "the sign and exponent bits repeat (more of them in bfloat16's high byte, hence its larger saving)."]
    ref_speed, ref_name = REFERENCE_LINK
    fastest = {}
    for dtype in codecs.names():
        group = [r for r in enc if r.dtype == dtype and r.break_even_mb_s is not None]
        fastest[dtype] = max(group, key=lambda r: r.break_even_mb_s or 0.0) if group else None
    pays = [d for d, r in fastest.items() if r and (r.break_even_mb_s or 0) > ref_speed]
    desc = "; ".join(f"{d}: {r.label}, {r.result.saved:.1%} saved, pays below {r.break_even_mb_s:,.0f} MB/s "
                     f"({r.break_even_mb_s * 8:,.0f} Mbit/s)" for d, r in fastest.items() if r)
    parts.append(f"The codec that pays on the fastest links, per dtype — {desc}.")
    off = [d for d in codecs.names() if d not in pays]
    if off:
        parts.append(f"So on a {ref_name} link or faster no codec pays for {', '.join(off)}: HTTP Content-Encoding "
                     "should be identity (off) by default for the enc_out blob, with "
                     + _per_dtype({d: fastest[d].label for d in off if fastest[d]}) + " as an opt-in for slower links.")
    if pays:
        parts.append(f"On a {ref_name} link compression does pay for {', '.join(pays)} ("
                     + ", ".join(f"{fastest[d].label}" for d in pays) + ").")
    gz = by.get(("float32", "gzip-1"))
    if gz:
        parts.append(f"gzip-1 (what the plan proposed) needs {gz.result.compress_s * 1e3:,.0f} ms to compress one "
                     f"float32 pair here, {gz.result.compress_s / encode_s:.1f}x the encoder's own "
                     f"{encode_s * 1e3:,.0f} ms, and pays only below {gz.break_even_mb_s or 0:,.1f} MB/s.")
    plain32, half = by[("float32", "identity")].result, by[("float16", "identity")].result
    cast_saved = 1 - half.compressed_bytes / plain32.raw_bytes
    best32 = max((r for r in enc if r.dtype == "float32" and r.result.codec != "identity"),
                 key=lambda r: r.result.saved)
    parts.append(f"Sending float16 instead of float32 removes {cast_saved:.0%} of the bytes for the cost of a cast, "
                 + ("more than" if cast_saved > best32.result.saved else "less than")
                 + f" the best codec does to float32 ({best32.label}, {best32.result.saved:.1%}).")
    for codec, hi_level, low_level in (("gzip", 6, 1), ("zstd", 3, 1)):
        pairs = [(by[(d, f"{codec}-{low_level}")], by[(d, f"{codec}-{hi_level}")]) for d in codecs.names()
                 if (d, f"{codec}-{low_level}") in by and (d, f"{codec}-{hi_level}") in by]
        if pairs:
            gain = [100 * (h.result.saved - low.result.saved) for low, h in pairs]
            cost = [h.result.compress_s / low.result.compress_s for low, h in pairs]
            parts.append(f"{codec} level {hi_level} changes the saving by {min(gain):+.1f} to {max(gain):+.1f} "
                         f"points against level {low_level} at {min(cost):.1f}–{max(cost):.1f}x the compress time.")
    ws = [r for r in enc if r.result.codec == WS_DEFLATE]
    if ws:
        worst = max(r.break_even_mb_s or 0 for r in ws)
        parts.append("WebSocket permessage-deflate with websockets' defaults saves "
                     + ", ".join(f"{r.result.saved:.1%} of {r.dtype}" for r in ws)
                     + f" and pays only below {worst:,.1f} MB/s"
                     + (", so it should be off for the enc_out messages." if worst < ref_speed else "."))
    planes = {(r.dtype, r.label): r for r in rows if r.payload == PLANES}
    pz = [(planes[(d, "zstd-1")], by[(d, "zstd-1")]) for d in codecs.names() if (d, "zstd-1") in planes]
    if pz:
        parts.append("Grouping the tensors' bytes by position before zstd-1 (a byte-plane shuffle; hypothetical, "
                     "numpy's regrouping timed in) would remove " + ", ".join(
                         f"{p.result.saved:.0%} of {p.dtype} (plain zstd-1: {z.result.saved:.0%})" for p, z in pz)
                     + ", with break-even links of " + ", ".join(
                         f"{p.break_even_mb_s or 0:,.0f} MB/s ({z.break_even_mb_s or 0:,.0f} plain)" for p, z in pz)
                     + (": the one change that would make compressing enc_out worth having."
                        if all((p.break_even_mb_s or 0) > (z.break_even_mb_s or 0) for p, z in pz)
                        else ": more bytes saved, but the numpy regrouping eats much of the time gained, so it "
                             "needs a fast (SIMD) shuffle to be worth having."))
    frames = {r.label: r for r in rows if r.payload == "frames container"}
    if "zstd-1" in frames and "gzip-1" in frames:
        parts.append(f"The raw frames container, by contrast, shrinks by {frames['zstd-1'].result.saved:.0%} with "
                     f"zstd-1 and {frames['gzip-1'].result.saved:.0%} with gzip-1 (zstd-1 pays below "
                     f"{frames['zstd-1'].break_even_mb_s or 0:,.0f} MB/s), but these are synthetic gradient frames, "
                     "far smoother than camera video.")
    parts.append("The encoder here has random weights; a trained one also ends in LayerNorm, so the float "
                 "statistics, and this verdict, should hold — rerun with --model_path to check.")
    return " ".join(parts)


def _per_dtype(labels: dict[str, str]) -> str:
    """'zstd-1 for every dtype' when they agree, else 'a for float32, b for float16'."""
    if len(set(labels.values())) == 1 and len(labels) == len(codecs.names()):
        return f"{next(iter(labels.values()))} for every dtype"
    return ", ".join(f"{label} for {dtype}" for dtype, label in labels.items())


def report(height: int, width: int, repeats: int, model_path: Path | None = None) -> str:
    items, planes, facts = payloads(height, width, model_path, repeats)
    encode_s = float(facts.pop("encode_s"))
    facts["encode"] = (f"{encode_s * 1e3:.0f} ms for the pair after a warm-up (float32, CPU, torch threads "
                       f"{torch.get_num_threads()})")
    rows: list[Row] = []
    for payload, dtype, data in items:
        rows += [Row(payload, dtype, r) for r in measure(data, CODEC_SPECS, repeats=repeats)]
        rows.append(Row(payload, dtype, measure_ws_deflate(data, repeats)))
    rows += planes
    command = f"python benchmarks/compression.py --size {height}x{width} --repeats {repeats}"
    if model_path is not None:
        command += f" --model_path {model_path}"
    lines = ["# Compression of edensplit payloads", "", f"Generated by `{command}`; do not edit by hand.", ""]
    lines += [f"- **{key}**: {value}" for key, value in {**machine(), **facts}.items()]
    lines += ["", "MB = 10^6 bytes. Times: single-threaded wall clock, best of the repeats. Codecs are "
              "`edensplit.wire.compression` at the level shown; `ws-deflate` is WebSocket permessage-deflate "
              "with websockets' defaults (raw deflate, 4 KiB window, memLevel 5, level 6). Break-even link: the "
              "speed at which compress + decompress time equals the transfer time saved; compression pays only "
              "on slower links. *Byte planes: a hypothetical, not a wire format: the cond_dit and cond_dec "
              "tensors (the blob without its header and stats) with their bytes grouped by position in the "
              "value, as blosc's shuffle filter does; the regrouping and its inverse (numpy, far slower than a SIMD "
              "shuffle) are in the times.", ""]
    lines += table(rows)
    lines += ["", "Fastest way to move one pair's enc_out (compress + send + decompress, in series):", ""]
    lines += best_per_link(rows)
    lines += ["", "**Verdict.** " + verdict(rows, encode_s), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=(480, 854), help="HEIGHTxWIDTH (default 480x854)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs per measurement")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    parser.add_argument("--model_path", type=Path, help="a checkpoint to encode with (default: random weights)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    text = report(*args.size, args.repeats, args.model_path)
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
