"""The ODE sampler of the interpolate stage: its time grid (2 steps = the reference grid), methods and limits."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from edensplit.errors import InputError

REFERENCE_GRID = (0.0, 0.75, 1.0)
MAX_STEPS = 64
METHODS = ("euler", "heun")


@dataclass(frozen=True)
class Sampler:
    """The ODE sampler. 2 steps is the reference grid (0, 0.75, 1); other counts use a uniform grid."""

    num_steps: int = 2
    method: str = "euler"
    time_grid: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown sampling method {self.method!r}; use one of {', '.join(METHODS)}")
        if not isinstance(self.num_steps, int) or not 1 <= self.num_steps <= MAX_STEPS:
            raise InputError(f"num_steps must be an integer from 1 to {MAX_STEPS}, got {self.num_steps!r}")
        n = self.num_steps
        grid = REFERENCE_GRID if n == 2 else tuple(i / n for i in range(n + 1))
        object.__setattr__(self, "time_grid", grid)

    def run(self, velocity: Callable[[Tensor, float], Tensor], x: Tensor,
            trace: list[Tensor] | None = None, check: Callable[[], None] | None = None) -> Tensor:
        """Integrate dx/dt = v(x, t) over the grid from the noise x; `trace` collects each step's state;
        `check`, called before each step, may raise to stop (a deadline passed, the caller went away)."""
        for t0, t1 in itertools.pairwise(self.time_grid):
            if check is not None:
                check()
            dt = t1 - t0
            v = velocity(x, t0)
            if self.method == "heun":
                v = 0.5 * (v + velocity(x + dt * v, t1))
            x = x + dt * v
            if trace is not None:
                trace.append(x)
        return x


REFERENCE_SAMPLER = Sampler()
