"""Disk space: checks before writing and one clear error when the disk fills up while writing.

A full disk (``ENOSPC``) or an exhausted quota (``EDQUOT``) anywhere inside a staged or atomic write
(:mod:`fourd_core.util.atomic`) becomes a :class:`~fourd_core.errors.DiskFullError` that says where,
how much the output needs (when it was estimated) and how much is free; the atomic writers have
removed their temporaries by then, so nothing partial is left and earlier outputs are untouched.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import DiskFullError

#: errno values that mean "no room": a full file system or an exhausted quota
DISK_FULL_ERRNOS = frozenset(e for e in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None)) if e)


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (powers of 1024, one decimal)."""
    n = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def free_bytes(path: str | Path) -> int | None:
    """Bytes free for this user on the file system holding ``path`` (or its nearest existing parent);
    None when it cannot be read."""
    p = Path(path)
    for candidate in (p, *p.parents):
        if candidate.exists():
            try:
                return int(shutil.disk_usage(candidate).free)
            except OSError:
                return None
    return None


def is_disk_full(exc: BaseException) -> bool:
    """True for an ``OSError`` whose errno means the disk (or quota) is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error(where: str | Path, exc: OSError | None = None, needed: int | None = None,
                    what: str = "the output", filename: str | None = None) -> DiskFullError:
    """The :class:`DiskFullError` for ``where`` (the output folder or file); ``filename``: the file
    being written (default: the name in ``exc``)."""
    free = free_bytes(where)
    quota = exc is not None and getattr(errno, "EDQUOT", None) == exc.errno
    cause = "your disk quota is exhausted" if quota else "the disk is full"
    name = filename or (Path(exc.filename).name if exc is not None and exc.filename else None)
    while_ = f" while writing {name}" if name else ""
    need = f"{what} needs at least {format_bytes(needed)}" if needed else f"{what} did not fit"
    have = f", {format_bytes(free)} free" if free is not None else ""
    err = DiskFullError(f"No space left for {where}: {cause}{while_} ({need}{have}). Nothing was written and earlier "
                        "files are unchanged; free some space or choose a folder on another disk.")
    err.filename = name
    return err


def check_free_space(where: str | Path, needed: int, what: str = "the output") -> None:
    """Refuse before writing when ``needed`` bytes (a lower bound) exceed the free space at ``where``.

    Raises:
        DiskFullError: not enough room (says how much is needed and free).
    """
    free = free_bytes(where)
    if free is not None and needed > free:
        raise disk_full_error(where, None, needed, what)


@contextlib.contextmanager
def disk_full_as_error(where: str | Path, needed: int | None = None, what: str = "the output",
                       filename: str | None = None) -> Iterator[None]:
    """Turn ``ENOSPC`` / ``EDQUOT`` raised inside the block into :func:`disk_full_error` for ``where``;
    a :class:`DiskFullError` of an inner writer (a file of this output) is re-worded for ``where``,
    keeping the name of the file that did not fit. Other errors pass."""
    try:
        yield
    except DiskFullError as exc:
        if isinstance(exc.__cause__, OSError):
            raise disk_full_error(where, exc.__cause__, needed, what, getattr(exc, "filename", None)) from exc.__cause__
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(where, exc, needed, what, filename) from exc
        raise
