"""Giving freed host memory back to the operating system after a large computation.

A long-running host (a ComfyUI server) runs the same node many times. glibc's allocator keeps the
pages of freed blocks below its ``mmap`` threshold in its arenas, so after a run that peaked at
several GB the process keeps that RSS although Python and torch freed everything.
:func:`release_freed_memory` collects garbage and calls ``malloc_trim(0)`` (glibc only; a no-op
elsewhere), which returns those free pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

_libc = None


def _malloc_trim():
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    return getattr(_libc, "malloc_trim", None) if _libc else None


def release_freed_memory() -> bool:
    """``gc.collect()``, empty the CUDA cache if CUDA is up, then ``malloc_trim(0)`` where glibc has it.
    Returns True when ``malloc_trim`` ran."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
