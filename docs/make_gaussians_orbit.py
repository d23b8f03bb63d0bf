"""Render docs/gaussians_orbit.png: a synthetic 4D scene (fourd_core.testing.synthetic_splats: walls + a ball moving
right; 4 grid views on a 12 degree arc x 3 frames) seen along that arc while time runs. Rows: ground truth,
fitted 4D Gaussians, pixel-aligned splats of the scene's video. Views 2-5 lie between the training views.
Rendered at the training resolution (64 x 48), shown enlarged 2x (nearest); prints the PSNR per view.

    python docs/make_gaussians_orbit.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    import imageio.v2 as imageio

    from fourd_core.splats.fit import FitConfig, fit_gaussians
    from fourd_core.splats.gaussians import pixel_aligned_gaussians
    from fourd_core.splats.losses import psnr
    from fourd_core.splats.rasterize import render_gaussians
    from fourd_core.testing.synthetic_splats import make_splat_scene

    torch.set_num_threads(1)
    gt = make_splat_scene(frames=3, seed=7, height=48, width=64, spacing=0.08, motion=0.25)
    views = [0.0, 4.0, 8.0, 12.0]
    scene = gt.scene([0.0] * 3)
    grid = torch.stack([gt.render(t, gt.camera(a))["image"].clamp(0, 1) for a in views for t in range(3)])
    t0 = time.perf_counter()
    fitted = fit_gaussians(scene, FitConfig(iterations=800, densify_every=50, init_stride=1, keyframes=1), grid=grid,
                           grid_K=gt.K.expand(4, 3, 3), grid_cam_to_world=torch.stack([gt.camera(a) for a in views]),
                           device="cpu")
    print(f"fit {time.perf_counter() - t0:.1f} s, {fitted.metadata['fit']}")
    pixel = pixel_aligned_gaussians(scene)
    angles = [0.0, 2.4, 4.8, 7.2, 9.6, 12.0]
    times = [0, 0, 1, 1, 2, 2]
    bg = [0.08, 0.08, 0.09]
    rows = {"ground truth": [], "fitted": [], "pixel-aligned": []}
    for a, t in zip(angles, times):
        pose = gt.camera(a)
        ref = render_gaussians(gt.frame(t), gt.K, pose, gt.height, gt.width, background=bg)["image"].clamp(0, 1)
        rows["ground truth"].append(ref)
        for name, g in (("fitted", fitted), ("pixel-aligned", pixel)):
            img = render_gaussians(g.frame(t), gt.K, pose, gt.height, gt.width, background=bg)["image"].clamp(0, 1)
            rows[name].append(img)
    for name in ("fitted", "pixel-aligned"):
        print(name, "PSNR per view:", [round(psnr(x, y), 1) for x, y in zip(rows[name], rows["ground truth"])])
    strips = [torch.cat(r, 1) for r in rows.values()]
    pic = torch.cat(strips, 0).repeat_interleave(2, 0).repeat_interleave(2, 1)
    out = ROOT / "docs" / "gaussians_orbit.png"
    imageio.imwrite(out, (pic.numpy() * 255 + 0.5).astype(np.uint8))
    print("wrote", out, tuple(pic.shape))


if __name__ == "__main__":
    main()
