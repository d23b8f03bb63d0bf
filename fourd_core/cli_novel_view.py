"""``python -m fourd_core novel-view``: the trajectory render of a saved scene, refined by Wan VACE.

Examples::

    # render, mask and cameras only (no model)
    python -m fourd_core novel-view --scene out/scene.safetensors --path orbit --render-only --out nv/

    # refined by Wan2.1 VACE 1.3B from the hub (or a downloaded diffusers folder)
    python -m fourd_core novel-view --scene out/scene.safetensors --path orbit \\
        --vace Wan-AI/Wan2.1-VACE-1.3B-diffusers --out nv/

    # the tiny random VACE model: runs anywhere in seconds, meaningless pictures
    python -m fourd_core novel-view --scene out/scene.safetensors --vace tiny --height 96 --width 160 --out nv/

Every check (numbers, the scene, the VACE folder's family and files, ``--out``) runs before the
render and the model load; a failed run leaves ``--out`` as it was.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .errors import InputError


# the choices of fourd_core.geometry.trajectory / models.vace, spelled out so building the parser imports no torch
TRAJECTORY_PATHS = ("orbit", "arc", "dolly", "static")
FITS = ("cover", "contain")
VACE_HUB_IDS = ("Wan-AI/Wan2.1-VACE-1.3B-diffusers", "Wan-AI/Wan2.1-VACE-14B-diffusers")


def add_parser(sub) -> None:
    """Register the ``novel-view`` sub-command on an ``argparse`` sub-parser set."""
    p = sub.add_parser("novel-view", help="render a saved scene along a camera path (+ refine it with Wan VACE)")
    p.add_argument("--scene", required=True, help="scene.safetensors with cameras (written by generate/geometry)")
    p.add_argument("--out", required=True, help="output folder (novel_view.mp4, render.mp4, mask.mp4, cameras.json...)")
    r = p.add_argument_group("trajectory")
    r.add_argument("--path", default="orbit", choices=list(TRAJECTORY_PATHS), help="camera path (default orbit)")
    r.add_argument("--degrees", type=float, default=30.0, help="orbit/arc angle (default 30)")
    r.add_argument("--axis", default="y", choices=["x", "y", "z"], help="orbit/arc axis of the first camera")
    r.add_argument("--distance", type=float, default=0.3, help="dolly travel, fraction of the scene depth")
    r.add_argument("--elevation", type=float, default=0.0, help="arc elevation in degrees")
    r.add_argument("--follow-scene", action="store_true",
                   help="offset the scene's own cameras by the path (default: move from frame 0's camera)")
    r.add_argument("--frames", type=int, default=None, help="output frames (default: the scene's; VACE: 4k+1)")
    r.add_argument("--height", type=int, default=480, help="output height (default 480; VACE: multiple of 16)")
    r.add_argument("--width", type=int, default=832, help="output width (default 832; VACE: multiple of 16)")
    r.add_argument("--fit", default="cover", choices=list(FITS),
                   help="cover: the source view fills the output (crop); contain: all of it inside (more holes)")
    r.add_argument("--point-size", type=int, default=2, help="splat size in output pixels (default 2)")
    r.add_argument("--min-confidence", type=float, default=0.0, help="do not render points below this confidence")
    r.add_argument("--fps", type=float, default=16.0, help="frame rate of the MP4s (Wan: 16)")
    v = p.add_argument_group("VACE refinement")
    v.add_argument("--render-only", action="store_true", help="write the render, mask and cameras; load no model")
    v.add_argument("--vace", help=f"diffusers folder or hub id of Wan VACE ({VACE_HUB_IDS[0]}, {VACE_HUB_IDS[1]}), "
                                  "or 'tiny' (random toy model)")
    v.add_argument("--prompt", help="text prompt (default: the scene's prompt)")
    v.add_argument("--negative-prompt", default="", help="negative prompt")
    v.add_argument("--image", help="reference image (default: the scene's first frame, i.e. the input photo)")
    v.add_argument("--no-reference", action="store_true", help="no reference image")
    v.add_argument("--steps", type=int, default=None, help="denoising steps (default 30; tiny: 4)")
    v.add_argument("--cfg", type=float, default=5.0, help="guidance scale")
    v.add_argument("--shift", type=float, default=3.0, help="flow shift (3 for 480p, 5 for 720p)")
    v.add_argument("--strength", type=float, default=1.0, help="VACE conditioning scale")
    v.add_argument("--seed", type=int, default=42)
    v.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    v.add_argument("--device", help="cuda, cpu (default: cuda if available)")
    v.add_argument("--offload", default="none", choices=["none", "model"], help="model: diffusers CPU offload")
    v.add_argument("--cache-dir", help="hub cache / tiny model folder")
    v.add_argument("--offline", action="store_true", help="never use the network")


def cmd_novel_view(args) -> int:
    """Run ``novel-view``: checks everything, renders, refines (unless ``--render-only``), writes atomically."""
    import torch

    from .geometry.trajectory import render_novel_view
    from .util.atomic import staged_output, writable_output_dir
    from .pipelines.novel_view import VaceSettings, check_vace_size, refine_with_vace, write_novel_view
    from .scene import Scene4D

    t0 = time.perf_counter()
    if args.render_only and args.vace:
        raise InputError("--render-only loads no model; drop --vace (or drop --render-only to refine).")
    if not args.render_only and not args.vace:
        raise InputError("Give --vace <diffusers folder | hub id | tiny> to refine the render, or --render-only.")
    if args.fps <= 0:
        raise InputError(f"--fps must be > 0; got {args.fps}.")
    scene = Scene4D.load(args.scene)
    if not scene.has_cameras:
        raise InputError(f"{args.scene} has no cameras; run `python -m fourd_core geometry` on it first.")
    frames = scene.num_frames if args.frames is None else args.frames
    if frames < 1:
        raise InputError(f"The path has {frames} frames; give --frames >= 1 (a path with zero frames cannot be "
                         "rendered).")
    pipe = settings = reference = None
    folder = None
    tiny = args.vace == "tiny"
    if not args.render_only:
        check_vace_size(frames, args.height, args.width)
        settings = VaceSettings(prompt=args.prompt or scene.metadata.get("prompt") or "",
                                negative_prompt=args.negative_prompt, steps=args.steps or (4 if tiny else 30),
                                cfg=args.cfg, seed=args.seed, strength=args.strength, shift=args.shift)
        settings.validate()
        if args.image and not args.no_reference:
            from .io.images import load_image

            reference = load_image(args.image)
        elif not args.no_reference:
            reference = scene.rgb[0]
        from .models.vace import resolve_vace

        folder = resolve_vace(args.vace, cache_dir=args.cache_dir, local_files_only=args.offline)

    def log(msg: str) -> None:
        print(f"[fourd] {msg}", file=sys.stderr)

    with writable_output_dir(args.out, "--out"):  # probed before the render; a failed run leaves --out as it was
        # the path and sizes are checked by the render's first step, before any splat
        render = render_novel_view(scene, args.path, frames, args.height, args.width, degrees=args.degrees,
                                   axis=args.axis, distance=args.distance, elevation_degrees=args.elevation,
                                   follow_scene=args.follow_scene, fit=args.fit, point_size=args.point_size,
                                   min_confidence=args.min_confidence)
        t_render = time.perf_counter()
        log(f"rendered {render.num_frames} frames {render.size[1]}x{render.size[0]} in {t_render - t0:.1f}s "
            f"({100 * render.hole_fraction:.1f}% holes)")
        video = None
        extra: dict = {"scene": str(Path(args.scene).resolve()), "render_s": round(t_render - t0, 3)}
        if folder is not None:
            from .models.vace import load_vace_pipeline

            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = "float32" if (device == "cpu" and tiny) else args.dtype
            log(f"loading Wan VACE from {folder}")
            pipe = load_vace_pipeline(folder, dtype=dtype, device=device, offload=args.offload, shift=args.shift)
            t_load = time.perf_counter()
            from tqdm import tqdm

            bar = tqdm(total=settings.steps, desc="VACE", unit="step", file=sys.stderr)
            video = refine_with_vace(pipe, render, reference, settings, callback=lambda s, n: bar.update(s - bar.n))
            bar.close()
            extra.update(vace=str(folder), tiny=tiny, load_s=round(t_load - t_render, 3),
                         vace_s=round(time.perf_counter() - t_load, 3), prompt=settings.prompt,
                         sampling={"steps": settings.steps, "cfg": settings.cfg, "seed": settings.seed,
                                   "strength": settings.strength, "shift": settings.shift, "dtype": dtype,
                                   "reference": None if reference is None else (args.image or "scene frame 0")})
        with staged_output(args.out, "--out") as (staging, out):
            written = write_novel_view(staging, render, video, fps=args.fps, extra=extra)
    summary = {"out": str(Path(args.out).resolve()), "frames": render.num_frames, "size": list(render.size),
               "hole_fraction": round(render.hole_fraction, 4), "files": {k: len(v) for k, v in written.items()},
               "total_s": round(time.perf_counter() - t0, 2)}
    print(json.dumps(summary, indent=1))
    return 0

