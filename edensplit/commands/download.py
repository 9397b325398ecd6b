"""`edensplit download [hf://...]`: fetch weights into the Hugging Face cache ahead of time (default: the released
EDEN), so that servers and `--local` runs find them there, offline too (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import argparse

from edensplit.errors import ConfigError
from edensplit.model import hub


def run(args: argparse.Namespace) -> int:
    """Fetch the URI's file unless the cache has it; say where it is, its commit, size and digest."""
    from edensplit.model.checkpoint import file_digest

    if not hub.is_hub_uri(args.uri):
        raise ConfigError(f"edensplit download fetches a file from the Hub: give {hub.FORM}, not {args.uri!r}")
    ref = hub.parse(args.uri)
    fetched = hub.fetch(ref)
    what = "is in the Hugging Face cache" if fetched.was_cached else "downloaded into the Hugging Face cache"
    size = fetched.path.stat().st_size / 2**20
    print(f"{ref.uri} {what}: {fetched.path} (revision {fetched.commit}, {size:.1f} MiB, digest "
          f"{file_digest(fetched.path)})")
    print(f"MODEL_PATH={ref.uri} loads it from there (HF_HUB_OFFLINE=1: without asking the Hub)")
    return 0
