"""Gaussian splats on a synthetic 4D scene (static walls + a moving ball, fourd_core.testing.synthetic_splats):
held-out-view quality of pixel-aligned vs fitted splats, time per fitting iteration, torch vs gsplat.

The scene is seen by a grid of ``--views`` cameras on a 12 degree arc x ``--frames`` times (view 0 = the
scene's own video); held-out cameras sit halfway between the grid views. Reported:

* PSNR / SSIM on held-out views of the pixel-aligned splats (instant) and of the fitted 4D Gaussians,
  with the ratio (fitted / pixel-aligned);
* seconds per fitting iteration for the torch rasteriser and, with CUDA + gsplat, for gsplat, and the
  ratio torch / gsplat; forward-render time of both on the fitted set, same process, median of repeats.

    python bench/bench_gaussians.py [--height 48 --width 64 --iterations 600 --threads 1 --seeds 3 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(seed, args, device, backend):
    from fourd_core.splats.fit import FitConfig, fit_gaussians
    from fourd_core.splats.gaussians import pixel_aligned_gaussians
    from fourd_core.splats.losses import psnr, ssim
    from fourd_core.splats.rasterize import render_gaussians
    from fourd_core.testing.synthetic_splats import make_splat_scene

    spacing = 0.15 * 32 / args.width
    gt = make_splat_scene(frames=args.frames, seed=seed, height=args.height, width=args.width, spacing=spacing,
                          motion=0.2)
    step = 12.0 / max(args.views - 1, 1)
    views = [i * step for i in range(args.views)]
    held = [(i + 0.5) * step for i in range(args.views - 1)]
    scene = gt.scene([0.0] * args.frames)
    grid = torch.stack([gt.render(t, gt.camera(a))["image"].clamp(0, 1) for a in views for t in range(args.frames)])
    cfg = FitConfig(iterations=args.iterations, densify_every=50, init_stride=1, keyframes=1, backend=backend)
    t0 = time.perf_counter()
    fitted = fit_gaussians(scene, cfg, grid=grid, grid_K=gt.K.expand(len(views), 3, 3),
                           grid_cam_to_world=torch.stack([gt.camera(a) for a in views]), device=device)
    fit_s = time.perf_counter() - t0
    base = pixel_aligned_gaussians(scene)
    rows = {"pixel-aligned": [], "fitted": []}
    for t in range(args.frames):
        for a in held:
            ref = gt.render(t, gt.camera(a))["image"].clamp(0, 1)
            for name, g in (("pixel-aligned", base.frame(t)), ("fitted", fitted.frame(t))):
                out = render_gaussians(g.to(device), gt.K.to(device), gt.camera(a).to(device), gt.height, gt.width,
                                       backend=backend)["image"].clamp(0, 1).cpu()
                rows[name].append((psnr(out, ref), float(ssim(out, ref))))
    return rows, fit_s / args.iterations, fitted, gt


def render_time(g, gt, backend, device, repeats):
    from fourd_core.splats.rasterize import render_gaussians

    g = g.to(device)
    K, pose = gt.K.to(device), gt.camera(6.0).to(device)
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        render_gaussians(g, K, pose, gt.height, gt.width, backend=backend)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--height", type=int, default=36)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fourd_core.splats.rasterize import gsplat_available

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = ["torch"] + (["gsplat"] if gsplat_available(device) else [])
    print(f"device {device}, backends {backends}, {args.height}x{args.width}, {args.views} views x {args.frames} "
          f"frames, {args.iterations} iterations, threads {args.threads}")
    per_it = {b: [] for b in backends}
    for seed in args.seeds:
        for b in backends:
            rows, sec, fitted, gt = run(seed, args, device, b)
            per_it[b].append(sec)
            pa = [r[0] for r in rows["pixel-aligned"]]
            ft = [r[0] for r in rows["fitted"]]
            sa = [r[1] for r in rows["pixel-aligned"]]
            sf = [r[1] for r in rows["fitted"]]
            print(f"seed {seed} [{b}] held-out PSNR pixel-aligned {statistics.mean(pa):.2f} dB (min {min(pa):.2f}) | "
                  f"fitted {statistics.mean(ft):.2f} dB (min {min(ft):.2f}) | ratio {statistics.mean(ft) / statistics.mean(pa):.3f}")
            print(f"seed {seed} [{b}] held-out SSIM pixel-aligned {statistics.mean(sa):.4f} | fitted "
                  f"{statistics.mean(sf):.4f} | ratio {statistics.mean(sf) / statistics.mean(sa):.3f}; "
                  f"{len(fitted.canonical)} splats, {sec * 1000:.1f} ms/iteration")
        rt = {b: render_time(fitted.frame(0), gt, b, device, args.repeats) for b in backends}
        print(f"seed {seed} forward render: " + ", ".join(f"{b} {v * 1000:.2f} ms" for b, v in rt.items()) +
              (f", torch/gsplat {rt['torch'] / rt['gsplat']:.1f}x" if "gsplat" in rt else ""))
    med = {b: statistics.median(v) for b, v in per_it.items()}
    print("time per iteration: " + ", ".join(f"{b} {v * 1000:.1f} ms" for b, v in med.items()) +
          (f", torch/gsplat {med['torch'] / med['gsplat']:.1f}x" if "gsplat" in med else " (gsplat: needs CUDA + gsplat)"))


if __name__ == "__main__":
    main()
