"""Step caches for the diffusers path: the one table of cache names, what their value means, how
each maps onto a diffusers cache hook (``transformer.enable_cache(config)``) and why the others
are refused. The CLI (``generate --cache``), the sampler node's combo and their help text all read
:data:`STEP_CACHES`.

Usable with the 4DNeX patches (diffusers 0.42 hooks; checked on the tiny model by
``tests/test_step_cache.py``):

* ``first_block`` (diffusers ``FirstBlockCacheConfig``, ParaAttention's First Block Cache): every
  evaluation runs block 0; when the relative mean change of block 0's residual since the last full
  evaluation of the same pass (``cond`` / ``uncond``) is at most ``threshold`` the other blocks are
  skipped and their cached residual is added. Value: the threshold; 0 computes every step.
* ``taylorseer`` (``TaylorSeerCacheConfig`` lite mode, TaylorSeer, arXiv 2503.06923): after 3
  full warm-up steps the blocks run every ``reuse + 1`` steps; in between, the output projection is
  extrapolated to first order from the last full steps and no block runs. Value: ``reuse``; 0
  computes every step.

The 4DNeX patches sit outside the blocks (a forward hook on ``patch_embedding`` and the wrapper
module that *is* ``rope``), so they run in every evaluation, cached or not; the caches keep one
state per ``cache_context`` (the Wan pipeline's ``cond`` and ``uncond`` passes).

Refused (each with its reason, also in :data:`STEP_CACHES`): ``mag`` (MagCache), ``faster``
(FasterCache), ``pab`` (Pyramid Attention Broadcast), ``sea`` (SeaCache). Every cache is refused
with context parallelism (``--parallel``) and by the grid samplers (:func:`refuse_for_grid`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

from ..errors import InputError

NONE = "none"


@dataclasses.dataclass(frozen=True)
class StepCache:
    """One entry of the table.

    Attributes:
        name: the CLI / node value. label: one line for help texts and logs.
        value_name, default, value_help: the cache's one number (``None`` for a refused cache).
        build: ``build(value, transformer, pipe) -> diffusers cache config`` (None when refused).
        refused: why the cache cannot be used here, or None when it can.
        skipped_work: what a skipped evaluation does not run (for tests and the bench).
        config_class: the ``diffusers.hooks`` config class it needs (older diffusers lack some).
        warmup: leading steps that always run in full (per CFG pass).
        skip_all: a value that skips every step after the warm-up (for timing a skipped step).
    """

    name: str
    label: str
    value_name: str | None = None
    default: float | None = None
    value_help: str = ""
    build: Callable | None = None
    refused: str | None = None
    skipped_work: str = ""
    config_class: str | None = None
    warmup: int = 0
    skip_all: float | None = None


def _first_block(value, transformer, pipe):
    from diffusers.hooks import FirstBlockCacheConfig

    return FirstBlockCacheConfig(threshold=float(value))


def _taylorseer(value, transformer, pipe):
    import torch
    from diffusers.hooks import TaylorSeerCacheConfig

    reuse = int(round(value))
    return TaylorSeerCacheConfig(cache_interval=reuse + 1, disable_cache_before_step=3, max_order=1,
                                 use_lite_mode=True, taylor_factors_dtype=torch.float32)


STEP_CACHES: dict[str, StepCache] = {c.name: c for c in (
    StepCache(NONE, "no step cache: every step runs the whole DiT"),
    StepCache("first_block", "First Block Cache (diffusers FirstBlockCacheConfig)", "threshold", 0.05,
              "relative change of block 0's residual below which the other blocks are skipped (0: never skip; "
              "higher: faster, less exact)", _first_block,
              skipped_work="blocks 1..L-1 (block 0, the embeddings and the head still run)", config_class="FirstBlockCacheConfig", warmup=1, skip_all=1e9),
    StepCache("taylorseer", "TaylorSeer lite (diffusers TaylorSeerCacheConfig, use_lite_mode)", "reuse", 4,
              "steps extrapolated between two full steps, after 3 full warm-up steps (0: never skip)", _taylorseer,
              skipped_work="every block (the embeddings and the head still run)", config_class="TaylorSeerCacheConfig", warmup=3, skip_all=1e6),
    StepCache("mag", "MagCache (diffusers MagCacheConfig)",
              refused="MagCache needs magnitude ratios calibrated for the checkpoint and scheduler; diffusers ships "
                      "them for Flux only, none for Wan2.1-I2V / 4DNeX. Use first_block or taylorseer."),
    StepCache("faster", "FasterCache (diffusers FasterCacheConfig)",
              refused="FasterCache expects the conditional and unconditional CFG passes as one batch of two; the Wan "
                      "I2V pipeline runs them as two calls of batch 1 (diffusers 0.42: IndexError in its attention "
                      "hook). Use first_block or taylorseer."),
    StepCache("pab", "Pyramid Attention Broadcast (diffusers PyramidAttentionBroadcastConfig)",
              refused="Pyramid Attention Broadcast keeps one attention state per layer, not one per cache context: "
                      "with the Wan pipeline's separate conditional and unconditional passes the unconditional pass "
                      "would reuse the conditional pass's attention. Use first_block or taylorseer."),
    StepCache("sea", "SeaCache (diffusers SeaCacheConfig)",
              refused="SeaCache needs the scheduler step, sigma and step count in cache_context(); diffusers' Wan "
                      "I2V pipeline (0.42) passes only the name, so SeaCache never skips (fail-open). Use first_block "
                      "or taylorseer."),
)}

#: every name (the CLI accepts them all; a refused one exits with its reason)
CACHE_NAMES = tuple(STEP_CACHES)
#: the names that work (the sampler node's combo)
USABLE_CACHES = tuple(n for n, c in STEP_CACHES.items() if c.refused is None)


def cache_help() -> str:
    """One help text for the CLI option and the node tooltip, from :data:`STEP_CACHES`."""
    usable = "; ".join(f"{c.name}: {c.label}, value = {c.value_name} (default {c.default:g}): {c.value_help}"
                       for c in STEP_CACHES.values() if c.refused is None and c.build is not None)
    refused = ", ".join(n for n, c in STEP_CACHES.items() if c.refused)
    return (f"skip DiT work on steps whose result barely changes. {usable}. Refused here, with the reason: {refused}. "
            "Not with --parallel or the grid samplers.")


def resolve_cache(name: str | None, value: float | None = None) -> tuple[StepCache, float | None]:
    """The table entry and the value to use (``value`` or the entry's default).

    Raises:
        InputError: an unknown or refused name (with the reason), or a bad value.
    """
    entry = STEP_CACHES.get(name or NONE)
    if entry is None:
        raise InputError(f"Unknown step cache {name!r}; use one of {', '.join(CACHE_NAMES)}.")
    if entry.refused:
        raise InputError(f"Step cache {entry.name!r} is refused: {entry.refused}")
    if entry.build is None:
        return entry, None
    import diffusers
    import diffusers.hooks

    if not hasattr(diffusers.hooks, entry.config_class):
        raise InputError(f"Step cache {entry.name!r} needs diffusers.hooks.{entry.config_class}, which diffusers "
                         f"{diffusers.__version__} lacks; upgrade diffusers (0.42 has it) or use --cache none.")
    v = entry.default if value is None else float(value)
    if not (v >= 0 and v < float("inf")):
        raise InputError(f"The {entry.name} cache's {entry.value_name} must be a finite number >= 0, got {value}.")
    return entry, v


def refuse_for_grid(transformer) -> None:
    """Raise if a diffusers cache hook is enabled on ``transformer`` (call before grid sampling).

    Raises:
        InputError: the two-stream grid runs every block twice per DiT pass (rows, then columns,
            from a block hook) and the grid denoises several windows per step through one model;
            a step cache keeps one residual per block and cache context, so it would mix the two
            streams and carry one window's state into the next.
    """
    if getattr(transformer, "_cache_config", None) is not None:
        raise InputError("A step cache is enabled on this transformer, but the grid samplers cannot use one: the "
                         "two-stream grid runs every block twice per DiT pass (rows, then columns) and the grid "
                         "denoises several windows per step, while a step cache keeps one residual per block. "
                         "Sample the grid without a cache.")


def _refuse_parallel(transformer) -> None:
    from diffusers.hooks import HookRegistry

    registry = getattr(transformer, "_diffusers_hook", None)
    cfg_parallel = isinstance(registry, HookRegistry) and registry.get_hook("fourd_cfg_parallel") is not None
    if getattr(transformer, "_parallel_config", None) is not None or cfg_parallel:
        raise InputError("A step cache cannot be combined with --parallel: each rank would decide on its own shard "
                         "or pass whether to skip, and the ranks' collectives must match. Drop --cache or --parallel.")


class CacheStats:
    """Counts, with forward hooks, what the DiT did during a sampling run.

    Attributes:
        evaluations: DiT forwards (``patch_embedding`` calls; each CFG pass is one).
        fourdnex_applied: forwards in which the 4DNeX domain embeddings were on.
        full: forwards in which the last block's feed-forward ran (a fully computed evaluation).
    """

    def __init__(self, transformer):
        self.evaluations = self.fourdnex_applied = self.full = 0
        self._handles = [transformer.patch_embedding.register_forward_hook(self._on_patch),
                         transformer.blocks[-1].ffn.register_forward_hook(self._on_tail)]
        self._transformer = transformer

    def _on_patch(self, module, args, output):
        self.evaluations += 1
        self.fourdnex_applied += bool(getattr(self._transformer, "_fourdnex_enabled", False))

    def _on_tail(self, module, args, output):
        self.full += 1

    @property
    def skipped(self) -> int:
        """Evaluations in which the last block did not run."""
        return self.evaluations - self.full

    def summary(self) -> str:
        return f"{self.skipped}/{self.evaluations} DiT evaluations skipped"

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@contextlib.contextmanager
def step_cache_enabled(transformer, name: str | None, value: float | None = None, *, pipe=None):
    """Enable the step cache ``name`` on a diffusers ``WanTransformer3DModel`` for the ``with`` body
    (fresh state; removed on exit, also on errors and cancellation). ``"none"`` / None: no cache.

    Yields:
        :class:`CacheStats` counting the evaluations of the body.
    Raises:
        InputError: unknown / refused cache, a bad value, context parallelism, or a cache already
            enabled on the model.
    """
    entry, v = resolve_cache(name, value)
    if entry.build is not None:
        _refuse_parallel(transformer)
        if getattr(transformer, "_cache_config", None) is not None:
            raise InputError("A step cache is already enabled on this transformer; disable it first "
                             "(transformer.disable_cache()).")
        transformer.enable_cache(entry.build(v, transformer, pipe))
    stats = CacheStats(transformer)
    try:
        yield stats
    finally:
        stats.remove()
        if entry.build is not None:
            transformer.disable_cache()
