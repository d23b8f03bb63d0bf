"""Keep one loaded pipeline alive between runs while its model spec and memory settings stay equal.

The ComfyUI nodes pass cheap *specs* between nodes and materialise the pipeline here, so changing
the LoRA strength or an offload option reloads cleanly instead of mutating a cached model in place.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
from typing import Callable

import torch

from .loading import ModelSpec, load_pipeline
from .memory import MemoryConfig


def _key(spec: ModelSpec, memory: MemoryConfig) -> tuple:
    return (dataclasses.astuple(spec), dataclasses.astuple(memory))


class PipelineCache:
    """A one-slot cache of ``(pipe, info)`` keyed by ``(ModelSpec, MemoryConfig)``.

    ``before_load`` / ``after_release`` hooks let a host (ComfyUI) free its own models first
    and empty its caches afterwards.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._key = None
        self._value = None
        self.loads = 0

    def get(self, spec: ModelSpec, memory: MemoryConfig, *, before_load: Callable[[], None] | None = None,
            progress: Callable[[str], None] | None = None):
        """Return the cached pipeline for ``(spec, memory)``, loading (and replacing) it if needed."""
        key = _key(spec, memory)
        with self._lock:
            if self._key == key and self._value is not None:
                return self._value
            self.clear()
            if before_load is not None:
                before_load()
            self._value = load_pipeline(spec, memory, progress=progress)
            self._key = key
            self.loads += 1
            return self._value

    def clear(self) -> None:
        """Drop the cached pipeline and free its memory."""
        with self._lock:
            self._key, self._value = None, None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


#: The process-wide cache used by the CLI and the nodes.
PIPELINES = PipelineCache()
