"""Atomic file and directory writes: a failure never leaves a half-written output behind.

Writers produce a temporary sibling (same directory, so ``os.replace`` is atomic on POSIX and
Windows) and rename it into place only after they finished without error. Temporary names carry
the writing process' id (``.fourd-<kind>-<pid>-...``), so a later run can tell leftovers of a
killed process (SIGKILL, power loss) from another run's work in progress and remove them
(:func:`remove_stale_temporaries`). Finished files and folders get the usual permissions
(``0666`` / ``0777`` minus the umask), not the private ``0600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from .disk import check_free_space, disk_full_as_error, disk_full_error, is_disk_full

#: Leftovers older than this (seconds) are removed even when their process id is in use again.
STALE_AFTER_S = 24 * 3600
#: Kinds of temporaries; only these are recognised as ours (cleaned when stale, published on commit).
TEMP_KINDS = ("tmp", "export", "old", "dir")
_TEMP_NAME = re.compile(rf"^\.fourd-({'|'.join(TEMP_KINDS)})-(\d+)-")
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read without changing it for longer than two system calls)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _publish(path: Path, directory: bool = False) -> None:
    """Give a finished temporary file/folder the permissions a plain ``open``/``mkdir`` would."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def temp_prefix(kind: str) -> str:
    """``.fourd-<kind>-<pid>-``: the prefix of this process' temporaries.

    Raises:
        ValueError: ``kind`` is not one of :data:`TEMP_KINDS` (its leftovers would never be cleaned).
    """
    if kind not in TEMP_KINDS:
        raise ValueError(f"temporary kind must be one of {TEMP_KINDS}, got {kind!r}")
    return f".fourd-{kind}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    The temporary name keeps the suffix of ``path`` (writers such as imageio pick the format from
    it). On any exception (KeyboardInterrupt and SystemExit included) the temporary file is removed
    and ``path`` is left untouched.

    Raises:
        DiskFullError: the disk or quota filled up while writing (:mod:`fourd_core.util.disk`).
    """
    path = Path(path)
    with disk_full_as_error(path, what=path.name, filename=path.name):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix("tmp") + path.stem[:40] + ".", suffix=f".tmp{path.suffix}",
                                   dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        try:
            yield tmp
            _publish(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsync before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def make_temp_dir(parent: str | Path, kind: str = "dir") -> Path:
    """A new private temporary folder ``parent/.fourd-<kind>-<pid>-XXXX`` (see :func:`remove_stale_temporaries`).

    Raises:
        ValueError: an unknown ``kind`` (:func:`temp_prefix`). OSError: ``parent`` is not a writable folder.
    """
    return Path(tempfile.mkdtemp(prefix=temp_prefix(kind), dir=parent))


def replace_path(src: Path, target: Path) -> None:
    """Move ``src`` onto ``target``, replacing an existing file or folder (a folder is swapped out
    first, then deleted). Gives ``src`` the usual permissions if it is one of our temporary folders.

    Raises:
        OSError: the move fails (another file system, or a folder replaced by a file).
    """
    if src.is_dir() and _TEMP_NAME.match(src.name):
        _publish(src, directory=True)
    if target.is_dir() and not target.is_symlink():
        old = make_temp_dir(target.parent, "old")
        os.replace(target, old / "x")
        os.replace(src, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, target)


@contextlib.contextmanager
def atomic_directory(path: str | Path, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` (an existing one is removed).

    On failure the temporary directory is deleted and ``path`` is untouched.

    Args:
        needed_bytes: optional lower bound of what will be written, checked against the free space
            first (:func:`fourd_core.util.disk.check_free_space`) and named in a disk-full error.
    Raises:
        DiskFullError: not enough room, before or while writing.
    """
    path = Path(path)
    with disk_full_as_error(path, needed_bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(path.parent)
        try:
            if needed_bytes:
                check_free_space(path.parent, needed_bytes)
            yield tmp
            replace_path(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill would terminate it; rely on the age rule instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete leftovers of killed runs in ``folder``: entries named ``.fourd-<kind>-<pid>-...`` whose
    process no longer exists, or that are older than ``max_age_s``. Another live run's temporaries
    are kept. Returns the removed paths; errors are ignored (best effort)."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if not m:
            continue
        try:
            old = now - entry.lstat().st_mtime > max_age_s
        except OSError:
            continue
        if old or not _process_alive(int(m.group(2))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(entry)
    return removed


def _not_writable(path: Path, what: str, exc: OSError):
    """The :class:`~fourd_core.errors.InputError` for an ``OSError`` met creating or writing ``path``."""
    from ..errors import InputError

    if is_disk_full(exc):
        return disk_full_error(path, exc)
    reason = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "read-only file system", errno.ENAMETOOLONG: "a name is too long"}.get(
        exc.errno, exc.strerror or str(exc))
    return InputError(f"{what} {path} is not writable ({reason}). Choose a folder you can write to.")


def _make_output_dir(path: Path, what: str) -> Path:
    """Create ``path`` (and its parents) if needed; the errors of :func:`ensure_writable_dir`."""
    from ..errors import InputError

    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{what} {path} cannot be created: {parent} is a file. Choose another folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _not_writable(path, what, exc) from exc
    return path


def ensure_writable_dir(path: str | Path, what: str = "Output folder") -> Path:
    """Create ``path`` if needed and prove it is writable by creating and deleting a probe file.

    Call it before expensive work so a bad ``--out`` fails in a second, not after sampling.

    Raises:
        fourd_core.errors.InputError: ``path`` (or a parent) is a file, or the folder cannot be
        created or written (read-only, no permission, name too long); the message names the fix.
    """
    path = _make_output_dir(Path(path).expanduser(), what)
    try:
        fd, probe = tempfile.mkstemp(prefix=temp_prefix("tmp") + "probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _not_writable(path, what, exc) from exc
    return path


@contextlib.contextmanager
def writable_output_dir(path: str | Path, what: str = "Output folder", *, probe: bool = True) -> Iterator[Path]:
    """:func:`ensure_writable_dir` for the duration of a job: folders it had to create are removed
    again (when still empty) if the job fails, so a failed run leaves the file system as it was.
    ``probe=False`` only creates the folder, for a caller whose first write is the check.

    Raises:
        fourd_core.errors.InputError: see :func:`ensure_writable_dir`.
    """
    path = Path(path).expanduser()
    created = [p for p in (path, *path.parents) if not p.exists()]
    out = ensure_writable_dir(path, what) if probe else _make_output_dir(path, what)
    try:
        yield out
    except BaseException:
        for d in created:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


@contextlib.contextmanager
def staged_output(out_dir: str | Path, what: str = "Output folder",
                  needed_bytes: int | None = None) -> Iterator[tuple[Path, Path]]:
    """Write several entries into ``out_dir`` all-or-nothing.

    Yields ``(staging, out)``: write into the private folder ``staging``; when the block ends
    without error (and no stop was requested, :func:`fourd_core.interrupts.raise_if_stop_requested`)
    every entry of ``staging`` replaces its namesake in ``out``; other entries of ``out`` are kept.
    The commit holds :func:`fourd_core.util.locks.folder_lock` on ``out``, so a second writer
    into the same folder waits and the folder holds one run's entries, never a mix. On any error
    ``out`` is left as it was (a folder this call created is removed again) and the staging
    folder is deleted. Stale staging of dead processes is removed first.

    Args:
        needed_bytes: optional lower bound of the bytes to be written, checked against the free
            space before anything is written and named in a disk-full error.
    Raises:
        InputError: ``out_dir`` cannot be created or written (:func:`writable_output_dir`).
        DiskFullError: not enough room, before or while writing (nothing partial is left).
        LockTimeout: another writer kept ``out`` locked too long.
        KeyboardInterrupt / Terminated: a stop request remembered before the commit.
    """
    from ..interrupts import raise_if_stop_requested
    from .locks import folder_lock

    # no probe file: creating the staging folder is the writability check (a caller such as the
    # generate CLI has already probed the folder once, before the expensive work)
    with writable_output_dir(out_dir, what, probe=False) as out:
        remove_stale_temporaries(out)
        try:
            staging = make_temp_dir(out, "export")
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(out, exc, needed_bytes) from exc
            raise _not_writable(out, what, exc) from exc
        try:
            if needed_bytes:
                check_free_space(out, needed_bytes)
            with disk_full_as_error(out, needed_bytes):
                yield staging, out
                raise_if_stop_requested()
                with folder_lock(out, what):
                    for entry in sorted(staging.iterdir()):
                        replace_path(entry, out / entry.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
