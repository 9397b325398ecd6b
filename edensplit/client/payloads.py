"""Transitional: `Sampling`, the old options name, until edensplit/cli.py and edensplit/bench.py build
`edensplit.wire.options.Options` themselves; then this module goes."""

from __future__ import annotations

from edensplit.wire.options import Options


def Sampling(num_steps: int = 2, method: str = "euler") -> Options:  # noqa: N802 (the old class's name)
    """The sampler options as an `Options` (the one options concept); use Options(num_steps=, method=)."""
    return Options.from_flat({"num_steps": num_steps, "method": method})
