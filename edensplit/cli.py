"""The `edensplit` command: interpolate (split or --local), cloud, edge, demo, bench, serve-ray, download, doctor, ui.

Options fall back to the environment (CLOUD_SERVER_URL, EDGE_SERVER_URL, MODEL_PATH, EDEN_CONFIG,
DEVICE, ...). Errors a user can fix print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from edensplit.allocator import keep_freed_memory
from edensplit.errors import EdenError
from edensplit.model import precision
from edensplit.model.hub import RELEASED
from edensplit.version import __version__
from edensplit.wire import codecs


def _flag(parser: argparse.ArgumentParser | Any, name: str, **kwargs: Any) -> None:
    """Add --snake_name with a --dash-name alias (the user's scripts use underscores)."""
    dashed = name.replace("_", "-")
    names = [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])
    parser.add_argument(*names, **kwargs)


def _model_flags(p: argparse.ArgumentParser, config: tuple[str, ...] = ("--config", "--eden_config"),
                 where: str = "", title: str = "model (defaults from MODEL_PATH, EDEN_CONFIG, DEVICE)") -> None:
    g = p.add_argument_group(title)
    _flag(g, "model_path", help=f"the weights: a checkpoint file (eden.pt / .pth / .safetensors){where}, "
          "hf://owner/name[@revision]/file from the Hugging Face Hub (e.g. hf://zhZ524/EDEN/eden.pt), or tiny")
    g.add_argument(*config, dest="eden_config", help="eval_eden.yaml-style config")
    _flag(g, "device", help="cpu or cuda:N")
    _flag(g, "dtype", dest="eden_dtype", choices=precision.names(), help="compute dtype")
    _flag(g, "random_weights", dest="eden_random_weights", action="store_true", default=None,
          help="run with random weights when no checkpoint is given (tests the pipeline, not EDEN's quality)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edensplit", description="EDEN frame interpolation split across "
                                     "a cloud encoder and an edge sampler/decoder.")
    parser.add_argument("--version", action="version", version=f"edensplit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("interpolate", help="interpolate a video, a folder of numbered images or a frame pair")
    src = p.add_argument_group("input and output")
    _flag(src, "video_path", help="input video: writes interpolated.mp4 at 2, 4 or 8 times the frame rate")
    _flag(src, "input_dir", help="input folder of numbered images: writes interpolated/000000.png, ... (and a "
          "video with --fps)")
    src.add_argument("--frame_0_path", "--frame-0-path", "--frame0", dest="frame_0_path", help="first frame image")
    src.add_argument("--frame_1_path", "--frame-1-path", "--frame1", dest="frame_1_path", help="second frame image")
    src.add_argument("--output_dir", "--output-dir", "--interpolated_results_dir", dest="output_dir",
                     default="out", help="where interpolated.mp4 / interpolated/ / interpolated.png go (default: out)")
    _flag(src, "seed", type=int, default=0, help="the job's base seed S (default 0)")
    _flag(src, "multi", type=int, choices=[2, 4, 8],
          help="frames per input interval: 2 (default), 4 or 8, by recursive midpoints")
    _flag(src, "fps", help="video: the output rate instead of --multi (2, 4 or 8 times the input's, e.g. 60000/1001 "
          "or 59.94); image folder: also write a video at this rate")
    _flag(src, "no_scene_detect", action="store_true",
          help="interpolate every pair, even across a scene cut or between identical frames")
    _flag(src, "scene_threshold", type=float, default=None,
          help="cut score above which a pair is a scene cut and its earlier frame is repeated (default 0.5)")
    _flag(src, "container", choices=["mp4", "mkv", "mov"], default="mp4",
          help="video output container: interpolated.mp4 (default), .mkv or .mov")
    _flag(src, "codec", default="libx264", help="libx264 (default), libx264rgb or ffv1 (lossless)")
    _flag(src, "crf", type=int, default=18, help="libx264 quality, 0-51 (default 18)")
    _flag(src, "pix_fmt", help="output pixel format (default yuv420p for libx264, yuv444p at odd sizes; any the "
          "codec takes, e.g. yuv444p, yuv420p10le)")
    _flag(src, "save_frames", action="store_true", help="also write each generated frame as a PNG")
    _flag(src, "preview", action="store_true", help="also write preview.png: the first pairs' input and "
          "generated frames side by side")
    _flag(src, "no_progress", action="store_true", help="no progress bar or progress lines")
    _flag(src, "quiet", action="store_true", help="print nothing but errors")
    _flag(src, "no_resume", action="store_true",
          help="start over even if an interrupted run of the same job left its frames (resumed by default)")
    run = p.add_argument_group("where it runs")
    _flag(run, "local", action="store_true", help="run both stages in this process, no servers (the reference)")
    _servers_flags(run)
    _flag(run, "transport", choices=["http", "ws"], default="http", help="HTTP requests or WebSocket streaming")
    _flag(run, "flow", choices=["a", "b"], default="a",
          help="a: client relays cloud -> edge (default); b: the edge calls the cloud itself")
    _flag(run, "pairs", action="store_true",
          help="video: send pairs (each inner frame encoded and sent twice) instead of a frame-once session")
    _flag(run, "payload", choices=["binary", "json"], default="binary",
          help="binary fast path (default) or the JSON/base64 API")
    _flag(run, "wire_dtype", choices=codecs.names(), default=codecs.DEFAULT,
          help="enc_out dtype on the wire; float32 is exact")
    _flag(run, "compress", choices=["none", "zstd"], default="none",
          help="HTTP: zstd-compress binary bodies both ways (pays only on links slower than ~20 MB/s)")
    _flag(run, "retry_for", dest="edensplit_retry_for", type=float,
          help="seconds of outage (connection errors, 503, 504) a request rides out before the job fails "
               "(default EDENSPLIT_RETRY_FOR or 60)")
    _flag(run, "startup_wait", dest="edensplit_startup_wait", type=float,
          help="seconds to wait for a server that answers but is still loading its model before the job starts "
               "(default EDENSPLIT_STARTUP_WAIT or 300); one that never answers fails the job within 1.5 s")
    _flag(run, "retries", dest="edensplit_retries", type=int,
          help="at most this many retries per request (default EDENSPLIT_RETRIES or 100: --retry_for ends them first)")
    _flag(run, "shm", dest="edensplit_shm", action="store_true", default=None,
          help="binary: frames and encodings through shared memory, only handles over the sockets, when the "
               "servers run on this machine with ALLOW_SHM=1 (else as bytes; default EDENSPLIT_SHM)")
    _flag(run, "num_steps", type=int, default=2, help="sampler steps (2 = the reference grid)")
    _flag(run, "method", choices=["euler", "heun"], default="euler", help="sampler")
    _model_flags(p)

    for stage, port in (("cloud", 8000), ("edge", 8001)):
        s = sub.add_parser(stage, help=f"run the {stage} server (uvicorn edensplit.{stage}:app)")
        s.add_argument("--host", default="127.0.0.1",
                       help="bind address (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
        s.add_argument("--port", type=int, default=port, help=f"port (default {port})")
        _flag(s, "api_key", dest="edensplit_api_key",
              help="require Authorization: Bearer KEY on every route but /health* (default EDENSPLIT_API_KEY)")
        _flag(s, "ssl_certfile", help="serve HTTPS/WSS with this certificate (PEM)")
        _flag(s, "ssl_keyfile", help="the certificate's private key (PEM)")
        _flag(s, "timeout_graceful_shutdown", type=float, default=30.0,
              help="on SIGTERM, seconds to finish requests in flight before exiting (default 30)")
        _flag(s, "max_inflight", type=int, help="requests admitted at once; more get 503 (default 8)")
        _flag(s, "allow_shm", action="store_true", default=None,
              help="take and give encodings as shared-memory handles, for callers on this machine (default "
                   "ALLOW_SHM)")
        _flag(s, "max_batch", type=int, help="requests per model call with dynamic batching (default 1, the exact "
              "mode; GPU_BATCH on CUDA in bfloat16/float16)")
        _model_flags(s)

    d = sub.add_parser("demo", help="start both servers on loopback, interpolate a sample clip, stop them")
    _flag(d, "output_dir", default="out/demo", help="where the video and the sheet go (default out/demo)")
    _flag(d, "frames", type=int, default=12, help="frames in the sample clip (default 12)")
    b = sub.add_parser("bench", help="benchmark: transports x wire dtypes x flows against --local (compare), "
                       "stages and servers per size and precision (perf), bytes of the user's design vs frame-once "
                       "(bytes), the serving overhead per generated frame beside the floor (overhead), middle frames' "
                       "quality (quality)")
    _flag(b, "mode", choices=["compare", "perf", "bytes", "overhead", "quality"], default="compare",
          help="compare: transports x wire dtypes x flows against --local (default); perf: stage and system "
          "measurements per size and compute precision; bytes: the user's design vs frame-once float16/int8; "
          "overhead: with the stand-in model, each path x wire dtype x flow x size's serving overhead per "
          "generated frame, its steps, and the floor for the same bytes; quality: PSNR, SSIM and centroid error "
          "of middle frames vs the blend and the nearest frame (the tiny EDEN unless MODEL_PATH is set)")
    _flag(b, "size", default="240x428", help="HxW of the generated clip (compare, bytes; default 240x428)")
    _flag(b, "frames", type=int, default=6, help="input frames (default 6; overhead: per round)")
    _flag(b, "transports", help="compare, overhead: comma-separated, of http-json, http-binary, ws-json, ws-binary "
          "and (overhead) http-shm, ws-shm: binary through shared memory (default: all)")
    _flag(b, "dtypes", help="compare, overhead: wire dtypes, comma-separated (default float32,float16)")
    _flag(b, "flows", help="compare, overhead: comma-separated, of a-pairs, a-once, b-pairs, b-once (default: all)")
    _flag(b, "window", type=int, default=2, help="pairs in flight (default 2)")
    _flag(b, "output", help="also write the Markdown to this file")
    _flag(b, "json", dest="json_path", help="also write the figures as JSON to this file")
    _flag(b, "sizes", help="perf, overhead: HxW sizes, comma-separated (perf: default 256x448,480x854,1080x1920 on "
          "a GPU, 256x448 on a CPU; overhead: 480x854,1080x1920)")
    _flag(b, "precisions", help="perf: compute precisions (default float32,bfloat16 and, on a GPU, float16)")
    _flag(b, "batches", help="perf: edge batch sizes to try (default 1,2,4,8,16 on a GPU, 1,2 on a CPU)")
    _flag(b, "parts", default="stages,system", help="perf: stages, system, or both (default)")
    _flag(b, "designs", help="perf and bytes: frame-once designs besides the user's, as "
          "transport-payload:wire_dtype, payload binary, json or shm (binary through shared memory) (default "
          "ws-binary:float16,ws-binary:int8 for perf, "
          "http-binary:float16,http-binary:int8 for bytes)")
    _flag(b, "device", help="perf: cpu or cuda:N (default DEVICE, else cuda:0 when there is one)")
    _flag(b, "iters", type=int, default=3, help="perf: timed calls per stage figure, at least (default 3)")
    _flag(b, "min_seconds", type=float, default=0.5, help="perf: and this long in all, at least (default 0.5)")
    _flag(b, "batch_budget_s", type=float, default=30.0,
          help="perf: seconds for the larger batches of one size and precision (default 30)")
    _flag(b, "clock", choices=["wall", "cpu"], default="wall",
          help="perf, stages on a CPU: wall time, or this process's CPU time (on a machine shared with other "
          "work; with TORCH_THREADS=1); CUDA is always timed by the wall clock")
    _flag(b, "budget_s", type=float, help="perf: start no measurement after this many seconds (the stages none "
          "after 55%% of it); what did not start is listed as skipped (default: no limit); overhead: the rows' "
          "seconds, shared out as they run (default 480)")
    _flag(b, "edge_device", help="perf, system part: the edge server's device (default --device's), e.g. cuda:1 "
          "beside a cloud on cuda:0")
    _flag(b, "log_dir", help="where the servers' logs go (default a temporary folder)")
    _flag(b, "triplets", default="200,50", help="quality: held-out synthetic triplets at the training size and at "
          "twice it (default 200,50)")
    _flag(b, "real_triplets", type=int, default=24, help="quality: drop-frame triplets per real clip (default 24)")
    _serve_ray_parser(sub)
    _doctor_parser(sub)
    _ui_parser(sub)
    w = sub.add_parser("download", help="fetch weights from the Hugging Face Hub into its cache ahead of time")
    w.add_argument("uri", nargs="?", default=RELEASED,
                   help=f"hf://owner/name[@revision]/file (default {RELEASED}, the released EDEN)")
    return parser


def _servers_flags(p: argparse.ArgumentParser | Any) -> None:
    """Where the servers are and how to talk to them (interpolate's flags of the same names)."""
    _flag(p, "cloud_url", dest="cloud_server_url", help="default CLOUD_SERVER_URL or http://localhost:8000")
    _flag(p, "edge_url", dest="edge_server_url", help="default EDGE_SERVER_URL or http://localhost:8001")
    _flag(p, "api_key", dest="edensplit_api_key",
          help="bearer key the servers require (default EDENSPLIT_API_KEY; the variable keeps it out of `ps`)")
    _flag(p, "allow_insecure_key", dest="edensplit_allow_insecure_key", action="store_true", default=None,
          help="send the key over http:// or ws:// to a server off this machine (default: refused; "
               "EDENSPLIT_ALLOW_INSECURE_KEY=1)")
    _flag(p, "ca_cert", dest="edensplit_ca_cert",
          help="PEM CA bundle to verify https/wss servers (default EDENSPLIT_CA_CERT)")
    _flag(p, "timeout", dest="edensplit_timeout", type=float, help="seconds per request attempt (default 30)")


def _doctor_parser(sub: Any) -> None:
    d = sub.add_parser("doctor", help="check the cloud and the edge (reachable, versions, same model, transports, a "
                       "round trip, TLS and key, shared memory, GPUs): a table, exit 0 when all is well, 1 if not")
    _servers_flags(d)
    _flag(d, "flow", choices=["a", "b"], default="a", help="a: check the cloud and the edge (default); b: the edge "
          "only (it calls the cloud itself)")
    _flag(d, "wire_dtype", choices=codecs.names(), default=codecs.DEFAULT, help="enc_out dtype of the round trip")
    _flag(d, "size", default="256x448", help="HxW of the round trip's frames (default 256x448)")
    _flag(d, "json", action="store_true", help="print the checks as one JSON document")


def _ui_parser(sub: Any) -> None:
    u = sub.add_parser("ui", help="a web page to interpolate a clip: upload, progress, cancel, download (jobs on "
                       "the servers, or --local)")
    u.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1: this machine only; elsewhere set EDENSPLIT_API_KEY)")
    u.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    _flag(u, "local", action="store_true", help="run the jobs in this process, no servers")
    _servers_flags(u)
    _flag(u, "transport", choices=["http", "ws"], help="the jobs' transport (default http)")
    _flag(u, "flow", choices=["a", "b"], help="the jobs' flow (default a)")
    _model_flags(u, title="model, with --local (defaults from MODEL_PATH, EDEN_CONFIG, DEVICE)")


def _serve_ray_parser(sub: Any) -> None:
    r = sub.add_parser("serve-ray", help="serve the cloud (/cloud) and edge (/edge) APIs on Ray Serve, one HTTP "
                       "proxy (pip install -e '.[ray]')")
    r.add_argument("--port", type=int, help="the proxy's port (default: the config's http.port, else 8000)")
    r.add_argument("--host", help="the proxy's bind address (default: the config's http.host, else 127.0.0.1)")
    r.add_argument("--config", dest="ray_config", help="a ray.yaml: replicas, autoscaling, num_gpus, queues and "
                   "server settings per deployment (see configs/ray.yaml)")
    _flag(r, "address", help="join this Ray cluster ('auto': the one `ray start` made here) instead of starting a "
          "local one on loopback")
    _flag(r, "api_key", dest="edensplit_api_key",
          help="require Authorization: Bearer KEY on every route but /health* (default EDENSPLIT_API_KEY)")
    _flag(r, "max_inflight", type=int, help="requests each replica admits at once; more get 503 (default 8)")
    _model_flags(r, ("--eden_config", "--eden-config"), " (on every replica's node)",
                 "model (defaults from MODEL_PATH, EDEN_CONFIG, DEVICE; --config is the ray.yaml here)")


def cmd_demo(args: argparse.Namespace) -> int:
    from edensplit.demo import run_demo

    run_demo(args.output_dir, n_frames=args.frames)
    return 0


COMMANDS = {"interpolate": "edensplit.commands.interpolate:run", "cloud": "edensplit.commands.serve:serve",
            "edge": "edensplit.commands.serve:serve", "serve-ray": "edensplit.commands.serve:serve_ray",
            "bench": "edensplit.bench.entry:run_from_args", "demo": "edensplit.cli:cmd_demo",
            "download": "edensplit.commands.download:run", "doctor": "edensplit.commands.doctor:run",
            "ui": "edensplit.commands.ui:run"}


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command (its module imported only now: `edensplit --help` loads no torch)."""
    module, _, function = COMMANDS[args.command].partition(":")
    return getattr(importlib.import_module(module), function)(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # frames and encodings: buffers reused, not faulted in again for each request
    if args.command == "interpolate":
        from edensplit.tracing import setup_tracing

        setup_tracing("edensplit-client")  # only with OTEL_EXPORTER_OTLP_ENDPOINT set
    try:
        return dispatch(args)
    except EdenError as exc:
        print(f"edensplit {args.command}: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def entry() -> NoReturn:
    """The `edensplit` command's process: main's status as its exit status. A job that stopped early (Ctrl-C, a
    server that stayed down) may leave pairs in flight on daemon threads, some inside torch: the process then ends
    without tearing the interpreter down around them (which can abort in C++: "terminate called without an active
    exception"), its output flushed first."""
    code = main()
    if code != 0 and threading.active_count() > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
