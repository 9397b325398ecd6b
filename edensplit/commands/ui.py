"""`edensplit ui --port P`: the web page (loopback by default), its jobs run against CLOUD_SERVER_URL /
EDGE_SERVER_URL, or in this process with --local."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

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


def trying_out(folder: Path) -> list[str]:
    """--local without a model named: what `edensplit demo` runs (MODEL_PATH, else the tiny EDEN where this copy
    has it, else random weights of a small config, written in `folder`), said in a line, as job options."""
    from edensplit.demo import demo_model

    env, _ = demo_model(folder)
    options = ["--model_path", env["MODEL_PATH"]] if "MODEL_PATH" in env else []
    if env.get("EDEN_RANDOM_WEIGHTS"):
        options.append("--random_weights")
    if "EDEN_CONFIG" in env:
        options += ["--config", env["EDEN_CONFIG"]]
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
    if args.local and args.model_path is None and not args.eden_random_weights:
        app.state.jobs.options += trying_out(app.state.jobs.root)
    where = "in this process (--local)" if args.local else \
        f"on the cloud {settings.cloud_server_url} and the edge {settings.edge_server_url}"
    print(f"edensplit ui: http://{args.host}:{args.port}/ (jobs run {where}); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
