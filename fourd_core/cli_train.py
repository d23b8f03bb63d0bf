"""``python -m fourd_core train {prepare,sync,fused,lora}``: the latent cache and the three training runs.

Examples::

    # a latent cache of pseudo-4D grids from ordinary videos (4Real-Video Sec. 3.3), the tiny model
    python -m fourd_core train prepare --layout videos --data my_videos/ --cache cache/grid --base tiny \\
        --views 3 --frames 9 --height 32 --width 48

    # the sync layers on it (one process; `accelerate launch --config_file ... -m fourd_core train sync ...`
    # or `torchrun --nproc-per-node 8 -m fourd_core train sync ...` for many GPUs)
    python -m fourd_core train sync --cache cache/grid --out runs/sync --base tiny --steps 200

Every check (settings, the data folder, the cache's kind, a checkpoint's configuration, ``--out``) runs
before any model loads. Exit codes: 0 done, 2 bad input (one line naming the fix), 130 Ctrl-C and 143
SIGTERM (training writes a last checkpoint first; the same command resumes).
"""

from __future__ import annotations

import json
import sys

from .errors import InputError

BASE_HUB_ID = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"      # fourd_core.models.loading.BASE_HUB_ID (no torch import here)
LAYOUT_NAMES = ("videos", "multiview", "4dnex10m", "rgbd", "scenes")
#: TrainConfig fields shown per objective (the rest keep their defaults and are not offered)
COMMON = ("cache", "out", "base", "dtype", "steps", "batch_size", "grad_accum", "lr", "weight_decay", "warmup",
          "schedule", "max_grad_norm", "mixed_precision", "gradient_checkpointing", "seed", "sigma_sampling",
          "sigma_shift", "validation_fraction", "validate_every", "preview_steps", "checkpoint_every",
          "keep_checkpoints", "log_every", "tracker")
PER_OBJECTIVE = {"sync": ("sync_mode", "sync_rank"), "fused": ("lora_rank", "lora_alpha", "fused_backend"),
                 "lora": ("lora_rank", "lora_alpha", "init_release")}
#: 4DNeX's own optimiser settings (Sec. 4 / the official sft config) as the lora command's defaults
LORA_DEFAULTS = {"lr": 2e-5}


def add_parser(sub) -> None:
    """Register ``train`` and its sub-commands on an ``argparse`` sub-parser set."""
    from .settings import add_arguments
    from .training.config import TrainConfig

    t = sub.add_parser("train", help="train the sync layers, the fused LoRA or the 4DNeX LoRA (and cache latents)")
    tsub = t.add_subparsers(dest="train_command", required=True)
    p = tsub.add_parser("prepare", help="encode a dataset into a latent cache (VAE, UMT5, CLIP; resumable)")
    p.add_argument("--layout", required=True, choices=LAYOUT_NAMES,
                   help="videos: pseudo-4D grids from plain videos; multiview: multi-view folders / saved grids "
                        "(both for sync, fused); 4dnex10m, rgbd, scenes: RGB + XYZ clips (for lora)")
    p.add_argument("--data", required=True, help="the dataset folder (layouts: README, Training)")
    p.add_argument("--cache", required=True, help="the latent cache folder (created; a rerun continues it)")
    p.add_argument("--base", default=BASE_HUB_ID, help="the base Wan2.1-I2V model whose encoders make the cache: a hub "
                                                       f"id (default {BASE_HUB_ID}), a diffusers folder, or 'tiny' (the "
                                                       "random toy model); train with the same --base")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="UMT5 dtype while encoding (default float32)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    g = p.add_argument_group("grids (videos, multiview)")
    g.add_argument("--views", type=int, default=8, help="views V per grid (default 8, the paper's 8 x 8)")
    g.add_argument("--frames", type=int, default=49, help="frames T per view, 4k+1 (default 49)")
    g.add_argument("--height", type=int, default=None, help="frame height, multiple of 16 (default 480)")
    g.add_argument("--width", type=int, default=None, help="frame width, multiple of 16 (default 720)")
    g.add_argument("--frame-stride", type=int, default=1, help="take every n-th source frame (default 1)")
    v = p.add_argument_group("pseudo-4D view transforms (videos)")
    v.add_argument("--max-rotation", type=float, default=8.0, help="rotation range, degrees (default 8)")
    v.add_argument("--max-scale", type=float, default=0.1, help="scale range: [1/(1+s), 1+s] (default 0.1)")
    v.add_argument("--max-translation", type=float, default=0.08, help="translation range, fraction of the size "
                                                                       "(default 0.08)")
    v.add_argument("--max-shear", type=float, default=4.0, help="shear range, degrees (default 4)")
    v.add_argument("--curvature", type=float, default=0.5, help="bend of the path over the views, 0..1 (default 0.5)")
    v.add_argument("--transform-seed", type=int, default=0, help="seed of the view transforms (default 0)")
    x = p.add_argument_group("RGB + XYZ clips (4dnex10m, rgbd, scenes; defaults: the released LoRA's data)")
    x.add_argument("--num-frames", type=int, default=49, help="frames per sample, 4k+1 (default 49)")
    x.add_argument("--max-frames", type=int, default=81, help="frames read for the XYZ normalisation (default 81)")
    x.add_argument("--percentile", type=float, default=2.0, help="per-frame XYZ clipping percentile (default 2)")
    x.add_argument("--unprojection", choices=("official", "full"),
                   help="depth -> XYZ: official (fx only, centred principal point; 4dnex10m default) or full "
                        "(fx, fy, cx, cy; rgbd default)")
    x.add_argument("--default-caption", help="caption of samples without one (4dnex10m; default: refuse them)")
    c = p.add_argument_group("cache")
    c.add_argument("--latent", default="sample", choices=("sample", "mode"),
                   help="target latents: a posterior sample (official 4DNeX) or its mean (default sample)")
    c.add_argument("--seed", type=int, default=0, help="seed of the posterior samples (default 0)")
    c.add_argument("--cache-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="storage dtype of latents and embeddings (default float32)")

    for objective, help_text in (("sync", "4Real-Video's sync layers on a frozen Wan DiT (grid cache)"),
                                 ("fused", "a LoRA under 4Real-Video-V2's fused view-time attention (grid cache)"),
                                 ("lora", "4DNeX's rank-64 LoRA and domain embeddings (4DNeX cache)")):
        o = tsub.add_parser(objective, help=help_text)
        names = COMMON[:4] + PER_OBJECTIVE[objective] + COMMON[4:]
        add_arguments(o, TrainConfig, names, defaults=LORA_DEFAULTS if objective == "lora" else None)
    for q in tsub.choices.values():
        q.add_argument("--verbose", action="store_true",
                       help="on an error, also print the underlying library's error and traceback")


def _prepare_sources(args):
    from .training.data import (LAYOUTS, FourDNeXDataConfig, GridDataConfig, PseudoGridConfig, open_source)
    from .training.data.clips import GRID

    if LAYOUTS[args.layout] == GRID:
        grid = GridDataConfig(views=args.views, frames=args.frames, height=args.height or 480,
                              width=args.width or 720, frame_stride=args.frame_stride)
        grid.validate()
        transforms = PseudoGridConfig(max_rotation_deg=args.max_rotation, max_scale=args.max_scale,
                                      max_translation=args.max_translation, max_shear_deg=args.max_shear,
                                      curvature=args.curvature, seed=args.transform_seed)
        transforms.validate()
        return open_source(args.layout, args.data, grid=grid, transforms=transforms)
    fourdnex = FourDNeXDataConfig(height=args.height or 480, width=args.width or 720, num_frames=args.num_frames,
                                  max_frames=args.max_frames, percentile=args.percentile)
    fourdnex.validate()
    return open_source(args.layout, args.data, fourdnex=fourdnex, unprojection=args.unprojection,
                       default_caption=args.default_caption)


def cmd_prepare(args) -> int:
    """``train prepare``: the reader and its settings are checked (and the first sample read) before the
    encoders load; bad samples are reported by name and skipped; the cache is resumable."""
    import torch

    from .models.loading import ModelSpec
    from .models.memory import MemoryConfig
    from .training.data import CacheConfig, CacheEncoders, prepare

    cache = CacheConfig(latent=args.latent, seed=args.seed, dtype=args.cache_dtype, model=args.base)
    cache.validate()
    source = _prepare_sources(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = ModelSpec(base=args.base, fourdnex=None, dtype=args.dtype)
    report = prepare(source, args.cache, lambda: CacheEncoders.from_spec(spec, MemoryConfig(device=device), device),
                     cache, log=lambda m: print(f"[fourd prepare] {m}", file=sys.stderr))
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps({"cache": str(args.cache), "rank": report.rank, "world_size": report.world_size,
                          "written": report.written, "skipped": report.skipped, "bad": report.bad}, indent=1))
    return 0


def cmd_run(args) -> int:
    """``train sync|fused|lora``: :func:`fourd_core.training.runner.train` with the parsed settings."""
    from .interrupts import Terminated
    from .settings import from_arguments
    from .training.config import TrainConfig
    from .training.runner import train

    names = COMMON + PER_OBJECTIVE[args.train_command]
    cfg = TrainConfig(**from_arguments(TrainConfig, args, names, objective=args.train_command))
    try:
        summary = train(cfg)
    except KeyboardInterrupt:
        print("interrupted: a checkpoint was written; run the same command to resume", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated: a checkpoint was written; run the same command to resume", file=sys.stderr)
        return 143
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=1))
    return 0


def cmd_train(args) -> int:
    if args.train_command == "prepare":
        return cmd_prepare(args)
    if args.train_command in PER_OBJECTIVE:
        return cmd_run(args)
    raise InputError(f"Unknown train command {args.train_command!r}.")
