"""The wire dtypes: how the enc_out blob carries the encoder's tokens, in one registry.

A `WireCodec` says how a [F, N, D] float tensor of tokens is packed into the blob's named tensors (the
tokens themselves in `dtype`, plus any per-token float32 [F, N] side tensors) and unpacked back, whether
that is exact, and the error bound it guarantees. `wire/blob.py` packs and checks through it; the client
and server options, the CLI's choices, the OpenAPI text and docs/protocol.md's table (held to it by a test)
all come from `names()`, so a wire dtype is added by registering one codec here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from edensplit.errors import InputError

DEFAULT = "float32"


@dataclass(frozen=True)
class WireCodec:
    """One wire dtype. `pack(name, tokens)` takes CPU tokens [F, N, D] and returns the blob's tensors for them:
    `name` in `dtype`, plus `name + suffix` (float32 [F, N], one value per token) for each `side` suffix.
    `unpack(name, tensors)` gives the tokens back from those, or raises ValueError saying what it refuses."""

    name: str
    dtype: torch.dtype  # the stored tokens' dtype
    exact: bool  # round-trips bit for bit
    bound: str  # the error bound it guarantees, one line (docs/protocol.md's table repeats it)
    pack: Callable[[str, Tensor], dict[str, Tensor]]
    unpack: Callable[[str, Mapping[str, Tensor]], Tensor]
    side: tuple[str, ...] = ()  # suffixes of the per-token float32 [F, N] tensors stored beside the tokens

    @property
    def casts_to(self) -> torch.dtype | None:
        """The dtype its pack casts the tokens to when that is all it does (float codecs), else None."""
        return self.pack.dtype if isinstance(self.pack, Cast) else None

    def side_names(self, name: str) -> tuple[str, ...]:
        """The blob tensors stored beside tokens `name` (e.g. `cond_dit_scale`)."""
        return tuple(name + suffix for suffix in self.side)


_CODECS: dict[str, WireCodec] = {}


def register(codec: WireCodec) -> WireCodec:
    """Add a wire dtype (offered everywhere from then on); a name already taken is refused."""
    if codec.name in _CODECS:
        raise ValueError(f"wire dtype {codec.name!r} is already registered")
    _CODECS[codec.name] = codec
    return codec


def unregister(name: str) -> None:
    """Remove a wire dtype (tests that register a codec of their own clean up with this)."""
    _CODECS.pop(name, None)


def names() -> tuple[str, ...]:
    """The wire dtypes' names, in registration order."""
    return tuple(_CODECS)


def get(name: str) -> WireCodec:
    """The codec of wire dtype `name`, or InputError naming the known ones."""
    codec = _CODECS.get(name) if isinstance(name, str) else None
    if codec is None:
        raise InputError(f"unknown wire dtype {name!r}; use one of {', '.join(_CODECS)}")
    return codec


@dataclass(frozen=True)
class Cast:
    """A float codec's pack: the tokens cast to `dtype` (round to nearest), nothing beside them. The blob writer
    casts them straight into their place in the blob instead (`WireCodec.casts_to`)."""

    dtype: torch.dtype

    def __call__(self, name: str, tokens: Tensor) -> dict[str, Tensor]:
        return {name: tokens.to(self.dtype).contiguous()}


def cast(dtype: torch.dtype) -> Cast:
    """A float codec's pack: the tokens cast to `dtype` (see Cast)."""
    return Cast(dtype)


def as_stored(name: str, tensors: Mapping[str, Tensor]) -> Tensor:
    """A float codec's unpack: the tokens as they travelled, in the wire dtype."""
    return tensors[name]


def quantise(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-token int8: [F, N, D] -> (int8 [F, N, D], float32 scales [F, N])."""
    x = tokens.float()
    scale = x.abs().amax(dim=-1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero token: any scale will do
    q = torch.round(x / scale[..., None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantise(q: Tensor, scale: Tensor) -> Tensor:
    """int8 [F, N, D] and float32 scales [F, N] -> float32 [F, N, D]."""
    return q.float() * scale[..., None]


def _pack_int8(name: str, tokens: Tensor) -> dict[str, Tensor]:
    q, scale = quantise(tokens)
    return {name: q, f"{name}_scale": scale}


def _unpack_int8(name: str, tensors: Mapping[str, Tensor]) -> Tensor:
    scale = tensors[f"{name}_scale"]
    if not bool((scale > 0).all()):
        raise ValueError(f"tensor {name}_scale holds scales that are not positive")
    return dequantise(tensors[name], scale)


FLOAT32 = register(WireCodec("float32", torch.float32, exact=True, bound="exact: round-trips bit for bit",
                   pack=cast(torch.float32), unpack=as_stored))
FLOAT16 = register(WireCodec("float16", torch.float16, exact=False,
                   bound="relative error <= 2**-11 for 2**-14 <= |x| <= 65504, absolute <= 2**-25 below",
                   pack=cast(torch.float16), unpack=as_stored))
BFLOAT16 = register(WireCodec("bfloat16", torch.bfloat16, exact=False,
                              bound="relative error <= 2**-8 (float32's range)", pack=cast(torch.bfloat16),
                              unpack=as_stored))
INT8 = register(WireCodec("int8", torch.int8, exact=False, bound="each value within s/2, s = max|x|/127 of its token",
                   pack=_pack_int8, unpack=_unpack_int8, side=("_scale",)))
