"""A Hugging Face hub cache built by the tests, in the layout huggingface_hub reads (models--owner--name/blobs/<sha256>,
snapshots/<commit>/<file> linked to its blob, refs/<branch or tag> holding the commit): what `edensplit download`
leaves behind, made without the network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_file(cache: Path, repo_id: str, filename: str, data: bytes, commit: str = COMMIT,
               refs: tuple[str, ...] = ("main",)) -> Path:
    """Put `data` in `cache` as `filename` of `repo_id` at `commit`, which each of `refs` names; the snapshot path."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snapshot = repo / "snapshots" / commit / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
