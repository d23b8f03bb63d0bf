"""Error types raised by fourd_core.

Every error message says what was wrong *and* what to do about it, so the CLI and the ComfyUI
nodes can show it to a user verbatim.
"""


class FourDError(Exception):
    """Base class of every error fourd_core raises on purpose."""


class InputError(FourDError, ValueError):
    """Bad user input: an image, an array, a parameter (wrong size, NaN, unreadable...)."""


class WeightsError(FourDError, ValueError):
    """Model files that are missing, corrupt, of an unknown layout, or that do not match the model."""


class GeometryError(FourDError, ValueError):
    """Geometry that cannot be solved: NaN/inf, constant or degenerate point maps, failed fits."""


class DiskFullError(FourDError):
    """The disk (or the user's quota) is full: the message says where, how much is needed and free."""


class CancelledError(FourDError):
    """A long-running loop was cancelled through its cancel callback."""


def brief(exc: BaseException, limit: int = 200) -> str:
    """A library's exception as one short line for a FourD message: ``"TypeName: first line"``,
    cut to ``limit`` characters (the full text stays on the chained ``__cause__``; the CLI's
    ``--verbose`` prints it)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shorten_long_values(message: str, max_token: int = 160, max_digits: int = 20) -> str:
    """``message`` with absurd values cut down: runs of more than ``max_digits`` digits become
    ``"123456…(5000 digits)"`` and whitespace-free tokens longer than ``max_token`` characters keep
    their head and tail (``"…(5000 characters)…"``), so an error never echoes a huge argument."""
    import re

    message = re.sub(rf"\d{{{max_digits + 1},}}", lambda m: f"{m.group()[:6]}…({len(m.group())} digits)", message)

    def cut(m):
        t = m.group()
        return f"{t[:60]}…({len(t)} characters)…{t[-40:]}"

    return re.sub(rf"\S{{{max_token + 1},}}", cut, message)
