"""The compute precisions a model may run in, in one place: their names and torch dtypes.

The settings' `eden_dtype` (EDEN_DTYPE), both `--dtype` flags and model loading all read this table, so a
precision is added here and nowhere else. float32 is the default and the exact mode.
"""

from __future__ import annotations

import torch

from edensplit.errors import ConfigError

PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT = FLOAT32 = "float32"  # the exact mode: split and local frames bit-identical
BFLOAT16, FLOAT16 = "bfloat16", "float16"


def names() -> tuple[str, ...]:
    """The compute precisions' names, in the table's order (for CLI choices and messages)."""
    return tuple(PRECISIONS)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of compute precision `name`, or ConfigError naming the known ones."""
    try:
        return PRECISIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown compute dtype {name!r}; use one of {', '.join(PRECISIONS)}") from None


def check(name: str) -> str:
    """`name` if it is a compute precision (a settings validator: ValueError otherwise)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown compute dtype {name!r}; use one of {', '.join(PRECISIONS)}")
    return name
