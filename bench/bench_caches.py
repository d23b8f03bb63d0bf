"""Step caches on the diffusers path (``--cache``, ``fourd_core.models.step_cache``) on the tiny
random-weight preset: for each usable cache and a sweep of its value, the fraction of DiT
evaluations skipped, the latent difference against the uncached run with the same seed, and the
sampling time as a ratio to the uncached run in the same process.

    python bench/bench_caches.py                      # CPU, tiny preset, 20 steps
    python bench/bench_caches.py --steps 50 --frames 13

Random weights: the skip fractions say how the caches' rules behave on this model's residuals, not
what the released 4DNeX weights will skip (the GPU session, bench/gpu_session.sh, times a computed
and a skipped step at the real size; the speed-up at a skip fraction f is 1 / (1 - f + f * c) with
c = skipped / plain step time). The native path's EasyCache / LazyCache: tests/comfyui/test_native_cache.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SWEEPS = {"first_block": [0.0, 0.05, 0.1, 0.2, 0.4, 0.8], "taylorseer": [0, 1, 2, 4]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--width", type=int, default=80)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from fourd_core.models.loading import ModelSpec
    from fourd_core.pipelines.assemble import load_pipeline
    from fourd_core.models.memory import MemoryConfig
    from fourd_core.models.step_cache import STEP_CACHES, step_cache_enabled
    from fourd_core.pipelines.fourdnex import SamplingConfig, generate_latents

    pipe, _ = load_pipeline(ModelSpec(base="tiny", dtype="float32"), MemoryConfig(device="cpu"))
    image = torch.rand(args.height, args.width, 3, generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(num_frames=args.frames, height=args.height, width=args.width, steps=args.steps, seed=args.seed)

    def run(name, value):
        with step_cache_enabled(pipe.transformer, "none") as stats:  # counts only; the cache comes from cfg
            t = time.perf_counter()
            out = generate_latents(pipe, image, "a street", dataclasses.replace(cfg, cache=name, cache_value=value))
            return out, time.perf_counter() - t, stats

    run("none", None)  # warm-up (first-call allocations)
    ref, t_ref, stats = run("none", None)
    print(f"tiny preset, {args.frames} frames, {args.height}x{args.width} per modality, {args.steps} steps, CFG 5 "
          f"({stats.evaluations} DiT evaluations), seed {args.seed}, {args.threads} threads; uncached {t_ref:.2f} s")
    print(f"{'cache':<12} {'value':>6} | {'skipped':>14} | {'max |diff|':>10} | {'rel. L2':>8} | {'time ratio':>10}")
    for name, values in SWEEPS.items():
        entry = STEP_CACHES[name]
        for value in values:
            out, t, stats = run(name, value)
            d = out - ref
            frac = stats.skipped / max(stats.evaluations, 1)
            print(f"{name:<12} {value:>6g} | {stats.skipped:>3}/{stats.evaluations:<3} {frac:5.0%} | "
                  f"{d.abs().max().item():>10.3g} | {(d.norm() / ref.norm()).item():>8.3g} | {t / t_ref:>10.3f}")
        print(f"  {entry.value_name} (default {entry.default:g}): {entry.value_help}")
    print(f"latents: max |ref| {ref.abs().max().item():.3g}. Time ratios: on the tiny model the DiT is a small part of a "
          "step and the hooks' Python overhead shows; the real-size cost of a skipped step is the GPU session's "
          "cache rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
