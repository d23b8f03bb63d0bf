"""Renders the README's pictures of the pack's web 4D viewer (headless Chromium, WebGL 2 on SwiftShader) on a
small 4D scene built from the example photo (a depth layout + a camera dolly; see demo_scene):

* docs/viewer.png: the scene's point cloud (three.js points), seen from above and to the side;
* docs/viewer_splats.png: 4D Gaussians fitted to that scene on the CPU (fourd_core.splats.fit, anisotropic,
  the defaults of FourD Fit 4D Gaussians except the iteration count and resolution), drawn by Spark as the
  FourD 4D Preview shows them by default, from a view beside the training cameras.

    python docs/make_viewer_screenshot.py [--only points|splats] [--iterations N] [--refit]

Prints the fit's time, the number of splats and how anisotropic they are (axis ratios). The fit is the slow
part (about 7 minutes on one CPU core), so its viewer asset is kept in .cache/viewer_splats_<N>.fourd4d and
reused (--refit fits again).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fourd_core.io.images import load_image, prepare_image  # noqa: E402
from fourd_core.io.viewer_asset import gaussians_viewer_asset_bytes, viewer_asset_bytes  # noqa: E402
from fourd_core.scene import Scene4D  # noqa: E402

HOST = (640, 470)


def demo_scene(frames: int = 12, h: int = 256, w: int = 384) -> Scene4D:
    """The example photo on a ground plane that rises towards the top, with a bump that grows over time; the
    camera dollies in (0.08 per frame)."""
    img = prepare_image(load_image(ROOT.parent / "shared" / "data" / "amusement_park.png"), h, w)
    i = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w) / h
    j = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w) / w
    f = 0.9 * w
    K = torch.tensor([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    c2w = torch.eye(4).repeat(frames, 1, 1)
    depth = []
    for k in range(frames):
        c2w[k, 2, 3] = 0.08 * k  # the camera dollies in; the ground stays put in the world
        bump = 0.8 * (k / (frames - 1)) * torch.exp(-((j - 0.5) ** 2 + (i - 0.62) ** 2) / 0.01)  # something rises
        depth.append(6.0 - 3.5 * i.clamp(min=0.55) - bump - 0.08 * k)
    return Scene4D(rgb=img.expand(frames, h, w, 3).contiguous(), xyz=torch.zeros(frames, h, w, 3),
                   K=K.expand(frames, 3, 3).clone(), cam_to_world=c2w, depth=torch.stack(depth))


def shoot(asset: bytes, out: Path, script: str) -> None:
    """Open the viewer on ``asset``, run ``script`` (JS, ``viewer`` in scope), wait until it settled and
    write a screenshot of the widget (canvas and controls) to ``out``."""
    from web_viewer_page import settle, viewer_page

    with viewer_page(asset, host=HOST, viewport=HOST) as page:
        page.evaluate(f"(() => {{ {script} }})()")
        settle(page)
        page.locator("#host").screenshot(path=str(out))
        assert not page.errors and not page.external, (page.errors, page.external)
    print("wrote", out.relative_to(ROOT))


def fitted_gaussians(iterations: int):
    from fourd_core.splats.fit import FitConfig, fit_gaussians

    torch.set_num_threads(1)  # small tensors: more threads only contend
    scene = demo_scene(frames=6, h=128, w=192)
    t0 = time.perf_counter()
    g4d = fit_gaussians(scene, FitConfig(iterations=iterations, resolution=128, init_stride=2, densify_every=50),
                        device="cpu")
    s = g4d.canonical.scales
    ratio = (s.max(-1).values / s.min(-1).values).sort().values
    n = len(ratio)
    print(f"fit: {time.perf_counter() - t0:.0f} s (uptime load {os.getloadavg()[0]:.1f}), {n} splats, {g4d.metadata['fit']['train_psnr']:.1f} dB on the "
          f"training frames; largest/smallest axis: median {ratio[n // 2]:.2f}, 90th percentile "
          f"{ratio[int(0.9 * n)]:.2f}; opacities below 0.05: {(g4d.canonical.opacities < 0.05).float().mean():.0%}")
    return g4d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["points", "splats"])
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--refit", action="store_true", help="fit again even when the cached asset exists")
    args = ap.parse_args()
    if args.only != "splats":
        shoot(viewer_asset_bytes(demo_scene(), points_per_frame=60000), ROOT / "docs" / "viewer.png",
              "viewer.sizeSlider.value = viewer.pointsMaterial.size = 2; viewer.setFrame(6); viewer.orbitBy(-0.55, 0.35, 1.5);")
    if args.only != "points":
        cache = ROOT / ".cache" / f"viewer_splats_{args.iterations}.fourd4d"
        if args.refit or not cache.is_file():
            cache.parent.mkdir(exist_ok=True)
            cache.write_bytes(gaussians_viewer_asset_bytes(fitted_gaussians(args.iterations)))
        shoot(cache.read_bytes(), ROOT / "docs" / "viewer_splats.png",
              "viewer.setFrame(5); viewer.orbitBy(-0.45, 0.3, 1.5);")


if __name__ == "__main__":
    main()
