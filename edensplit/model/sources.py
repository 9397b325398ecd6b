"""What MODEL_PATH names, made a file to read: a path (relative, absolute or `~`), an `hf://` URI (through the hub
cache, edensplit.model.hub), or `tiny`, the tiny EDEN installed with the package, which carries its own config.
Each comes with how the log and /health name it: /health never shows a local path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edensplit.errors import CheckpointError, ConfigError
from edensplit.model import hub
from edensplit.model.config import EdenConfig, load_config

TINY = "tiny"
TINY_NAME = "tiny EDEN trained on synthetic motion"
TINY_DIR = Path(__file__).resolve().parent / "tiny"  # package data: the weights and their config side by side
TINY_WEIGHTS_FILE, TINY_CONFIG_FILE = "eden_tiny.safetensors", "eden_tiny.yaml"
TINY_DIR_ENV = "EDENSPLIT_TINY_DIR"  # the tiny EDEN's files elsewhere than the package's folder (tests use it)
LOCAL_NAME = "local checkpoint"  # a file's name in /health (its path is in the log only)


@dataclass(frozen=True)
class Weights:
    """A MODEL_PATH resolved: the file to read, and how to name what runs. `source` is for the log (a local file's
    path); `name`, `repository` and `revision` (a commit) are for /health too; `config` is a config the weights
    carry (the tiny EDEN's), which no other may replace."""

    file: Path
    name: str
    source: str
    repository: str | None = None
    revision: str | None = None
    config: Path | None = None

    def config_for(self, given: EdenConfig | None) -> EdenConfig:
        """The config to build the model with: the weights' own if they carry one (a different `given` is refused),
        else `given`, else the released model's."""
        if self.config is None:
            return given or EdenConfig()
        own = load_config(self.config)
        if given is not None and given != own:
            raise ConfigError(f"MODEL_PATH={TINY} carries its own config ({self.config.name}) and EDEN_CONFIG "
                              "names a different one: unset EDEN_CONFIG (or name the model's checkpoint file)")
        return own


def tiny_dir() -> Path:
    """Where the tiny EDEN's two files are: EDENSPLIT_TINY_DIR, else the package's `model/tiny` folder."""
    return Path(os.environ.get(TINY_DIR_ENV) or TINY_DIR)


def tiny_installed() -> bool:
    """Whether this copy of edensplit has the tiny EDEN's weights and config."""
    folder = tiny_dir()
    return (folder / TINY_WEIGHTS_FILE).is_file() and (folder / TINY_CONFIG_FILE).is_file()


def resolve(model_path: str | Path) -> Weights:
    """The weights `model_path` names. A str may be `tiny` or an `hf://` URI; anything else, and any Path, is a
    file (`~` expanded). Not-there is CheckpointError, a malformed name ConfigError, each one line."""
    if isinstance(model_path, str):
        if model_path == TINY:
            return tiny()
        if hub.is_hub_uri(model_path):
            return from_hub(hub.parse(model_path))
    path = Path(model_path).expanduser()
    return Weights(path, LOCAL_NAME, str(path))


def tiny() -> Weights:
    """The tiny EDEN installed with the package, or CheckpointError saying this copy has none."""
    folder = tiny_dir()
    if not tiny_installed():
        raise CheckpointError(f"the tiny EDEN is not installed in this copy of edensplit (no {TINY_WEIGHTS_FILE} "
                              f"and {TINY_CONFIG_FILE} in {folder}): set MODEL_PATH to a checkpoint file or "
                              f"{hub.RELEASED}, or EDEN_RANDOM_WEIGHTS=1 for random weights (the pipeline only)")
    return Weights(folder / TINY_WEIGHTS_FILE, TINY_NAME, TINY_NAME, config=folder / TINY_CONFIG_FILE)


def from_hub(ref: hub.HubFile) -> Weights:
    """A hub file, from the cache or downloaded into it, named by its URI, repository and commit."""
    fetched = hub.fetch(ref)
    return Weights(fetched.path, ref.uri, f"{ref.uri} (revision {fetched.commit})", repository=ref.repo_id,
                   revision=fetched.commit)


def is_local_file(model_path: str) -> bool:
    """Whether MODEL_PATH names a file on this machine (not `tiny`, not an `hf://` URI)."""
    return model_path != TINY and not hub.is_hub_uri(model_path)
