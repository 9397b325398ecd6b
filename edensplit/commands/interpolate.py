"""`edensplit interpolate`: check the input and options, open the backend (the servers, or --local), run the job
and say what it did. Ctrl-C says in one line how to resume (status 130)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from edensplit.commands.options import CLIENT_FIELDS, MODEL_FIELDS, overrides
from edensplit.errors import EdenError
from edensplit.settings import ClientSettings, ModelSettings


def say(message: str) -> None:
    print(f"edensplit interpolate: {message}", file=sys.stderr)


def check(args: argparse.Namespace) -> None:
    """Refuse a bad combination or a bad input before loading a model or calling a server; settle --multi
    (from --fps for a video) and --fps (a Fraction, for an image folder's video)."""
    from fractions import Fraction

    from edensplit.client.rates import multiplier_for_rate
    from edensplit.video.images import check_images, list_images, read_png
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
        images = list_images(args.input_dir)
        if len(images) < 2:
            raise EdenError(f"{args.input_dir} has fewer than 2 numbered images; interpolation needs at least 2")
        check_images(images)  # an image in another format (EPS, ICO, ...) is refused before any is decoded
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


def output_of(args: argparse.Namespace) -> Any:
    """The path the job's state is kept next to."""
    from pathlib import Path

    if args.video_path:
        return Path(args.output_dir) / f"interpolated.{args.container}"
    return Path(args.output_dir) / ("interpolated" if args.input_dir else "interpolated.png")


def run(args: argparse.Namespace) -> int:
    """Run one job; Ctrl-C says in one line how to resume (status 130), and a failed video or folder job how many
    of its frames are kept for the rerun."""
    from edensplit.client.resume import check_state, saved_frames, state_dir

    if args.quiet:
        logging.getLogger().setLevel(logging.ERROR)
    check(args)
    output = output_of(args)
    resumable = bool(args.video_path or args.input_dir)
    if resumable:
        check_state(output)  # a state path that is not this user's private folder: refused before any work
    backend: Any = None
    try:
        backend, where, fingerprint = open_backend_for(args)
        return run_job(args, backend, where, fingerprint)
    except KeyboardInterrupt:
        if resumable:
            done = saved_frames(output)
            say(f"interrupted with {done} generated frames saved in {state_dir(output)}; run the same command "
                 "again to resume")
        else:
            say("interrupted; run the same command again")
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


def open_backend_for(args: argparse.Namespace) -> tuple[Any, str, dict[str, Any]]:
    """The backend the options ask for, where it runs (for the summary line), and the options that change the
    generated frames (a resumed job must have the same)."""
    sampler = {"num_steps": args.num_steps, "method": args.method}
    if args.local:
        from edensplit.client.backends import LocalBackend
        from edensplit.model.eden import ALL_STAGES
        from edensplit.model.loading import for_trying_out, load_model_for
        from edensplit.model.pipeline import LocalPipeline
        from edensplit.model.sampler import Sampler

        settings = for_trying_out(ModelSettings(**overrides(args, MODEL_FIELDS)), None if args.quiet else say)
        model = load_model_for(ALL_STAGES, settings)
        backend: Any = LocalBackend(LocalPipeline(model, Sampler(args.num_steps, args.method)))
        where = f"locally ({model.weights_source} on {model.device})"
        return backend, where, {**sampler, "model": str(model.weights_source), "dtype": settings.eden_dtype}
    cs = ClientSettings(**overrides(args, CLIENT_FIELDS))
    preflight(args, cs)  # before the client's own imports: a server that never answered fails the job at once
    from edensplit.client.flows import open_backend
    from edensplit.wire.options import Options

    frame_once = bool(args.video_path or args.input_dir) and not args.pairs
    backend = open_backend(cloud_url=cs.cloud_server_url, edge_url=cs.edge_server_url, transport=args.transport,
                           flow=args.flow, frame_once=frame_once, payload=args.payload, wire_dtype=args.wire_dtype,
                           options=Options(**sampler), timeout=cs.edensplit_timeout, retries=cs.edensplit_retries,
                           retry_for=cs.edensplit_retry_for,
                           compress=None if args.compress == "none" else args.compress,
                           api_key=cs.api_key(), ca_cert=cs.edensplit_ca_cert,
                           allow_insecure_key=cs.edensplit_allow_insecure_key, shm=cs.edensplit_shm)
    mode = "frame-once session" if frame_once else "pairs"
    if any(getattr(service, "shm", False) for service in backend.services.values()):
        mode += ", shared memory"
    where = (f"{args.transport.upper()} {args.payload}, flow {args.flow.upper()}, {mode}, cloud "
             f"{cs.cloud_server_url}, edge {cs.edge_server_url}")
    return backend, where, {**sampler, "model": "servers", "wire_dtype": args.wire_dtype}


def preflight(args: argparse.Namespace, cs: ClientSettings) -> None:
    """Before any frame: each server the job needs answers /health/ready (one that never answered fails it within
    1.5 s, one loading its model is waited for), and a cloud and an edge run the same model."""
    from edensplit.client.preflight import check_ready
    from edensplit.client.transport import ClientConfig

    servers = {"edge": cs.edge_server_url} if args.flow == "b" else {"cloud": cs.cloud_server_url,
                                                                      "edge": cs.edge_server_url}
    config = ClientConfig.of(timeout=cs.edensplit_timeout, api_key=cs.api_key(), ca_cert=cs.edensplit_ca_cert,
                             allow_insecure_key=cs.edensplit_allow_insecure_key)
    for role, url in servers.items():  # no key sent in clear text, not even to /health/ready
        ClientConfig.of(api_key=config.api_key, name=f"{role} server",
                        allow_insecure_key=config.allow_insecure_key).check_url(url)
    check_ready(servers, config, startup_wait=cs.edensplit_startup_wait, say=None if args.quiet else say)


def spec_for(args: argparse.Namespace, fingerprint: dict[str, Any], **extra: Any) -> Any:
    """The JobSpec of the options (`extra`: fields the command line has no flag for, such as a page's `watch`)."""
    from edensplit.client.spec import JobSpec

    fields: dict[str, Any] = dict(
        seed=args.seed, multi=args.multi, codec=args.codec, crf=args.crf, pix_fmt=args.pix_fmt,
        save_frames=args.save_frames, progress=not (args.no_progress or args.quiet), resume=not args.no_resume,
        fingerprint=fingerprint, say=(lambda message: None) if args.quiet else say,
        scene_detect=not args.no_scene_detect, preview=args.preview, filename=output_of(args).name,
        fps=args.fps or None, video_name=f"interpolated.{args.container}",
        **({} if args.scene_threshold is None else {"scene_threshold": args.scene_threshold}))
    return JobSpec(**{**fields, **extra})


def run_job(args: argparse.Namespace, backend: Any, where: str, fingerprint: dict[str, Any]) -> int:
    from edensplit.client.jobs import interpolate_folder, interpolate_pair_files, interpolate_video
    from edensplit.client.progress import stage_summary

    spec = spec_for(args, fingerprint)
    if args.video_path:
        result = interpolate_video(backend, args.video_path, args.output_dir, spec)
    elif args.input_dir:
        result = interpolate_folder(backend, args.input_dir, args.output_dir, spec)
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
    say(stage_summary(result.timings))
    return 0
