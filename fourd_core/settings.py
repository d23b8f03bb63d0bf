"""Value rules shared by every command, node and library function that takes the same option, written
once: the CLI, the nodes and the library all call :func:`check` with the option's name."""

from __future__ import annotations

import dataclasses
import math

from .errors import InputError


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed numeric range ``[low, high]`` (None = unbounded) with a hint for the error message."""

    low: float | None = None
    high: float | None = None
    hint: str = ""
    integer: bool = False

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in [{self.low:g}, {self.high:g}]"
        return f">= {self.low:g}" if self.low is not None else f"<= {self.high:g}"


#: option name -> its rule (the same in ``generate``, ``geometry``, ``gaussians`` and the nodes)
RULES: dict[str, Range] = {
    "min_confidence": Range(0.0, 1.0, "a fraction: 0.5 keeps pixels with confidence >= 50 %"),
    "footprint": Range(1e-3, 64.0, "splat size in pixels of its own frame"),
    "stride": Range(1, 64, "keep every n-th pixel", integer=True),
    "fps": Range(1e-3, 1000.0, "frames per second"),
}


def check(name: str, value, *, flag: str | None = None):
    """Return ``value`` if it obeys the rule of option ``name`` (:data:`RULES`).

    Args:
        flag: how the message names the option (default: ``name``; the CLI passes ``--min-confidence``).
    Raises:
        InputError: not a number, NaN, out of range, or not whole where the rule wants an integer.
        KeyError: an option without a rule (a programming error).
    """
    rule = RULES[name]
    label = flag or name
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a number {rule.describe()}; got {str(value)[:40]!r}.") from None
    bad = (math.isnan(number) or (rule.low is not None and number < rule.low)
           or (rule.high is not None and number > rule.high) or (rule.integer and number != int(number)))
    if bad:
        hint = f" ({rule.hint})" if rule.hint else ""
        raise InputError(f"{label} must be {'an integer ' if rule.integer else ''}{rule.describe()}{hint}; "
                         f"got {str(value)[:40]}.")
    return value
