"""Render docs/gaussians_orbit.png: an orbit of 4D Gaussians fitted to the synthetic 4D scene of
fourd_core.splats.synthetic (walls + a moving ball; 4 grid views on a 12 degree arc x 3 frames), above the
same orbit of the instant pixel-aligned splats. Views sweep the 12 degree arc of the grid while time
runs (the same arc about the ball's rest position, so views 1-4 are held out), rendered at the training
resolution (64 x 48) and shown enlarged 2x (nearest).

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
    from fourd_core.splats.orbit import render_orbit
    from fourd_core.splats.synthetic import make_splat_scene

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
    rows = []
    for g in (fitted, pixel_aligned_gaussians(scene)):
        imgs = render_orbit(g, degrees=-12.0, steps=6, background=(0.08, 0.08, 0.09), distance=3.0)
        imgs = imgs.repeat_interleave(2, 1).repeat_interleave(2, 2)
        rows.append(torch.cat(list(imgs), 1))
    pic = (torch.cat(rows, 0).numpy() * 255 + 0.5).astype(np.uint8)
    out = ROOT / "docs" / "gaussians_orbit.png"
    imageio.imwrite(out, pic)
    print("wrote", out, pic.shape)


if __name__ == "__main__":
    main()
