"""``python -m fourd_core generate --images`` and/or ``--parallel`` (and any ``torchrun`` launch): the command-line
side of :mod:`fourd_core.distributed.batch`, which takes configs only."""

from __future__ import annotations

import json
import sys

from .distributed.batch import plan_items, run_batch, run_scene_parallel
from .distributed.runtime import ParallelSpec, init_distributed
from .errors import InputError
from .job import SceneJob
from .util.atomic import writable_output_dir


def cmd_generate_distributed(args, prompt: str | None, config) -> int:
    """``generate --images`` and/or ``--parallel`` (see :mod:`fourd_core.distributed.batch`).

    Args:
        args: parsed ``generate`` arguments (the image(s), prompts, output folder, process layout).
        prompt: the prompt of ``--image``, or the default prompt of a batch (None: none).
        config: the :class:`~fourd_core.job.GenerateConfig` the CLI built from ``args``.
    Returns:
        the exit code: 0, or 2 when an image failed.
    Raises:
        InputError: bad arguments, prompts or process layout (before any model loads).
    """
    job = SceneJob(config)
    spec = ParallelSpec.parse(args.parallel)
    if spec.cfg > 1 and not job.sampling.guidance_scale > 1:
        raise InputError(f"--parallel cfg=2 splits the two CFG passes, but --cfg {job.sampling.guidance_scale} "
                         "runs only one; drop cfg=2 or use a guidance scale > 1.")
    if job.sampling.cache != "none" and args.parallel:
        raise InputError("--cache cannot be combined with --parallel: each rank would decide on its own shard or "
                         "pass whether to skip, and the ranks' collectives must match. Drop one of the two.")
    if args.images and args.image:
        raise InputError("Give either --image (one scene) or --images (a folder), not both.")
    if args.prompts and not args.images:
        raise InputError("--prompts goes with --images; for one image use --prompt or --prompt-file.")
    items = None
    if args.images:
        items = plan_items(args.images, args.prompts, prompt, args.encoding)  # checked before the process group starts
    elif not args.image:
        raise InputError("Give --image FILE (one scene) or --images DIR (a batch).")
    ctx = init_distributed(args.device, spec)
    finished = False                                   # the ranks meet before the group goes only on a clean end
    try:
        if items is None and ctx.groups > 1:
            raise InputError(f"{ctx.world_size} processes for one image with --parallel {spec} ({spec.size} per "
                             f"scene): use --nproc-per-node {spec.size}, or --images for a batch.")
        with writable_output_dir(args.out, "--out") as out:
            if items is None:
                summary = run_scene_parallel(job, args.image, args.out, prompt, ctx)
                if ctx.is_main:
                    print(json.dumps(summary, indent=1))
                finished = True
                return 0
            summary = run_batch(job, items, out, ctx, config.output_settings(), redo=args.redo)
        if ctx.is_main:
            print(json.dumps({k: v for k, v in summary.items() if k != "per_rank"} | {"out": str(out.resolve())},
                             indent=1))
            if summary["failed"]:
                print(f"error: {len(summary['failed'])} of {len(items)} images failed: "
                      + ", ".join(f["name"] for f in summary["failed"]), file=sys.stderr)
        # torchrun stops every rank as soon as one exits non-zero: all wait until rank 0 has written
        # the summary, and only rank 0 reports the failure in its exit code
        ctx.barrier()
        finished = True
        return 2 if summary["failed"] and ctx.is_main else 0
    finally:
        ctx.close(wait=finished)
