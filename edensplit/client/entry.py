"""Entry points with the transport fixed: `inference_http.py` and `inference_ws.py` at the repository root
(the plan's HTTP and WebSocket clients), thin wrappers over `edensplit interpolate`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

NAMES = {"http": "HTTP", "ws": "WebSocket"}
SCRIPTS = {"http": "inference_http.py", "ws": "inference_ws.py"}


def run_with_transport(transport: str, argv: Sequence[str], prog: str) -> int:
    """`edensplit interpolate` over `transport`, with the same flags; a --transport that disagrees is a
    one-line error and exit status 2 (the command line's own parser decides what was given, abbreviations too)."""
    from edensplit.cli import build_parser, main

    full = ["interpolate", "--transport", transport, *argv]  # given later on the line, the user's value wins
    given = build_parser().parse_args(full).transport
    if given != transport:
        other = SCRIPTS.get(given, "edensplit interpolate")
        print(f"{prog}: error: this is the {NAMES[transport]} client; --transport {given} disagrees "
              f"(use {other})", file=sys.stderr)
        return 2
    return main(full)
