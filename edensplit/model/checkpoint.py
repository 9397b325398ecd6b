"""Loading EDEN weights: the released `{"eden": state_dict}` file, a bare state dict, or safetensors.

Checkpoints are read with `torch.load(weights_only=True)`: no arbitrary Python object is ever loaded.
Keys and shapes are checked against the full released layout (whatever stages are loaded), so a
mismatch is reported by name before anything is built. Random weights are only made on request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from edensplit.errors import CheckpointError
from edensplit.model import hub, sources
from edensplit.model.config import EdenConfig
from edensplit.model.eden import ALL_STAGES, Eden

CHECKPOINT_KEY = "eden"
_SHOWN = 5


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat {name: tensor} dict, or raise CheckpointError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a foreign file: all mean "not loadable"
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint that can be loaded safely: it is corrupt, not a torch.save file, "
            f"or holds objects other than tensors ({type(exc).__name__}); edensplit only reads weights-only "
            "checkpoints and never loads arbitrary Python objects"
        ) from None
    if isinstance(obj, Mapping) and CHECKPOINT_KEY in obj:
        obj = obj[CHECKPOINT_KEY]
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{path} holds no EDEN state dict: expected {{'{CHECKPOINT_KEY}': state_dict}} or a bare "
            "{name: tensor} state dict"
        )
    return dict(obj)


def expected_shapes(config: EdenConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter name and shape of the full model for `config`, built without allocating it."""
    with torch.device("meta"):
        model = Eden(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _listing(items: list[str]) -> str:
    more = f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def check_state_dict(state: Mapping[str, Tensor], config: EdenConfig) -> None:
    """Raise CheckpointError naming the missing, unexpected and mis-shaped parameters, if any."""
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k}: checkpoint {tuple(state[k].shape)}, config expects {shape}"
                  for k, shape in expected.items() if k in state and tuple(state[k].shape) != shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} shape mismatches: {_listing(mis_shaped)}")
    if problems:
        raise CheckpointError(
            "the checkpoint does not match the config's model_args (is EDEN_CONFIG the right file?): "
            + "; ".join(problems)
        )


def init_random_weights(model: nn.Module, seed: int) -> None:
    """Deterministic random weights, each parameter seeded by (seed, its name).

    A model holding only one stage's weights gets exactly the values the full model would, so a
    random-weight cloud and edge together compute what a random-weight local pipeline does.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            gen = torch.Generator("cpu").manual_seed(seed * 0x9E3779B1 + zlib.crc32(name.encode()))
            if name.endswith("bias"):
                values = torch.randn(param.shape, generator=gen) * 0.02
            elif param.ndim == 1:  # LayerNorm scale
                values = 1 + torch.randn(param.shape, generator=gen) * 0.02
            else:
                fan_in = param[0].numel()
                values = torch.randn(param.shape, generator=gen) / fan_in**0.5
            param.copy_(values)


def load_model(checkpoint: str | Path | None = None, config: EdenConfig | None = None, *,
               stages: Iterable[str] = ALL_STAGES, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, allow_random: bool = False, seed: int = 0) -> Eden:
    """Build EDEN for `stages` on `device` from a checkpoint, or with random weights if explicitly allowed.

    `checkpoint` is what MODEL_PATH may be (edensplit.model.sources): a file, or as a str `tiny` or an `hf://` URI.
    `config` defaults to the weights' own (the tiny EDEN's), else the released model's."""
    if checkpoint is None:
        if not allow_random:
            raise CheckpointError("no checkpoint given: set MODEL_PATH to a checkpoint file or "
                                  f"{hub.RELEASED} (the released EDEN), or MODEL_PATH={sources.TINY} to try "
                                  "things out (--random_weights or EDEN_RANDOM_WEIGHTS=1: random weights, for "
                                  "testing the pipeline only)")
        config = config or EdenConfig()
        model = Eden(config, stages)
        init_random_weights(model, seed)
        model.weights_source = model.weights_name = f"random (seed {seed})"
        model.weights_digest = random_weights_digest(config, seed)
    else:
        weights = sources.resolve(checkpoint)
        config = weights.config_for(config)
        state = read_state_dict(weights.file)
        check_state_dict(state, config)
        with torch.device("meta"):
            model = Eden(config, stages)
        wanted = model.state_dict().keys()
        model.load_state_dict({k: state[k] for k in wanted}, strict=True, assign=True)
        model.weights_source, model.weights_name = weights.source, weights.name
        model.weights_repository, model.weights_revision = weights.repository, weights.revision
        model.weights_digest = file_digest(weights.file)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


DIGEST_CHARS = 16


def file_digest(path: str | Path) -> str:
    """A short SHA-256 of a whole checkpoint file: every process loading it, whatever stage, gets the same."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()[:DIGEST_CHARS]


def random_weights_digest(config: EdenConfig, seed: int) -> str:
    """A short SHA-256 of what random weights come from (the configuration and the seed): the cloud and the edge
    agree on it exactly when they build the same random model."""
    what = json.dumps({"config": dataclasses.asdict(config), "random_seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(what.encode()).hexdigest()[:DIGEST_CHARS]
