"""`edensplit ui --port P`: the web page (loopback by default), its jobs run against CLOUD_SERVER_URL /
EDGE_SERVER_URL, or in this process with --local."""

from __future__ import annotations

import argparse
import logging

from edensplit.commands.options import CLIENT_FIELDS, MODEL_FIELDS, overrides
from edensplit.net import is_loopback
from edensplit.settings import UiSettings

# The flags of `edensplit ui` handed to each job as `edensplit interpolate` would take them (flag, dest).
FORWARDED = (("--cloud_url", "cloud_server_url"), ("--edge_url", "edge_server_url"),
             ("--timeout", "edensplit_timeout"), ("--ca_cert", "edensplit_ca_cert"),
             ("--api_key", "edensplit_api_key"), ("--model_path", "model_path"), ("--config", "eden_config"),
             ("--device", "device"), ("--dtype", "eden_dtype"), ("--transport", "transport"), ("--flow", "flow"))
SWITCHES = (("--allow_insecure_key", "edensplit_allow_insecure_key"), ("--random_weights", "eden_random_weights"))


def job_options(args: argparse.Namespace) -> list[str]:
    """The `edensplit interpolate` options every job of this page gets."""
    options: list[str] = []
    for flag, dest in FORWARDED:
        if getattr(args, dest, None) is not None:
            options += [flag, str(getattr(args, dest))]
    options += [flag for flag, dest in SWITCHES if getattr(args, dest, None)]
    return options


def run(args: argparse.Namespace) -> int:
    """Serve the page until Ctrl-C."""
    import uvicorn

    from edensplit.ui.app import create_ui_app

    settings = UiSettings(**overrides(args, (*CLIENT_FIELDS, *MODEL_FIELDS)))
    if not is_loopback(args.host) and settings.api_key() is None:
        logging.getLogger("edensplit.ui").warning(
            "ui: binding %s with no API key: anyone who can reach this address can run jobs (set EDENSPLIT_API_KEY "
            "or --api_key)", args.host)
    app = create_ui_app(settings, local=args.local, options=job_options(args))
    where = "in this process (--local)" if args.local else \
        f"on the cloud {settings.cloud_server_url} and the edge {settings.edge_server_url}"
    print(f"edensplit ui: http://{args.host}:{args.port}/ (jobs run {where}); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
