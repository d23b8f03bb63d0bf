"""The web 4D viewer draws Gaussian splats as the 3DGS rasteriser does (headless Debian chromium via
Playwright, WebGL 2 on SwiftShader): a known synthetic scene of anisotropic, rotated, semi-transparent
splats is rendered by the viewer (Spark) and by the pack's Python rasteriser (fourd_core/splats/rasterize.py)
from the same OpenCV camera (an off-centre principal point, fx != fy, a rotated and translated camera), and
the pictures agree to PSNR >= 40 dB (about 53 dB measured) in both frames of a two-frame scene; moving the time slider changes the
picture to the second frame's. The same comparison is far worse against the splats drawn as round discs (what
the old viewer did) or half a pixel off, so it does test the splats' shape and the camera conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from web_viewer_page import canvas_pixels, load, skip_reason, viewer_page

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

W, H = 160, 120


def random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=gen)
    return q / q.norm(dim=-1, keepdim=True)


def camera():
    """An OpenCV camera: fx != fy, principal point off the centre, rotated and translated."""
    K = torch.tensor([[150.0, 0.0, (W - 1) / 2 + 3.3], [0.0, 140.0, (H - 1) / 2 - 2.1], [0.0, 0.0, 1.0]])
    a, b = 0.3, -0.2
    Ry = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    Rx = torch.tensor([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    c2w = torch.eye(4)
    c2w[:3, :3] = Ry @ Rx
    c2w[:3, 3] = torch.tensor([0.4, -0.3, -0.5])
    return K, c2w


def anisotropic_gaussians(n=400, seed=0, opacity=(0.3, 0.95)):
    """Splats whose centres project inside the image at depths 2-4, standard deviations 0.004-0.12 with
    axis ratios down to 1:8 (needles and discs), random rotations, opacities and colours; two frames: the
    second moves every splat 0.3 to the camera's right and 0.1 down (a deformable set, Eq. 11)."""
    from fourd_core.splats.gaussians import Gaussians, Gaussians4D

    gen = torch.Generator().manual_seed(seed)
    K, c2w = camera()
    u = 12 + (W - 24) * torch.rand(n, generator=gen)
    v = 10 + (H - 20) * torch.rand(n, generator=gen)
    z = 2.0 + 2.0 * torch.rand(n, generator=gen)
    cam = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)
    means = cam @ c2w[:3, :3].T + c2w[:3, 3]
    base = torch.exp(math.log(0.03) + (math.log(0.12) - math.log(0.03)) * torch.rand(n, 1, generator=gen))
    ratio = torch.exp(-math.log(8.0) * torch.rand(n, 3, generator=gen))
    ratio[:, 0] = 1.0
    scales = base * ratio[:, torch.randperm(3, generator=gen)]
    op = opacity[0] + (opacity[1] - opacity[0]) * torch.rand(n, generator=gen)
    colors = 0.05 + 0.9 * torch.rand(n, 3, generator=gen)
    g = Gaussians.from_values(means, colors, scales, op, random_rotations(n, gen))
    shift = c2w[:3, :3] @ torch.tensor([0.3, 0.1, 0.0])
    offsets = torch.stack([torch.zeros(n, 3), shift.expand(n, 3)])
    return Gaussians4D(canonical=g, time_offsets=offsets, K=K.expand(2, 3, 3).clone(),
                       cam_to_world=c2w.expand(2, 4, 4).clone(), height=H, width=W, fps=4.0)


def reference(g4d, t, background, K=None, scales=None):
    """The pack's rasteriser: frame ``t`` from the frames' camera over ``background`` (sRGB), as uint8."""
    from fourd_core.splats.rasterize import rasterize_torch

    g = g4d.frame(t)
    out = rasterize_torch(g.means, g.quats, g.scales if scales is None else scales, g.opacities, g.colors,
                          g4d.K[t] if K is None else K, g4d.cam_to_world[t], H, W, background=torch.tensor(background))
    return (out["image"].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def scene():
    return anisotropic_gaussians()


@pytest.fixture(scope="module")
def faint():
    """The tiny Gaussians demo's case: a fit whose every opacity is below 0.05."""
    return anisotropic_gaussians(n=600, seed=1, opacity=(0.02, 0.045))


@pytest.fixture(scope="module")
def browser_page(scene, faint):
    from fourd_core.io.viewer_asset import gaussians_viewer_asset_bytes

    with viewer_page(gaussians_viewer_asset_bytes(scene), options={"size": [W, H]}, viewport=(360, 260),
                     files={"faint.fourd4d": gaussians_viewer_asset_bytes(faint)}) as pg:
        pg.evaluate("viewer.frusta.checked = false")
        pg.background = pg.evaluate("viewer.background")
        yield pg


@pytest.fixture
def page(browser_page):
    load(browser_page, "scene.fourd4d")
    return browser_page


def test_viewer_matches_the_python_rasteriser(page, scene):
    assert page.evaluate("[viewer.canvas.width, viewer.canvas.height]") == [W, H]
    shown = canvas_pixels(page)
    ref = reference(scene, 0, page.background)
    covered = (np.abs(ref.astype(int) - ref[0, 0]).sum(-1) > 6).mean()
    assert covered > 0.5, f"the test scene covers only {covered:.0%} of the image"
    assert psnr(shown, ref) >= 40.0  # the brief asks >= 25 dB; about 53 dB measured (SwiftShader)
    # sensitivity: round discs of the largest axis (the old viewer's splats) or the image half a pixel off
    # are far from what the viewer shows, so the agreement above is the splats' shape and the camera's
    g = scene.frame(0)
    discs = reference(scene, 0, page.background, scales=g.scales.max(-1, keepdim=True).values.expand(-1, 3))
    K_off = scene.K[0].clone()
    K_off[0, 2] += 0.5
    K_off[1, 2] += 0.5
    assert psnr(shown, discs) < psnr(shown, ref) - 8
    assert psnr(shown, reference(scene, 0, page.background, K=K_off)) < psnr(shown, ref) - 3
    assert not page.errors


def test_time_slider_shows_the_second_frame(page, scene):
    before = canvas_pixels(page)
    page.locator("input[type=range]").first.fill("1")  # fires 'input'
    assert page.evaluate("viewer.frame") == 1 and page.locator("text=2/2").count() == 1
    after = canvas_pixels(page)
    assert (np.abs(after.astype(int) - before).sum(-1) > 30).mean() > 0.2  # the picture changed
    assert psnr(after, reference(scene, 1, page.background)) >= 25.0  # ... to the second frame
    assert psnr(after, reference(scene, 1, page.background)) > psnr(after, reference(scene, 0, page.background)) + 5
    page.locator("input[type=range]").first.fill("0")
    assert page.evaluate("viewer.frame") == 0
    assert not page.errors


def test_low_opacity_splats_show(browser_page, faint):
    """A fit whose every opacity is below 0.05 (the tiny Gaussians demo's) still shows, as the rasteriser
    draws it: the preview's default keeps such splats and the viewer skips only fragments below alpha 1/255."""
    load(browser_page, "faint.fourd4d")
    shown = canvas_pixels(browser_page)
    ref = reference(faint, 0, browser_page.background)
    bg = np.round(np.array(browser_page.background) * 255)
    assert (np.abs(ref - bg).sum(-1) > 6).mean() > 0.3  # the faint splats are visible in the reference ...
    assert (np.abs(shown - bg).sum(-1) > 6).mean() > 0.3  # ... and in the viewer
    assert psnr(shown, ref) >= 40.0
    assert not browser_page.errors
