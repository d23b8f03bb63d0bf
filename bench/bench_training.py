"""The trainer (``fourd_core.training``, ``python -m fourd_core train``) on the tiny preset, CPU, in one run:

1. **Held-out velocity-matching loss of trained sync layers.** Synthetic clips with smooth, learnable motion
   (three drifting colour gratings and a blob on a straight path, written as PNG frame folders) become
   pseudo-4D grids (:class:`~fourd_core.training.data.PseudoGridSource`, 4Real-Video Sec. 3.3 (1)) with
   clearly non-trivial view transforms (up to 20 deg rotation, 25 % scale, 15 % translation, 8 deg shear),
   seeded by each clip's name, so held-out grids have unseen transforms too. The data are split by clip:
   ``hard`` and ``soft`` sync layers are trained with :func:`~fourd_core.training.runner.train` on the
   training clips' cache; every mode is then scored on a cache of *other* clips, never trained on, with the
   same fixed (noise, noise level) draws, through the trainer's own loss (``_GridObjective.sample_loss``: the
   sampler's engine from ``make_engine``, the known latents as the sampler gives them, the masked velocity
   MSE): the trained layers (read back from the run's ``sync_weights.safetensors`` with
   :func:`~fourd_core.models.sync.load_sync_weights`, as the sampler loads them), the training-free
   ``soft_avg`` and averaging ``hard`` (no layers: Eq. 12), and for reference ``rows`` (independent rows) and
   "predict 0" (an engine returning zero velocity). Issue target: trained / training-free <= 0.9.

   * **A.** the tiny preset as it is (random weights) - what the issue names;
   * **B.** the same DiT first fitted, all weights, to plain I2V on the training clips' rows (bench-side
     AdamW loop on the trainer's loss, ``rows`` engine), written as a diffusers base folder and frozen; then
     the same sync training and scoring on it. A random DiT predicts worse than zero, so in A any trained
     layer gains by taming its output (compare it with "predict 0"); B, whose fitted DiT predicts better
     than zero, is the analogue of the papers' pretrained base, and there the gain from the sync layers
     alone is the honest measure (it is much smaller than in A).

2. **Steps per second of each objective** (sync hard, sync soft, fused, 4DNeX lora) at batch 1 through the
   real loop (accelerate, AdamW, clipping, schedule, final checkpoint):
   ``(min train_s(b) - min train_s(a)) / (b - a)`` over interleaved rounds of runs of ``a`` and ``b`` steps,
   which removes the warm-up of the first steps and the final checkpoint; times against the sync-soft step
   of the same process. The lora objective trains on a 4DNeX cache of synthetic ``scene.safetensors`` files
   (32 x 48, 5 frames). A tiny-preset step takes about 10 ms, mostly Python and small kernels, so these ratios
   check the loop, not the cost of each objective on Wan2.1-14B; and while other jobs hold the cores, torch's
   thread pool stalls and the ratios move by several times: measure them on an idle machine.

    python bench/bench_training.py              # defaults (about 1 minute on 2 idle cores; 14 when other jobs hold them)
    python bench/bench_training.py --quick      # CI-sized smoke run (about 10 s; meaningless numbers)

Tuning: the settings (clips, steps, learning rates, fit steps) were chosen looking at the held-out clips of
``--heldout-seed 1`` only; the default ``--heldout-seed 2`` clips were first scored with the settings fixed
(B misses the 0.9 target on both).
Random-weight caveat: these numbers say that the trained layers, written and read back through the pack's
files, learn from the grid objective and carry over to unseen clips on this toy model - not how much trained
sync improves Wan2.1-14B (4Real-Video Table 1).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULTS = dict(train_clips=16, heldout_clips=8, views=3, frames=9, height=32, width=48, steps=600, lr=1e-2,
                fit_base_steps=300, fit_base_lr=3e-3, eval_draws=4, speed_steps=(5, 45), speed_rounds=3)
QUICK = dict(train_clips=3, heldout_clips=2, views=3, frames=5, height=32, width=48, steps=10, lr=1e-2,
             fit_base_steps=10, fit_base_lr=3e-3, eval_draws=1, speed_steps=(2, 8), speed_rounds=1)
#: the view transforms of the pseudo-4D grids (larger than PseudoGridConfig's defaults: clearly non-trivial)
TRANSFORMS = dict(max_rotation_deg=20.0, max_scale=0.25, max_translation=0.15, max_shear_deg=8.0, curvature=0.5)


# ----------------------------------------------------------------------------------------------
# data
def write_clip(folder: Path, seed: int, frames: int, height: int, width: int) -> Path:
    """One synthetic clip as numbered PNG frames: three drifting colour gratings and a blob on a straight path.

    Every frame is a smooth function of time (constant velocities), so the motion is learnable."""
    import imageio.v2 as imageio

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.meshgrid(np.arange(height) / height, np.arange(width) / width, indexing="ij")
    gratings = []
    for _ in range(3):
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(1.5, 4.0)
        speed = rng.uniform(0.03, 0.08) * rng.choice([-1, 1])        # cycles per frame
        colour = rng.uniform(-0.25, 0.25, 3)
        gratings.append((np.cos(theta), np.sin(theta), freq, speed, rng.uniform(0, 2 * np.pi), colour))
    base = rng.uniform(0.3, 0.7, 3)
    blob_colour = rng.uniform(0, 1, 3)
    p0, vel = rng.uniform(0.25, 0.75, 2), rng.uniform(-0.04, 0.04, 2)
    for t in range(frames):
        img = np.broadcast_to(base, (height, width, 3)).copy()
        for cx, cy, f, s, ph, col in gratings:
            img += col * np.sin(2 * np.pi * (f * (cx * x + cy * y) - s * t) + ph)[..., None]
        bx, by = p0 + vel * t
        blob = np.exp(-(((x - bx) * width / height) ** 2 + (y - by) ** 2) / (2 * 0.12 ** 2))
        img = img * (1 - 0.8 * blob[..., None]) + 0.8 * blob[..., None] * blob_colour
        imageio.imwrite(folder / f"{t:03d}.png", (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    return folder


def grid_cache(root: Path, name: str, seeds: list[int], args, encoders) -> Path:
    """A latent cache of pseudo-4D grids made from the clips of ``seeds``."""
    from fourd_core.training.data import CacheConfig, GridDataConfig, PseudoGridConfig, PseudoGridSource, prepare

    clips = [write_clip(root / "clips" / f"clip{s:04d}", s, args.frames, args.height, args.width) for s in seeds]
    source = PseudoGridSource(clips, GridDataConfig(views=args.views, frames=args.frames, height=args.height,
                                                    width=args.width), PseudoGridConfig(**TRANSFORMS, seed=7))
    cache = root / name
    prepare(source, cache, encoders, CacheConfig(latent="mode"), rank=0, world_size=1, log=lambda m: None)
    return cache


def scene_cache(root: Path, encoders, n: int = 2) -> Path:
    """A 4DNeX latent cache from synthetic ``scene.safetensors`` files (32 x 48, 5 frames)."""
    from fourd_core.testing.synthetic_scene import write_pointmap_scenes
    from fourd_core.training.data import CacheConfig, FourDNeXDataConfig, SceneSource, prepare

    h, w, frames = 32, 48, 5
    write_pointmap_scenes(root / "scenes", n, frames, h, w)
    cache = root / "cache_4dnex"
    prepare(SceneSource(root / "scenes", FourDNeXDataConfig(height=h, width=w, num_frames=frames)), cache, encoders,
            CacheConfig(latent="mode"), rank=0, world_size=1, log=lambda m: None)
    return cache


# ----------------------------------------------------------------------------------------------
# training
def run_config(cache: Path, out: Path, objective: str, steps: int, base: str = "tiny", **kw):
    from fourd_core.training.config import TrainConfig

    return TrainConfig(objective=objective, cache=str(cache), out=str(out), base=base, steps=steps,
                       validation_fraction=0.0, validate_every=0, preview_steps=0, checkpoint_every=max(steps, 1),
                       keep_checkpoints=1, log_every=max(steps, 1), **kw)


def train_quiet(cfg) -> dict:
    """``train(cfg)`` with its progress bar and messages silenced (the summary is returned)."""
    import contextlib
    import io

    from fourd_core.training.runner import train

    with contextlib.redirect_stderr(io.StringIO()):
        return train(cfg, log=lambda m: None)


# ----------------------------------------------------------------------------------------------
# evaluation
def evaluator(transformer, mode: str, sync, seed: int):
    """An objective whose engine is ``make_engine(transformer, mode, sync=sync)``: the trainer's own
    ``sample_loss`` (inputs, known latents, masked velocity MSE) for a training-free or trained mode."""
    from fourd_core.pipelines.grid import make_engine
    from fourd_core.training.config import TrainConfig
    from fourd_core.training.objectives import _GridObjective

    class Evaluator(_GridObjective):
        def engine(self):
            return make_engine(self.transformer, mode, sync=sync)

    return Evaluator(transformer, TrainConfig(objective="sync", seed=seed)).eval()


class ZeroEngine:
    """An engine that predicts zero velocity (the reference "predict 0": loss = masked mean of (e - x)^2)."""

    column_clip = None

    def installed(self):
        import contextlib

        return contextlib.nullcontext(self)

    def predict(self, latent_input, timestep, text, row_clip):
        return latent_input.new_zeros(latent_input.shape[0], 16, *latent_input.shape[2:])


def zero_evaluator(transformer, seed: int):
    from fourd_core.training.config import TrainConfig
    from fourd_core.training.objectives import _GridObjective

    class Zero(_GridObjective):
        def engine(self):
            return ZeroEngine()

    return Zero(transformer, TrainConfig(objective="sync", seed=seed)).eval()


@torch.no_grad()
def mean_loss(objective, dataset, draws: int) -> tuple[float, float]:
    """Mean and standard error (over samples) of the loss over every sample of ``dataset``, each with the
    fixed draws ``step = 0 .. draws - 1`` of :func:`~fourd_core.training.objectives.sample_noise`."""
    from fourd_core.training.data import collate_latent_samples

    per_sample = []
    for i in range(len(dataset)):
        batch = collate_latent_samples([dataset[i]])
        per_sample.append(sum(float(objective(batch, step=k)) for k in range(draws)) / draws)
    m = statistics.fmean(per_sample)
    se = statistics.stdev(per_sample) / math.sqrt(len(per_sample)) if len(per_sample) > 1 else float("nan")
    return m, se


# ----------------------------------------------------------------------------------------------
# a fitted base (part B)
def fit_base(transformer, dataset, steps: int, lr: float, seed: int, folder: Path) -> tuple[Path, list[float]]:
    """Fit *every* weight of the tiny DiT to the plain I2V task of the training clips' rows (the ``rows``
    engine and the trainer's own loss), a stand-in for the pretrained video model the papers start from,
    and write it as a diffusers base folder (the tiny preset's other components, this transformer).

    AdamW with diffusers' cosine schedule (5 % warm-up), clipping at 1, one sample per step in a seeded
    order. ``transformer`` keeps the fitted weights (frozen again). Returns ``(folder, training losses)``."""
    import shutil

    from diffusers.optimization import get_scheduler
    from safetensors.torch import load_file, save_file

    from fourd_core.models.loading import ModelSpec, resolve_base
    from fourd_core.training.data import collate_latent_samples

    objective = evaluator(transformer, "rows", None, seed).train()
    params = list(transformer.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=max(1, steps // 20), num_training_steps=steps)
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    for step in range(steps):
        if not order:
            order = torch.randperm(len(dataset), generator=g).tolist()
        loss = objective(collate_latent_samples([dataset[order.pop()]]), step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    transformer.requires_grad_(False).eval()
    tiny, _ = resolve_base(ModelSpec(base="tiny"))
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tiny, folder, ignore=lambda d, names: ["diffusion_pytorch_model.safetensors"]
                    if Path(d).name == "transformer" else [])
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    keys = load_file(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors")).keys()
    state = transformer.state_dict()
    save_file({k: state[k].detach().contiguous() for k in keys}, str(weights))      # stock keys only
    return folder, losses


# ----------------------------------------------------------------------------------------------
# one part: train hard and soft on a base, score every mode
def part(label: str, base: str, transformer, train_cache: Path, held_cache: Path, root: Path, args) -> bool:
    """Train hard and soft sync layers on ``base`` with ``train()``, print the held-out table and the ratios;
    True when both target ratios are <= 0.9."""
    from fourd_core.models.sync import load_sync_weights
    from fourd_core.training.data import GridLatentDataset
    from fourd_core.training.outputs import SYNC_FILE

    trained = {}
    for mode in ("hard", "soft"):
        cfg = run_config(train_cache, root / f"run_{label}_{mode}", "sync", args.steps, base=base, sync_mode=mode,
                         lr=args.lr, warmup=max(1, args.steps // 20), schedule="cosine", seed=args.seed)
        s = train_quiet(cfg)
        trained[mode] = load_sync_weights(Path(cfg.out) / "final" / SYNC_FILE, transformer, mode)
        k = max(1, min(10, len(s["losses"]) // 2))
        print(f"  trained {mode}: {s['steps']} steps, lr {args.lr:g} (cosine, {cfg.warmup} warm-up), seed {args.seed}: "
              f"training loss {statistics.fmean(s['losses'][:k]):.4f} (first {k}) -> "
              f"{statistics.fmean(s['losses'][-k:]):.4f} (last {k}), {s['train_s']:.1f} s")
    seed = 10_000 + args.heldout_seed          # evaluation draws, unrelated to the training seed
    evals = {"rows": evaluator(transformer, "rows", None, seed),
             "soft_avg": evaluator(transformer, "soft_avg", None, seed),
             "hard (avg)": evaluator(transformer, "hard", None, seed),     # no layers: exact averaging (Eq. 12)
             "trained hard": evaluator(transformer, "hard", trained["hard"], seed),
             "trained soft": evaluator(transformer, "soft", trained["soft"], seed),
             "predict 0": zero_evaluator(transformer, seed)}
    held, train_ds = GridLatentDataset(held_cache), GridLatentDataset(train_cache)
    print(f"  velocity-matching loss (masked MSE on the unknown latents; {args.eval_draws} fixed (noise, sigma) draws "
          "per sample; mean +- s.e. over samples)")
    print(f"  {'mode':<13} | {'held-out clips':>17} | {'training clips':>17}")
    losses = {}
    for name, ev in evals.items():
        h, hse = mean_loss(ev, held, args.eval_draws)
        t, tse = mean_loss(ev, train_ds, args.eval_draws)
        losses[name] = h
        print(f"  {name:<13} | {h:>9.4f} +- {hse:<5.3f} | {t:>9.4f} +- {tse:<5.3f}")
    print("  held-out loss ratios (issue target <= 0.9 against the training-free modes):")
    ok = True
    for num, den in (("trained hard", "hard (avg)"), ("trained soft", "soft_avg"), ("trained soft", "hard (avg)"),
                     ("trained hard", "soft_avg"), ("trained soft", "rows"), ("trained soft", "predict 0")):
        r = losses[num] / losses[den]
        target = den in ("hard (avg)", "soft_avg")
        ok &= (r <= 0.9) if target else True
        note = ("meets" if r <= 0.9 else "MISSES") + " <= 0.9" if target else "(reference)"
        print(f"    {num:>12} / {den:<10} = {r:6.3f}  {note}")
    print(f"  target {'met' if ok else 'NOT met'} ({label}, held-out seed {args.heldout_seed})")
    return ok


# ----------------------------------------------------------------------------------------------
# steps per second
def speed(root: Path, train_cache: Path, lora_cache: Path, args) -> None:
    """Seconds per optimiser step of each objective at batch 1 through ``train()``: for every objective
    ``(min train_s(b) - min train_s(a)) / (b - a)`` over the rounds (interleaved), which removes the first
    steps' warm-up and the final checkpoint, and the minimum the other load on a shared machine."""
    jobs = {"sync hard": (train_cache, "sync", {"sync_mode": "hard"}),
            "sync soft": (train_cache, "sync", {"sync_mode": "soft"}),
            "fused": (train_cache, "fused", {"lora_rank": 4, "lora_alpha": 4.0}),
            "lora": (lora_cache, "lora", {"lora_rank": 4, "lora_alpha": 4.0})}
    a, b = args.speed_steps
    times = {k: {a: [], b: []} for k in jobs}
    for rnd in range(args.speed_rounds):
        for name, (cache, objective, kw) in jobs.items():
            for n in (a, b):
                out = root / f"speed_{name.replace(' ', '_')}_{rnd}_{n}"
                times[name][n].append(train_quiet(run_config(cache, out, objective, n, lr=1e-4, warmup=0, **kw))["train_s"])
    per_step = {k: (min(v[b]) - min(v[a])) / (b - a) for k, v in times.items()}
    base = per_step["sync soft"]
    print(f"\nsteps per second at batch 1, tiny preset (grids {args.views} x {args.frames} frames of "
          f"{args.height}x{args.width}; lora: 5 frames of 32x48 per modality; fused and lora LoRA rank 4, alpha 4; "
          f"float32, no checkpointing): (min train_s({b}) - min train_s({a})) / {b - a} over {args.speed_rounds} "
          "interleaved round(s)")
    print(f"  {'objective':<10} | {'s / step':>9} | {'steps / s':>9} | {'time vs sync soft':>17}")
    for name, t in per_step.items():
        print(f"  {name:<10} | {t:>9.4f} | {1 / t if t > 0 else float('nan'):>9.2f} | {t / base:>17.3f}")


# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a CI smoke run")
    ap.add_argument("--train-clips", type=int)
    ap.add_argument("--heldout-clips", type=int)
    ap.add_argument("--views", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--steps", type=int, help="sync training steps")
    ap.add_argument("--lr", type=float, help="sync learning rate")
    ap.add_argument("--fit-base-steps", type=int, help="part B: steps fitting the tiny DiT to I2V first (0: no part B)")
    ap.add_argument("--fit-base-lr", type=float, help="part B: learning rate of that fit")
    ap.add_argument("--eval-draws", type=int, help="fixed (noise, sigma) draws per evaluated sample")
    ap.add_argument("--heldout-seed", type=int, default=2,
                    help="which held-out clips: 2 (default) the reported ones; 1 the clips the settings were tuned on")
    ap.add_argument("--seed", type=int, default=42, help="training seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--keep", help="keep the data, caches and runs in this folder (default: a temporary one)")
    args = ap.parse_args(argv)
    for k, v in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    torch.set_num_threads(args.threads)

    from fourd_core.models.loading import ModelSpec
    from fourd_core.models.memory import MemoryConfig
    from fourd_core.pipelines.assemble import load_pipeline
    from fourd_core.training.data import CacheEncoders, GridLatentDataset

    tmp = None
    if args.keep:
        root = Path(args.keep)
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="fourd-bench-train-")
        root = Path(tmp.name)
    t_start = time.perf_counter()
    pipe, _ = load_pipeline(ModelSpec(base="tiny", fourdnex=None, dtype="float32"), MemoryConfig(device="cpu"))
    enc = CacheEncoders(pipe, "cpu")
    # clip seeds: training 1000 + k, held-out 100000 * heldout_seed + k: disjoint clips
    train_seeds = [1000 + k for k in range(args.train_clips)]
    held_seeds = [100000 * args.heldout_seed + k for k in range(args.heldout_clips)]
    train_cache = grid_cache(root, "cache_train", train_seeds, args, enc)
    held_cache = grid_cache(root, f"cache_heldout{args.heldout_seed}", held_seeds, args, enc)
    lora_cache = None if args.skip_speed else scene_cache(root, enc)
    t_data = time.perf_counter() - t_start

    print(f"bench_training: tiny preset, CPU, {args.threads} threads, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    print(f"grids: {args.views} views x {args.frames} frames of {args.height}x{args.width} (latent "
          f"{args.views} x {(args.frames - 1) // 4 + 1} x {args.height // 8}x{args.width // 8}); view transforms "
          + ", ".join(f"{k} {v:g}" for k, v in TRANSFORMS.items()))
    print(f"clips: {len(train_seeds)} training (seeds {train_seeds[0]}..{train_seeds[-1]}), {len(held_seeds)} held-out "
          f"(seeds {held_seeds[0]}..{held_seeds[-1]}, --heldout-seed {args.heldout_seed}), split by clip; data and "
          f"caches {t_data:.1f} s")

    print("\nA. the tiny preset as it is (random weights)")
    ok_a = part("tiny", "tiny", pipe.transformer, train_cache, held_cache, root, args)
    ok_b = None
    if args.fit_base_steps:
        t = time.perf_counter()
        base, losses = fit_base(pipe.transformer, GridLatentDataset(train_cache), args.fit_base_steps, args.fit_base_lr,
                                args.seed, root / "fitted_base")
        k = max(1, min(20, len(losses) // 2))
        print(f"\nB. the tiny preset with its DiT first fitted to I2V on the training clips' rows (all weights, "
              f"{args.fit_base_steps} steps, lr {args.fit_base_lr:g}: loss {statistics.fmean(losses[:k]):.4f} -> "
              f"{statistics.fmean(losses[-k:]):.4f}, {time.perf_counter() - t:.1f} s), then frozen: a stand-in for "
              "the pretrained base the papers start from")
        ok_b = part("fitted", str(base), pipe.transformer, train_cache, held_cache, root, args)
    if lora_cache is not None:
        speed(root, train_cache, lora_cache, args)
    print(f"\nsummary: target <= 0.9 {'met' if ok_a else 'NOT met'} on the tiny preset (A)"
          + ("" if ok_b is None else f", {'met' if ok_b else 'NOT met'} on the fitted base (B)")
          + f"; total {time.perf_counter() - t_start:.1f} s, load average {os.getloadavg()[0]:.1f} at the end")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
