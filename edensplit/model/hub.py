"""Weights by name on the Hugging Face Hub: `hf://owner/name[@revision]/file` resolved, through huggingface_hub, to a
file in its cache (its HF_HOME / HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE apply), and every way that fails said in
one line: not cached with no way to the Hub says how to fetch it ahead of time (`edensplit download`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edensplit.errors import CheckpointError, ConfigError

SCHEME = "hf://"
RELEASED = "hf://zhZ524/EDEN/eden.pt"  # the released EDEN checkpoint (its config is edensplit's default)
FORM = "hf://owner/name/file (a revision as hf://owner/name@revision/file)"
_OTHER_KINDS = {"datasets", "spaces", "buckets", "kernels"}  # the Hub's other repository kinds: no weights there


@dataclass(frozen=True)
class HubFile:
    """One file of a model repository on the Hub, at a revision (a branch, tag or commit; None: main)."""

    repo_id: str
    filename: str
    revision: str | None = None

    @property
    def uri(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{SCHEME}{self.repo_id}{at}/{self.filename}"


@dataclass(frozen=True)
class Fetched:
    """A hub file on this machine: where it lies in the cache, the commit it came from, and whether it was there
    before this call."""

    path: Path
    commit: str
    was_cached: bool


def is_hub_uri(text: str) -> bool:
    return text.startswith(SCHEME)


def parse(uri: str) -> HubFile:
    """`hf://owner/name[@revision]/path/in/repo` (`models/` before the owner is allowed; a revision `refs/pr/N`
    takes its slashes), or ConfigError in one line."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    parts = uri.removeprefix(SCHEME).split("/")
    if parts[:1] == ["models"]:
        parts = parts[1:]
    if parts[:1] and parts[0] in _OTHER_KINDS:
        raise ConfigError(f"{uri}: weights come from a model repository, not {parts[0]}: write {FORM}")
    if len(parts) < 3 or not all(parts):
        raise ConfigError(f"{uri} does not name a file in a Hub repository: write {FORM}")
    owner, name, rest = parts[0], parts[1], parts[2:]
    name, at, revision = name.partition("@")
    if at and revision == "refs" and len(rest) >= 3:  # hf://owner/name@refs/pr/3/eden.pt
        revision, rest = "/".join(["refs", *rest[:2]]), rest[2:]
    if at and not revision:
        raise ConfigError(f"{uri}: nothing after '@': write {FORM}")
    try:
        validate_repo_id(f"{owner}/{name}")
    except HFValidationError as exc:
        raise ConfigError(f"{uri}: {owner}/{name} is not a Hub repository name ({_first_line(exc)})") from None
    filename = str(PurePosixPath(*rest))
    if ".." in rest or "." in rest:
        raise ConfigError(f"{uri}: the file's path in the repository may not hold '.' or '..'")
    return HubFile(f"{owner}/{name}", filename, revision or None)


def cache_dir() -> str:
    """The hub cache huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def fetch(ref: HubFile, *, local_only: bool = False) -> Fetched:
    """The file from the hub cache, downloaded first unless it is there (for a branch or tag, the Hub is asked which
    commit it names, unless HF_HUB_OFFLINE=1 or `local_only`); CheckpointError or ConfigError saying why not."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(ref.repo_id, ref.filename, revision=ref.revision)
        path = Path(hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, local_files_only=local_only))
    except Exception as exc:  # the hub's exceptions, one line each (why_not); anything else is a bug: raised
        raise why_not(ref, exc) from None
    # The cache keeps the file as snapshots/<commit>/<path in repo>: the folder above the path is the commit.
    commit = path.parents[len(PurePosixPath(ref.filename).parts) - 1].name
    return Fetched(path, commit, isinstance(cached, str) and Path(cached) == path)


def why_not(ref: HubFile, exc: Exception) -> Exception:
    """The one-line error for what huggingface_hub raised while fetching `ref` (the exception itself when it is
    none of the hub's)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {ref.revision}" if ref.revision else ""
    if isinstance(exc, LocalEntryNotFoundError | OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "no network"
        return CheckpointError(f"{ref.uri} is not in the Hugging Face cache ({cache_dir()}) and the Hub cannot be "
                               f"reached ({why}): fetch it ahead of time with `edensplit download {ref.uri}` where "
                               "there is network (the same HF_HOME or HF_HUB_CACHE), or set MODEL_PATH to a local file")
    if isinstance(exc, GatedRepoError):
        return CheckpointError(f"{ref.repo_id} is gated on the Hub: accept its terms on huggingface.co and log in "
                               "(HF_TOKEN, or `hf auth login`)")
    if isinstance(exc, RepositoryNotFoundError):
        return CheckpointError(f"no repository {ref.repo_id} on the Hub (or it is private: set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return CheckpointError(f"{ref.repo_id} has no revision {ref.revision} on the Hub")
    if isinstance(exc, EntryNotFoundError):
        return CheckpointError(f"{ref.repo_id} has no file {ref.filename}{at} on the Hub")
    if isinstance(exc, HFValidationError):
        return ConfigError(f"{ref.uri}: {_first_line(exc)}")
    if isinstance(exc, HfHubHTTPError | OSError):
        return CheckpointError(f"cannot fetch {ref.uri}: {_first_line(exc)}")
    return exc


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
