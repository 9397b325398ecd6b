"""`edensplit cloud|edge` (one uvicorn server) and `edensplit serve-ray` (both on Ray Serve)."""

from __future__ import annotations

import argparse
import logging

from edensplit.commands.options import MODEL_FIELDS, overrides
from edensplit.errors import EdenError
from edensplit.net import is_loopback
from edensplit.settings import ServerSettings


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edensplit.model.eden import ENCODE, INTERPOLATE
    from edensplit.model.loading import load_model_for
    from edensplit.servers.logs import configure_logging, uvicorn_log_config

    settings = ServerSettings(**overrides(args, (*MODEL_FIELDS, "max_inflight", "max_batch", "edensplit_api_key",
                                                 "allow_shm")))
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


def serve_ray(args: argparse.Namespace) -> int:
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
    base = ServerSettings(**overrides(args, (*MODEL_FIELDS, "max_inflight", "edensplit_api_key")))
    served = deploy(config, base.model_dump(exclude_unset=True, mode="json"))
    where = f"Ray session {served.session_dir}" if served.session_dir else "Ray"
    print(f"serving the cloud at {served.cloud_url} and the edge at {served.edge_url} (ready in {served.seconds:.1f} "
          f"s; {where}); Ctrl-C stops", flush=True)
    return serve_until_stopped(served, say=lambda line: print(line, flush=True))
