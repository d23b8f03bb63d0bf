#!/usr/bin/env python
"""Benchmark: the trajectory render at full size (49 frames, 480x720 source, 480x832 output).

Prints, in one process, wall time and CPU time (each the best of ``--repeats``; CPU time says more
on a shared machine) and peak resident memory of:

1. ``render_novel_view`` (fourd_core.geometry.trajectory): output frame t = scene frame t's points
   from pose t of a 30-degree orbit, point size 2, ``fit=cover``;
2. the freeze-time render of the same size and path (``render_scene_views`` of frame 0 in 49 views,
   fourd_core.geometry.novel_view: the existing FourD Render Views computation) - the baseline the
   ratio is taken against;
3. the previous splatter (the project's render_points before the trajectory render: float64
   projection, one scatter of every pixel of every square), copied here verbatim, run in the
   freeze-time loop, for the speed-up of the shared splatter.

Peak memory: the process high-water mark (VmHWM) is reset before each run (/proc/self/clear_refs,
Linux), so each peak includes what is already resident (the scene, ~0.2 GB) and says how much the
run adds on top.  The scene is synthetic (fourd_core.testing.synthetic_scene: known cameras and depth).

Usage:  python bench/bench_novel_view.py [--repeats 2] [--threads N] [--frames 49] [--point-size 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fourd_core.geometry.novel_view import render_scene_views  # noqa: E402
from fourd_core.geometry.render import project_points  # noqa: E402
from fourd_core.testing.synthetic_scene import make_synthetic_scene  # noqa: E402
from fourd_core.geometry.trajectory import render_novel_view, trajectory_cameras  # noqa: E402
from fourd_core.scene import Scene4D  # noqa: E402

_NO_HIT = torch.iinfo(torch.int64).max


def previous_render_points(points, colors, K, cam_to_world, height, width, point_size=1, background=0.0):
    """render_points as it was before the shared z-buffer (commit 0fddb46), for the comparison only."""
    P = points.reshape(-1, 3)
    C = colors.reshape(-1, 3).to(torch.float32)
    bg = torch.as_tensor(background, dtype=torch.float32).flatten()
    uv, z = project_points(P, K, cam_to_world)
    ok = torch.isfinite(P).all(-1) & torch.isfinite(z) & (z > 1e-6)
    idx = torch.nonzero(ok).flatten()
    col = torch.floor(uv[idx, 0] + 0.5).to(torch.int64)
    row = torch.floor(uv[idx, 1] + 0.5).to(torch.int64)
    zk = z[idx].contiguous()
    key = (zk.view(torch.int32).to(torch.int64) << 32) | idx
    offs = torch.arange(point_size) - (point_size - 1) // 2
    dr, dc = torch.meshgrid(offs, offs, indexing="ij")
    rr = (row[None, :] + dr.reshape(-1, 1)).reshape(-1)
    cc = (col[None, :] + dc.reshape(-1, 1)).reshape(-1)
    kk = key[None, :].expand(dr.numel(), -1).reshape(-1)
    inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
    pix = rr[inside] * width + cc[inside]
    buf = torch.full((height * width,), _NO_HIT, dtype=torch.int64)
    buf.scatter_reduce_(0, pix, kk[inside], reduce="amin", include_self=True)
    valid = buf != _NO_HIT
    winner = (buf[valid] & 0xFFFFFFFF)
    image = bg.expand(3).repeat(height * width, 1).clone()
    image[valid] = C[winner].clamp(0.0, 1.0)
    return image.reshape(height, width, 3), valid.reshape(height, width)


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_gb(key: str) -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def measure(fn, repeats: int):
    best, cpu, peak = float("inf"), float("inf"), 0.0
    for _ in range(repeats):
        reset_peak()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
        peak = max(peak, rss_gb("VmHWM:"))
        del out
    return best, cpu, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--point-size", type=int, default=2)
    ap.add_argument("--skip-previous", action="store_true", help="skip the previous splatter (slowest row)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    F, H, W, HO, WO = args.frames, 480, 720, 480, 832
    sc = make_synthetic_scene(F, H, W, seed=0, orbit_deg=20.0)
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(F, H, W, 3, generator=g)
    scene = Scene4D(rgb=rgb, xyz=sc.clean_points, K=sc.K, cam_to_world=sc.cam_to_world, depth=sc.depth)
    del sc, rgb
    print(f"trajectory render, {F} frames, {H}x{W} source -> {HO}x{WO} output, point size {args.point_size}, "
          f"orbit 30 deg | torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    base = rss_gb("VmRSS:")
    print(f"resident before the runs (scene loaded): {base:.2f} GB")

    def trajectory():
        return render_novel_view(scene, "orbit", degrees=30.0, height=HO, width=WO, point_size=args.point_size)

    Kp, c2w, _ = trajectory_cameras(scene, "orbit", degrees=30.0, height=HO, width=WO)

    def freeze_time():
        return render_scene_views(scene, c2w, Kp, frame=0, point_size=args.point_size, height=HO, width=WO)

    def previous():
        pts, col = scene.points(0).float(), scene.rgb[0].float()
        ims = [previous_render_points(pts, col, Kp[i], c2w[i], HO, WO, args.point_size, 0.5)[0] for i in range(F)]
        return torch.stack(ims)

    rows = [("trajectory render (render_novel_view)", trajectory), ("freeze-time render (render_scene_views), baseline", freeze_time)]
    if not args.skip_previous:
        rows.append(("freeze-time loop, previous splatter (0fddb46)", previous))
    results = {}
    hdr = (f"{'variant':<52} | {'time (best)':>11} | {'per frame':>9} | {'ratio':>6} | {'CPU s':>7} | {'CPU ratio':>9} | "
           f"{'peak RSS':>8} | {'added':>6}")
    print(hdr)
    print("-" * len(hdr))
    cpus = {}
    base_name = "freeze-time render (render_scene_views), baseline"
    for name, fn in rows:
        t, cpu, peak = measure(fn, args.repeats)
        results[name], cpus[name] = t, cpu
        ref, cref = results.get(base_name), cpus.get(base_name)
        ratio = f"{t / ref:6.2f}" if ref else "     -"
        cratio = f"{cpu / cref:9.2f}" if cref else "        -"
        print(f"{name:<52} | {t:10.2f}s | {t / F * 1000:7.1f}ms | {ratio} | {cpu:6.2f}s | {cratio} | {peak:6.2f}GB | "
              f"{peak - base:5.2f}G", flush=True)
    ref = results[base_name]
    print(f"ratio trajectory / freeze-time = {results['trajectory render (render_novel_view)'] / ref:.2f} "
          f"(CPU time {cpus['trajectory render (render_novel_view)'] / cpus[base_name]:.2f})"
          + ("" if args.skip_previous else f"; previous splatter / current freeze-time = "
             f"{results['freeze-time loop, previous splatter (0fddb46)'] / ref:.2f}")
          + f"; load avg now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
