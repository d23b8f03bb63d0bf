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


class CancelledError(FourDError):
    """A long-running loop was cancelled through its cancel callback."""
