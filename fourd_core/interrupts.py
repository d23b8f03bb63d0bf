"""Stop requests from signals, remembered so that none is lost.

Python runs a signal handler between bytecodes of the main thread and raises its exception there.
When that moment falls inside a callback whose exceptions Python only prints as "ignored" (an
``os.register_at_fork`` hook - logging installs one, and every ffmpeg subprocess of the video
writer forks - or a ``__del__``), the exception vanishes and the run would go on to commit its
outputs. The CLI's SIGINT/SIGTERM handlers therefore also record the request here, and writers
call :func:`raise_if_stop_requested` at safe points (between stages and before committing files).
"""

from __future__ import annotations

_requested: type[BaseException] | None = None


class Terminated(BaseException):
    """Raised for SIGTERM (like KeyboardInterrupt for SIGINT), so ``finally`` blocks clean up."""


def request_stop(kind: type[BaseException]) -> None:
    """Remember that the process must stop with ``kind`` (KeyboardInterrupt or Terminated)."""
    global _requested
    _requested = kind


def clear_stop_request() -> None:
    """Forget a remembered request (the CLI does this when it exits)."""
    global _requested
    _requested = None


def raise_if_stop_requested() -> None:
    """Raise the remembered stop request, if any (see the module docstring)."""
    if _requested is not None:
        raise _requested()


def make_unraisable_hook(previous):
    """A ``sys.unraisablehook`` that drops the stop exceptions Python could not raise (see the module
    docstring: they are remembered and re-raised at the next safe point, so the "Exception ignored
    in ..." traceback Python would print is noise) and hands every other one to ``previous``."""

    def hook(unraisable):
        if _requested is not None and isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            return
        previous(unraisable)

    return hook
