"""Cross-process locks: one writer at a time commits into an output folder, and a shared cache entry
(the tiny presets under ``$FOURD_CACHE``, anything built once and then read by many processes) is
built by exactly one process while the others wait and then read the same complete entry.

* :func:`folder_lock`: an exclusive lock on a folder, held while a writer moves its staged files
  into it (:func:`fourd_core.util.atomic.staged_output`), so two exports into one folder can never
  interleave their files. POSIX: ``flock`` on the folder itself (nothing is created in it);
  elsewhere a ``.fourd-commit.lock`` file in it (the ``filelock`` library).
* :func:`build_once`: a ``filelock`` lock file beside the cache entry; the entry is built in a
  temporary sibling and renamed into place, and a complete entry is never replaced (another process
  may be reading it).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from ..errors import FourDError

#: How long a writer waits for another writer's commit into the same folder (commits take seconds).
COMMIT_WAIT_S = 600.0
#: How long a process waits for another process building a shared cache entry.
BUILD_WAIT_S = 1800.0


class LockTimeout(FourDError):
    """Another process held a lock for longer than the wait allowed (the message says who and what to do)."""


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "Output folder", timeout_s: float = COMMIT_WAIT_S,
                poll_s: float = 0.05) -> Iterator[None]:
    """Hold an exclusive cross-process lock on the existing folder ``folder`` for the block.

    Raises:
        LockTimeout: another process kept the folder locked for ``timeout_s`` seconds.
        OSError: the folder cannot be opened.
    """
    folder = Path(folder)
    deadline = time.monotonic() + timeout_s
    busy = (f"{what} {folder} is being written by another FourD run (it kept it locked for {timeout_s:.0f} s). "
            "Wait for that run to finish, or choose another output folder.")
    try:
        import fcntl
    except ImportError:  # Windows: a lock file inside the folder (filelock removes it on release there)
        from filelock import FileLock, Timeout

        try:
            with FileLock(str(folder / ".fourd-commit.lock"), timeout=timeout_s):
                yield
        except Timeout:
            raise LockTimeout(busy) from None
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(busy) from None
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def build_once(target: str | Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool], *,
               what: str = "cache entry", timeout_s: float = BUILD_WAIT_S) -> Path:
    """Make the folder ``target`` exactly once across processes and return it.

    If ``is_complete(target)``, return at once. Otherwise take the lock file ``<target>.lock`` (waiting
    while another process builds), check again, and if still incomplete build into a temporary sibling
    folder (``build(tmp)``) that replaces any incomplete leftover at ``target`` in one rename. A
    complete entry is never replaced, so a process reading it is never disturbed.

    Raises:
        LockTimeout: another process held the build lock for ``timeout_s`` seconds.
        RuntimeError: ``build`` finished but ``is_complete`` still says no (a bug in ``build``).
        whatever ``build`` raises (nothing is left behind).
    """
    from filelock import FileLock, Timeout

    from .atomic import atomic_directory

    target = Path(target)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(target) + ".lock", timeout=timeout_s):
            if is_complete(target):
                return target
            with atomic_directory(target) as tmp:
                build(tmp)
                if not is_complete(tmp):
                    raise RuntimeError(f"building the {what} {target} left it incomplete")
    except Timeout:
        raise LockTimeout(f"Another process has been building the {what} {target} for {timeout_s:.0f} s. If no such "
                          f"process runs any more, delete {target}.lock and try again.") from None
    return target
