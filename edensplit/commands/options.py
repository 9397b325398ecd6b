"""Parsed flags into settings: a flag given overrides its environment variable, one not given leaves it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

MODEL_FIELDS = ("model_path", "eden_config", "device", "eden_dtype", "eden_random_weights")
CLIENT_FIELDS = ("cloud_server_url", "edge_server_url", "edensplit_timeout", "edensplit_retries",
                 "edensplit_retry_for", "edensplit_api_key", "edensplit_ca_cert", "edensplit_allow_insecure_key",
                 "edensplit_shm", "edensplit_startup_wait")


def overrides(args: argparse.Namespace, fields: Sequence[str]) -> dict[str, Any]:
    """The flags of `fields` that were given, by settings field name."""
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
