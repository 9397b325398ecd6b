"""EDEN configuration: the network's shape (`ModelArgs`) and the released constants (`EdenConfig`).

The YAML layout is upstream's `eval_eden.yaml`: `model_args`, `cos_sim_mean`, `cos_sim_std`,
`vae_scaler`, `vae_shift` at the top level; every other key (datasets, training) is ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edensplit.errors import ConfigError

# Keys upstream configs carry that do not change inference: accepted and ignored.
IGNORED_MODEL_ARGS = frozenset({"use_xformers", "attn_drop_rate", "proj_drop_rate"})


@dataclass(frozen=True)
class ModelArgs:
    """The network's hyper-parameters; defaults are the released checkpoint's."""

    in_dim: int = 3
    out_dim: int = 3
    patch_size: int = 16
    latent_dim: int = 16
    hidden_dim: int = 768
    num_heads: int = 12
    mlp_ratio: float = 4.0
    dit_depth: int = 12
    decoder_depth: int = 4
    qkv_bias: bool = False
    add_attn_decoder: bool = True
    add_attn_type: str = "temporal_attn"

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim", "patch_size", "latent_dim", "hidden_dim", "num_heads",
                     "dit_depth", "decoder_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model_args.{name} must be a positive integer, got {value!r}")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"model_args.hidden_dim ({self.hidden_dim}) must be divisible by "
                              f"num_heads ({self.num_heads})")
        if self.hidden_dim % 4:
            raise ConfigError(f"model_args.hidden_dim ({self.hidden_dim}) must be a multiple of 4 "
                              "(2-D sin-cos position embeddings)")
        if self.in_dim != 3 or self.out_dim != 3:
            raise ConfigError("model_args.in_dim and out_dim must be 3 (RGB frames)")
        if not (self.add_attn_decoder and self.add_attn_type == "temporal_attn"):
            raise ConfigError("only the released decoder is supported: add_attn_decoder true, "
                              "add_attn_type 'temporal_attn'")
        if not (isinstance(self.mlp_ratio, int | float) and self.mlp_ratio > 0):
            raise ConfigError(f"model_args.mlp_ratio must be positive, got {self.mlp_ratio!r}")

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_dim * self.mlp_ratio)

    @property
    def pad_multiple(self) -> int:
        """Frames are padded to a multiple of two patches: the latent grid is half the token grid."""
        return 2 * self.patch_size

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EdenConfig:
    """Everything inference needs besides the weights: the network shape and four constants."""

    model_args: ModelArgs = field(default_factory=ModelArgs)
    cos_sim_mean: float = 0.990539
    cos_sim_std: float = 0.0608093
    vae_scaler: float = 0.179437
    vae_shift: float = 0.770202

    def __post_init__(self) -> None:
        for name in ("cos_sim_mean", "cos_sim_std", "vae_scaler", "vae_shift"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if self.cos_sim_std <= 0 or self.vae_scaler <= 0:
            raise ConfigError("cos_sim_std and vae_scaler must be > 0")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EdenConfig:
        """Build from an `eval_eden.yaml`-style mapping, ignoring keys inference does not use."""
        if not isinstance(raw, dict):
            raise ConfigError("the config must be a mapping with a 'model_args' section")
        args = raw.get("model_args") or {}
        if not isinstance(args, dict):
            raise ConfigError("model_args must be a mapping")
        known = {f.name for f in dataclasses.fields(ModelArgs)}
        unknown = set(args) - known - IGNORED_MODEL_ARGS
        if unknown:
            raise ConfigError(f"unknown model_args keys: {', '.join(sorted(unknown))}")
        model_args = ModelArgs(**{k: v for k, v in args.items() if k in known})
        consts = {f.name: raw[f.name] for f in dataclasses.fields(cls)
                  if f.name != "model_args" and f.name in raw}
        return cls(model_args=model_args, **consts)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None) -> EdenConfig:
    """Read an `eval_eden.yaml`-style file; with no path, the released model's config."""
    if path is None:
        return EdenConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    try:
        return EdenConfig.from_dict(raw)
    except TypeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
