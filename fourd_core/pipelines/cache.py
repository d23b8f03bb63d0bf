"""Keep one loaded pipeline alive between runs while its model spec and memory settings stay equal.

The ComfyUI nodes pass cheap *specs* between nodes and materialise the pipeline here, so changing
an offload option or a model file reloads cleanly instead of mutating a cached model in place. The
one exception is the strength of an *unfused* 4DNeX LoRA: that adapter's scale is changed in place
(PEFT ``set_adapters``), which costs nothing.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
from typing import Callable

import torch

from ..models.loading import ModelSpec
from .assemble import load_pipeline
from ..models.memory import MemoryConfig


def _key(spec: ModelSpec, memory: MemoryConfig) -> tuple:
    return (dataclasses.astuple(spec), dataclasses.astuple(memory))


def _key_but_strength(spec: ModelSpec, memory: MemoryConfig) -> tuple:
    return _key(dataclasses.replace(spec, lora_strength=0.0), memory)


class PipelineCache:
    """A one-slot cache of ``(pipe, info)`` keyed by ``(ModelSpec, MemoryConfig)``.

    ``before_load`` / ``after_release`` hooks let a host (ComfyUI) free its own models first
    and empty its caches afterwards.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._key = None
        self._spec = None
        self._value = None
        self.loads = 0

    def get(self, spec: ModelSpec, memory: MemoryConfig, *, before_load: Callable[[], None] | None = None,
            progress: Callable[[str], None] | None = None):
        """Return the cached pipeline for ``(spec, memory)``, loading (and replacing) it if needed."""
        key = _key(spec, memory)
        with self._lock:
            if self._key == key and self._value is not None:
                return self._value
            if (self._value is not None and spec.fourdnex and not spec.fuse_lora
                    and _key_but_strength(*self._spec) == _key_but_strength(spec, memory)):
                from ..models.lora import set_fourdnex_strength

                pipe, info = self._value
                scale = set_fourdnex_strength(pipe, spec.lora_strength)
                if isinstance(info.get("lora"), dict):
                    info["lora"]["scale"] = scale
                self._key, self._spec = key, (spec, memory)
                return self._value
            self.clear()
            if before_load is not None:
                before_load()
            self._value = load_pipeline(spec, memory, progress=progress)
            self._key, self._spec = key, (spec, memory)
            self.loads += 1
            return self._value

    def clear(self) -> None:
        """Drop the cached pipeline and free its memory."""
        with self._lock:
            self._key, self._spec, self._value = None, None, None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


#: The process-wide cache used by the CLI and the nodes.
PIPELINES = PipelineCache()
