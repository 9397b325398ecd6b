"""Frame multipliers: 2x, 4x, 8x by levels of midpoints, and the multiplier an output frame rate asks for."""

from __future__ import annotations

from fractions import Fraction

from edensplit.errors import EdenError, ErrorCode

MULTIPLIERS = (2, 4, 8)


def levels_of(multi: int) -> int:
    """The levels of midpoints a multiplier needs (2 -> 1, 4 -> 2, 8 -> 3)."""
    if multi not in MULTIPLIERS:
        raise EdenError(f"the frame multiplier must be 2, 4 or 8, got {multi}", code=ErrorCode.INVALID_PARAMETER)
    return multi.bit_length() - 1


def _decimal(rate: Fraction) -> str:
    """A rate to 3 decimals, trailing zeros dropped (59.94, 24)."""
    return f"{float(rate):.3f}".rstrip("0").rstrip(".")


def multiplier_for_rate(rate_in: Fraction, fps: str | Fraction) -> int:
    """The multiplier (2, 4 or 8) that turns `rate_in` into `fps` (exact, or a decimal within 0.001 fps of it,
    e.g. 59.94 for 60000/1001); an EdenError naming the rates it could be otherwise."""
    try:
        wanted = Fraction(fps) if not isinstance(fps, Fraction) else fps
    except (ValueError, ZeroDivisionError):
        raise EdenError(f"--fps {fps!r} is not a frame rate (a number such as 60, 59.94 or 60000/1001)",
                        code=ErrorCode.INVALID_PARAMETER) from None
    for multi in MULTIPLIERS:
        if abs(rate_in * multi - wanted) <= Fraction(1, 1000):
            return multi
    options = ", ".join(f"{rate_in * m} ({_decimal(rate_in * m)})" for m in MULTIPLIERS)
    raise EdenError(f"--fps {fps} is not 2, 4 or 8 times the input's {rate_in} ({_decimal(rate_in)}) fps: "
                    f"frames are made by halving intervals, so the output rate is one of {options}",
                    code=ErrorCode.INVALID_PARAMETER)
