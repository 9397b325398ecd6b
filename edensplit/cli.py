"""The `edensplit` command: interpolate (split or --local), cloud, edge, demo.

Options fall back to the environment (CLOUD_SERVER_URL, EDGE_SERVER_URL, MODEL_PATH, EDEN_CONFIG,
DEVICE, ...). Errors a user can fix print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from typing import Any

from edensplit.errors import EdenError
from edensplit.model import precision
from edensplit.settings import ClientSettings, ModelSettings, ServerSettings
from edensplit.version import __version__
from edensplit.wire import codecs


def _flag(parser: argparse.ArgumentParser | Any, name: str, **kwargs: Any) -> None:
    """Add --snake_name with a --dash-name alias (the user's scripts use underscores)."""
    dashed = name.replace("_", "-")
    names = [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])
    parser.add_argument(*names, **kwargs)


def _model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (defaults from MODEL_PATH, EDEN_CONFIG, DEVICE)")
    _flag(g, "model_path", help="checkpoint: eden.pt / .pth / .safetensors")
    g.add_argument("--config", "--eden_config", dest="eden_config", help="eval_eden.yaml-style config")
    _flag(g, "device", help="cpu or cuda:N")
    _flag(g, "dtype", dest="eden_dtype", choices=precision.names(), help="compute dtype")
    _flag(g, "random_weights", dest="eden_random_weights", action="store_true", default=None,
          help="run with random weights when no checkpoint is given (tests the pipeline, not EDEN's quality)")


def _overrides(args: argparse.Namespace, fields: Sequence[str]) -> dict[str, Any]:
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


MODEL_FIELDS = ("model_path", "eden_config", "device", "eden_dtype", "eden_random_weights")


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
    _flag(run, "cloud_url", dest="cloud_server_url", help="default CLOUD_SERVER_URL or http://localhost:8000")
    _flag(run, "edge_url", dest="edge_server_url", help="default EDGE_SERVER_URL or http://localhost:8001")
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
    _flag(run, "timeout", dest="edensplit_timeout", type=float, help="seconds per request attempt (default 30)")
    _flag(run, "retry_for", dest="edensplit_retry_for", type=float,
          help="seconds of outage (connection errors, 503, 504) a request rides out before the job fails "
               "(default EDENSPLIT_RETRY_FOR or 60)")
    _flag(run, "retries", dest="edensplit_retries", type=int,
          help="at most this many retries per request (default EDENSPLIT_RETRIES or 100: --retry_for ends them first)")
    _flag(run, "api_key", dest="edensplit_api_key",
          help="bearer key the servers require (default EDENSPLIT_API_KEY; the variable keeps it out of `ps`)")
    _flag(run, "ca_cert", dest="edensplit_ca_cert",
          help="PEM CA bundle to verify https/wss servers (default EDENSPLIT_CA_CERT)")
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
        _flag(s, "max_batch", type=int, help="requests per model call with dynamic batching (default 1, the exact "
              "mode; GPU_BATCH on CUDA in bfloat16/float16)")
        _model_flags(s)

    d = sub.add_parser("demo", help="start both servers on loopback, interpolate a sample clip, stop them")
    _flag(d, "output_dir", default="out/demo", help="where the video and the sheet go (default out/demo)")
    _flag(d, "frames", type=int, default=12, help="frames in the sample clip (default 12)")
    b = sub.add_parser("bench", help="benchmark: transports x wire dtypes x flows against --local (compare), "
                       "stages and servers per size and precision (perf), bytes of the user's design vs frame-once")
    _flag(b, "mode", choices=["compare", "perf", "bytes"], default="compare",
          help="compare: transports x wire dtypes x flows against --local (default); perf: stage and system "
          "measurements per size and compute precision; bytes: the user's design vs frame-once float16/int8")
    _flag(b, "size", default="240x428", help="HxW of the generated clip (compare, bytes; default 240x428)")
    _flag(b, "frames", type=int, default=6, help="input frames (default 6)")
    _flag(b, "transports", help="compare: comma-separated, of http-json, http-binary, ws-json, ws-binary "
          "(default: all)")
    _flag(b, "dtypes", help="compare: wire dtypes, comma-separated (default float32,float16)")
    _flag(b, "flows", help="compare: comma-separated, of a-pairs, a-once, b-pairs, b-once (default: all)")
    _flag(b, "window", type=int, default=2, help="pairs in flight (default 2)")
    _flag(b, "output", help="also write the Markdown to this file")
    _flag(b, "json", dest="json_path", help="also write the figures as JSON to this file")
    _flag(b, "sizes", help="perf: HxW sizes, comma-separated (default 256x448,480x854,1080x1920 on a GPU, "
          "256x448 on a CPU)")
    _flag(b, "precisions", help="perf: compute precisions (default float32,bfloat16 and, on a GPU, float16)")
    _flag(b, "batches", help="perf: edge batch sizes to try (default 1,2,4,8,16 on a GPU, 1,2 on a CPU)")
    _flag(b, "parts", default="stages,system", help="perf: stages, system, or both (default)")
    _flag(b, "designs", help="perf and bytes: frame-once designs besides the user's, as "
          "transport-payload:wire_dtype (default ws-binary:float16,ws-binary:int8 for perf, "
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
          "after 55%% of it); what did not start is listed as skipped (default: no limit)")
    _flag(b, "log_dir", help="where the servers' logs go (default a temporary folder)")
    _serve_ray_parser(sub)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    from edensplit.bench.entry import run_from_args

    return run_from_args(args)


CLIENT_FIELDS = ("cloud_server_url", "edge_server_url", "edensplit_timeout", "edensplit_retries",
                 "edensplit_retry_for", "edensplit_api_key", "edensplit_ca_cert")


def _say(message: str) -> None:
    print(f"edensplit interpolate: {message}", file=sys.stderr)


def _check_interpolate(args: argparse.Namespace) -> None:
    """Refuse a bad combination or a bad input before loading a model or calling a server; settle --multi
    (from --fps for a video) and --fps (a Fraction, for an image folder's video)."""
    from fractions import Fraction

    from edensplit.client.multiply import multiplier_for_rate
    from edensplit.video.images import list_images, read_png
    from edensplit.video.reading import probe_video

    pair = bool(args.frame_0_path or args.frame_1_path)
    if sum((bool(args.video_path), bool(args.input_dir), pair)) != 1:
        raise EdenError("give one input: --video_path, --input_dir, or both --frame_0_path and --frame_1_path")
    if pair and not (args.frame_0_path and args.frame_1_path):
        raise EdenError("a frame pair needs both --frame_0_path and --frame_1_path")
    if pair and (args.multi not in (None, 2) or args.fps):
        raise EdenError("a frame pair gives its one middle frame: --multi and --fps are for videos and image folders")
    if args.scene_threshold is not None and not args.scene_threshold > 0:
        raise EdenError(f"--scene_threshold must be positive, got {args.scene_threshold}")
    if args.video_path:
        info = probe_video(args.video_path)
        if args.fps:
            multi = multiplier_for_rate(info.rate, args.fps)
            if args.multi is not None and args.multi != multi:
                raise EdenError(f"--fps {args.fps} is {multi} times the input's {info.rate} fps, but --multi "
                                f"{args.multi} was given")
            args.multi = multi
    elif args.input_dir:
        if len(list_images(args.input_dir)) < 2:
            raise EdenError(f"{args.input_dir} has fewer than 2 numbered images; interpolation needs at least 2")
        if args.fps:
            try:
                args.fps = Fraction(args.fps)
            except (ValueError, ZeroDivisionError):
                raise EdenError(f"--fps {args.fps!r} is not a frame rate (e.g. 60 or 60000/1001)") from None
            if args.fps <= 0:
                raise EdenError(f"--fps must be positive, got {args.fps}")
    else:
        for path in (args.frame_0_path, args.frame_1_path):
            read_png(path)
    args.multi = args.multi or 2


def _output_of(args: argparse.Namespace) -> Any:
    """The path the job's state is kept next to."""
    from pathlib import Path

    if args.video_path:
        return Path(args.output_dir) / f"interpolated.{args.container}"
    return Path(args.output_dir) / ("interpolated" if args.input_dir else "interpolated.png")


def cmd_interpolate(args: argparse.Namespace) -> int:
    """Run one job; Ctrl-C says in one line how to resume (status 130), and a failed video or folder job how many
    of its frames are kept for the rerun."""
    from edensplit.client.resume import saved_frames, state_dir

    if args.quiet:
        logging.getLogger().setLevel(logging.ERROR)
    _check_interpolate(args)
    output = _output_of(args)
    resumable = bool(args.video_path or args.input_dir)
    backend: Any = None
    try:
        backend, where, fingerprint = _open_backend(args)
        return _run_job(args, backend, where, fingerprint)
    except KeyboardInterrupt:
        if resumable:
            done = saved_frames(output)
            _say(f"interrupted with {done} generated frames saved in {state_dir(output)}; run the same command "
                 "again to resume")
        else:
            _say("interrupted; run the same command again")
        return 130
    except EdenError as exc:
        done = saved_frames(output) if resumable else 0
        if done:
            raise EdenError(f"{exc.message} ({done} generated frames are saved: run the same command again to resume)",
                            code=exc.code) from None
        raise
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()


def _open_backend(args: argparse.Namespace) -> tuple[Any, str, dict[str, Any]]:
    """The backend the options ask for, where it runs (for the summary line), and the options that change the
    generated frames (a resumed job must have the same)."""
    sampler = {"num_steps": args.num_steps, "method": args.method}
    if args.local:
        from edensplit.client.jobs import LocalBackend
        from edensplit.model.eden import ALL_STAGES
        from edensplit.model.loading import load_model_for
        from edensplit.model.pipeline import LocalPipeline
        from edensplit.model.sampler import Sampler

        settings = ModelSettings(**_overrides(args, MODEL_FIELDS))
        model = load_model_for(ALL_STAGES, settings)
        backend: Any = LocalBackend(LocalPipeline(model, Sampler(args.num_steps, args.method)))
        where = f"locally ({model.weights_source} on {model.device})"
        return backend, where, {**sampler, "model": str(model.weights_source), "dtype": settings.eden_dtype}
    from edensplit.client.flows import open_backend
    from edensplit.wire.options import Options

    cs = ClientSettings(**_overrides(args, CLIENT_FIELDS))
    frame_once = bool(args.video_path or args.input_dir) and not args.pairs
    backend = open_backend(cloud_url=cs.cloud_server_url, edge_url=cs.edge_server_url, transport=args.transport,
                           flow=args.flow, frame_once=frame_once, payload=args.payload, wire_dtype=args.wire_dtype,
                           options=Options(**sampler), timeout=cs.edensplit_timeout, retries=cs.edensplit_retries,
                           retry_for=cs.edensplit_retry_for,
                           compress=None if args.compress == "none" else args.compress,
                           api_key=cs.api_key(), ca_cert=cs.edensplit_ca_cert)
    mode = "frame-once session" if frame_once else "pairs"
    where = (f"{args.transport.upper()} {args.payload}, flow {args.flow.upper()}, {mode}, cloud "
             f"{cs.cloud_server_url}, edge {cs.edge_server_url}")
    return backend, where, {**sampler, "model": "servers", "wire_dtype": args.wire_dtype}


def _run_job(args: argparse.Namespace, backend: Any, where: str, fingerprint: dict[str, Any]) -> int:
    from edensplit.client.jobs import interpolate_folder, interpolate_pair_files, interpolate_video
    from edensplit.client.progress import stage_summary
    from edensplit.client.scenes import DEFAULT_THRESHOLD

    say = (lambda message: None) if args.quiet else _say
    common: dict[str, Any] = dict(
        seed=args.seed, multi=args.multi, codec=args.codec, crf=args.crf, pix_fmt=args.pix_fmt,
        save_frames=args.save_frames, progress=not (args.no_progress or args.quiet), resume=not args.no_resume,
        fingerprint=fingerprint, say=say, scene_detect=not args.no_scene_detect, preview=args.preview,
        scene_threshold=DEFAULT_THRESHOLD if args.scene_threshold is None else args.scene_threshold)
    if args.video_path:
        result = interpolate_video(backend, args.video_path, args.output_dir, filename=_output_of(args).name,
                                   **common)
    elif args.input_dir:
        result = interpolate_folder(backend, args.input_dir, args.output_dir, fps=args.fps or None,
                                    video_name=f"interpolated.{args.container}", **common)
    else:
        result = interpolate_pair_files(backend, args.frame_0_path, args.frame_1_path, args.output_dir,
                                        seed=args.seed)
        if not args.quiet:
            print(f"wrote {result.output} in {result.seconds:.2f} s, {where}")
        return 0
    if args.quiet:
        return 0
    resumed = f", resumed after {result.resumed_from} generated frames" if result.resumed_from else ""
    rate = f" at {result.rate} fps" if result.rate is not None else ""
    also = f" and {result.video}" if result.video else ""
    print(f"wrote {result.output}{also}: {result.frames_in} frames in, {result.frames_out} out{rate} "
          f"({result.multi}x), {result.seconds:.1f} s{resumed}, {where}")
    if not args.no_scene_detect:
        print(f"scene cuts: {result.cuts}, still pairs: {result.stills} (earlier frame repeated, nothing sent); "
              f"midpoints interpolated: {result.sent_pairs}")
    if result.preview:
        print(f"wrote {result.preview}")
    _say(stage_summary(result.timings))
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    import uvicorn

    from edensplit.model.eden import ENCODE, INTERPOLATE
    from edensplit.model.loading import load_model_for
    from edensplit.servers.logs import configure_logging, uvicorn_log_config

    settings = ServerSettings(**_overrides(args, (*MODEL_FIELDS, "max_inflight", "max_batch", "edensplit_api_key")))
    configure_logging(settings.log_format, own_process=True)  # LOG_FORMAT=json: every line, from the first one
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise EdenError("TLS needs both --ssl_certfile and --ssl_keyfile")
    if not is_loopback(args.host) and not settings.edensplit_api_key:
        logging.getLogger("edensplit.server").warning(
            "%s server: binding %s with no API key: anyone who can reach this address can use it (set "
            "EDENSPLIT_API_KEY or --api_key, and TLS with --ssl_certfile/--ssl_keyfile)", args.command, args.host)
    if args.command == "cloud":
        from edensplit.servers.cloud.service import create_cloud_app as factory

        stage = ENCODE
    else:
        from edensplit.servers.edge.service import create_edge_app as factory

        stage = INTERPOLATE
    model = load_model_for({stage}, settings)  # fail here, with a one-line message, not inside uvicorn
    # permessage-deflate off: on float tensors it costs far more CPU than it saves (docs/protocol.md)
    uvicorn.run(factory(settings, model), host=args.host, port=args.port, ws_per_message_deflate=False,
                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                timeout_graceful_shutdown=args.timeout_graceful_shutdown,
                log_config=uvicorn_log_config(settings.log_format))  # JSON lines under LOG_FORMAT=json
    return 0


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only (a name other than localhost counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    g = r.add_argument_group("model (defaults from MODEL_PATH, EDEN_CONFIG, DEVICE; --config is the ray.yaml here)")
    _flag(g, "model_path", help="checkpoint: eden.pt / .pth / .safetensors (on every replica's node)")
    _flag(g, "eden_config", help="eval_eden.yaml-style config")
    _flag(g, "device", help="cpu or cuda:N (default: each replica's, cuda:0 where it has a GPU)")
    _flag(g, "dtype", dest="eden_dtype", choices=precision.names(), help="compute dtype")
    _flag(g, "random_weights", dest="eden_random_weights", action="store_true", default=None,
          help="run with random weights when no checkpoint is given (tests the pipeline, not EDEN's quality)")


def cmd_serve_ray(args: argparse.Namespace) -> int:
    """Start (or join) Ray, deploy the Encoder under /cloud and the Interpolator under /edge, wait for Ctrl-C."""
    from edensplit.serve_ray.cluster import deploy, serve_until_stopped
    from edensplit.serve_ray.config import load_config

    config = load_config(args.ray_config)
    if args.port is not None:
        config.http.port = args.port
    if args.host is not None:
        config.http.host = args.host
    if args.address is not None:
        config.ray.address = args.address
    base = ServerSettings(**_overrides(args, (*MODEL_FIELDS, "max_inflight", "edensplit_api_key")))
    served = deploy(config, base.model_dump(exclude_unset=True, mode="json"))
    where = f"Ray session {served.session_dir}" if served.session_dir else "Ray"
    print(f"serving the cloud at {served.cloud_url} and the edge at {served.edge_url} (ready in {served.seconds:.1f} "
          f"s; {where}); Ctrl-C stops", flush=True)
    return serve_until_stopped(served, say=lambda line: print(line, flush=True))


def cmd_demo(args: argparse.Namespace) -> int:
    from edensplit.demo import run_demo

    run_demo(args.output_dir, n_frames=args.frames)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "interpolate":
        from edensplit.tracing import setup_tracing

        setup_tracing("edensplit-client")  # only with OTEL_EXPORTER_OTLP_ENDPOINT set
    try:
        return {"interpolate": cmd_interpolate, "cloud": cmd_server, "edge": cmd_server, "demo": cmd_demo,
                "bench": cmd_bench, "serve-ray": cmd_serve_ray}[args.command](args)
    except EdenError as exc:
        print(f"edensplit {args.command}: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
