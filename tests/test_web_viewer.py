"""The web 4D viewer's point clouds and controls in headless Debian chromium (Playwright, WebGL 2 on
SwiftShader): every point of a scene seen from its own camera lands on its pixel in its colour (so the
OpenCV camera, pixel-centre and sRGB conventions hold for three.js points), the time slider, point size,
orbit/zoom and camera frusta change the picture, the browser decodes the asset as Python does, a scene and
splats show together with a toggle each, the ComfyUI extension mounts the viewer on the preview nodes, and the
page never reaches past the local server (the renderer bundle is offline). Also checks, without a browser,
that ComfyUI would not load the renderer bundle as an extension."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from web_viewer_page import ROOT, canvas_pixels, load, skip_reason, viewer_page

needs_browser = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

W, H, F = 64, 48, 3


def moving_scene():
    """A colour-gradient wall with a bump, seen by a camera that moves right over 6 frames (32 x 24)."""
    from fourd_core.scene import Scene4D

    F6, h, w = 6, 24, 32
    K = torch.tensor([[30.0, 0, (w - 1) / 2], [0, 30.0, (h - 1) / 2], [0, 0, 1]]).expand(F6, 3, 3).clone()
    c2w = torch.eye(4).expand(F6, 4, 4).clone()
    i = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    j = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
    depth = torch.stack([2.0 + 0.3 * torch.sin(j / 5) + 0 * f for f in range(F6)])
    rgb = torch.stack([torch.stack([j / w, i / h, torch.full_like(i, f / F6)], -1) for f in range(F6)])
    scene = Scene4D(rgb=rgb, xyz=torch.rand(F6, h, w, 3), K=K, cam_to_world=c2w, depth=depth)
    for f in range(F6):
        scene.cam_to_world[f, 0, 3] = -0.6 * f
    return scene


def pixel_scene():
    """F frames of W x H: depth 2-3 with a bump, distinct colours per pixel, an off-centre principal point,
    fx != fy, a camera that turns a little and moves right."""
    from fourd_core.scene import Scene4D

    K = torch.tensor([[70.0, 0, (W - 1) / 2 + 2.4], [0, 64.0, (H - 1) / 2 - 1.7], [0, 0, 1]]).expand(F, 3, 3).clone()
    c2w = torch.eye(4).repeat(F, 1, 1)
    for f in range(F):
        a = 0.1 * f
        c2w[f, :3, :3] = torch.tensor([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        c2w[f, 0, 3] = 0.3 * f
    i = torch.arange(H, dtype=torch.float32).view(H, 1).expand(H, W)
    j = torch.arange(W, dtype=torch.float32).view(1, W).expand(H, W)
    depth = torch.stack([2.0 + i / H + 0.4 * torch.exp(-((j - 30) ** 2 + (i - 20) ** 2) / 60) for _ in range(F)])
    rgb = torch.stack([torch.stack([j / (W - 1), i / (H - 1), 0.5 + 0.5 * torch.sin(j + i + f)], -1) for f in range(F)])
    return Scene4D(rgb=rgb, xyz=torch.zeros(F, H, W, 3), K=K, cam_to_world=c2w, depth=depth)


@pytest.fixture(scope="module")
def assets():
    from fourd_core.io.viewer_asset import gaussians_viewer_asset_bytes, viewer_asset_bytes
    from fourd_core.splats.gaussians import pixel_aligned_gaussians

    scene = pixel_scene()
    degenerate = pixel_scene()
    degenerate.K[:, 0, 0] = degenerate.K[:, 1, 1] = 0.01  # a failed focal-length fit: a 179.9 degree camera
    return {
        "degenerate.fourd4d": viewer_asset_bytes(degenerate, points_per_frame=W * H),
        "scene.fourd4d": viewer_asset_bytes(scene, points_per_frame=W * H),
        "sparse.fourd4d": viewer_asset_bytes(moving_scene(), points_per_frame=300),
        "both.fourd4d": gaussians_viewer_asset_bytes(pixel_aligned_gaussians(scene, stride=2, footprint=0.5),
                                                     scene=scene, points_per_frame=400),
    }


@pytest.fixture(scope="module")
def browser_page(assets):
    stubs = {  # the two frontend modules the extension imports, with the members it uses
        "scripts/app.js": b"export const app = { registerExtension(e) { (window.fourdExtensions ||= []).push(e); } };",
        "scripts/api.js": b"export const api = { apiURL: (p) => '/api' + p };",
        "api/view": assets["sparse.fourd4d"],  # the stub's /api/view?filename=... (the query is ignored)
    }
    with viewer_page(assets["scene.fourd4d"], options={"size": [W, H]}, host=(320, 120), viewport=(360, 200),
                     files={**{k: v for k, v in assets.items() if k != "scene.fourd4d"}, **stubs}) as pg:
        yield pg


@pytest.fixture
def page(browser_page):
    load(browser_page, "scene.fourd4d")
    browser_page.evaluate("viewer.frusta.checked = true; viewer.pointsMaterial.size = viewer.sizeSlider.value = 2")
    return browser_page


BACKGROUND = np.array([18, 18, 20])  # the viewer's BACKGROUND (0.07, 0.07, 0.08) in 8 bits


def covered(px: np.ndarray) -> np.ndarray:
    """Pixels that differ from the viewer's background."""
    return np.abs(px.astype(int) - BACKGROUND).sum(-1) > 12


@needs_browser
def test_points_land_on_their_pixels_in_their_colours(page):
    """Frame 0 seen from camera 0 (the viewer's first view): the point unprojected from pixel (i, j) must be
    drawn at pixel (i, j) with that pixel's sRGB colour (1-pixel points, frusta off)."""
    page.evaluate("viewer.frusta.checked = false; viewer.pointsMaterial.size = 1; viewer.requestRender()")
    assert page.evaluate("[viewer.canvas.width, viewer.canvas.height]") == [W, H]
    shown = canvas_pixels(page).astype(int)
    want = (pixel_scene().rgb[0].clamp(0, 1).numpy() * 255 + 0.5).astype(int)
    close = np.abs(shown - want).max(-1) <= 2
    assert close.mean() > 0.97, f"only {close.mean():.1%} of the pixels show their own point"
    assert page.evaluate("viewer.frameCount") == F
    assert not page.errors and not page.external


@needs_browser
def test_time_slider_and_play_change_the_picture(page):
    before = canvas_pixels(page)
    page.locator("input[type=range]").first.fill(str(F - 1))  # fires 'input'
    assert page.evaluate("viewer.frame") == F - 1
    after = canvas_pixels(page)
    assert (np.abs(after.astype(int) - before).sum(-1) > 30).mean() > 0.2
    assert page.locator(f"text={F}/{F}").count() == 1
    # play runs through the frames (wrapping round) until pressed again
    page.locator("button[title='play / pause']").click()
    page.wait_for_function(f"viewer.frame !== {F - 1}", timeout=5000)
    assert page.evaluate("viewer.playing") is True
    page.locator("button[title='play / pause']").click()
    assert page.evaluate("viewer.playing") is False
    stopped = page.evaluate("viewer.frame")
    page.wait_for_timeout(300)
    assert page.evaluate("viewer.frame") == stopped
    assert not page.errors


@needs_browser
def test_point_size_orbit_zoom_and_frusta(browser_page):
    page = browser_page
    load(page, "sparse.fourd4d")
    page.evaluate("viewer.frusta.checked = false; viewer.pointsMaterial.size = viewer.sizeSlider.value = 1;"
                  "viewer.requestRender()")
    small = covered(canvas_pixels(page)).mean()
    page.locator("input[title='point size']").fill("6")
    big = covered(canvas_pixels(page)).mean()
    assert 0 < small < big / 3
    # orbit: a left drag turns the view
    before = canvas_pixels(page)
    box = page.locator("canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 25, cy + 5, steps=5)
    page.mouse.up()
    after = canvas_pixels(page)
    assert (np.abs(after.astype(int) - before).sum(-1) > 30).mean() > 0.02
    # zoom: the wheel moves the camera away from the orbit target
    d = "viewer.camera.position.distanceTo(viewer.orbit.target)"
    d0 = page.evaluate(d)
    page.mouse.wheel(0, 300)
    page.wait_for_timeout(100)
    assert page.evaluate(d) > d0 * 1.05
    # camera frusta on/off
    no_frusta = canvas_pixels(page)
    page.locator("input[title='camera frusta']").check()
    with_frusta = canvas_pixels(page)
    assert (np.abs(with_frusta.astype(int) - no_frusta).sum(-1) > 30).sum() > 8  # six small frusta, far away
    page.locator("input[title='camera frusta']").uncheck()
    assert np.array_equal(canvas_pixels(page), no_frusta)
    assert not page.errors and not page.external


@needs_browser
def test_a_degenerate_camera_is_not_looked_through(browser_page):
    """A camera wider than 120 degrees (the tiny demo's fallback cameras) would show a few smeared pixels:
    the viewer starts from a view of the bounding box instead, and draws that camera's frustum clipped."""
    page = browser_page
    load(page, "degenerate.fourd4d")
    page.evaluate("viewer.frusta.checked = false; viewer.pointsMaterial.size = 1; viewer.requestRender()")
    assert page.evaluate("viewer.intrinsics.fx") > 100  # the bounding-box view's, not K's 0.01
    assert 0.1 < covered(canvas_pixels(page)).mean() < 0.9  # the whole wall, smaller than the canvas
    extent = page.evaluate("viewer.extent")
    segments = page.evaluate("viewer._frustumSegments[0]")
    assert max(abs(x) for x in segments) < 0.5 * extent
    assert not page.errors


@needs_browser
def test_parse_asset_in_browser_matches_python(browser_page, assets):
    from fourd_core.testing.readers import read_layer, read_viewer_asset

    data = assets["both.fourd4d"]
    header, pos, col = read_viewer_asset(data)
    splats = read_layer(data, "splats")
    js = browser_page.evaluate("""async () => { const r = await fetch('/both.fourd4d');
        const a = (await import('/web/fourd/viewer.js')).parseAsset(await r.arrayBuffer());
        return [a.header.frames, a.points.length, Array.from(a.points[2].positions.slice(0, 6)),
                Array.from(a.points[2].colors.slice(0, 6)), Array.from(a.splats[1].rotations.slice(0, 8)),
                Array.from(a.splats[1].scales.slice(0, 6)), a.splats[1].count]; }""")
    assert js[0] == header["frames"] == F and js[1] == F
    np.testing.assert_array_equal(js[2], pos[2][:2].reshape(-1))
    assert js[3] == col[2][:2].reshape(-1).tolist()
    np.testing.assert_array_equal(js[4], splats["rotations"][1][:2].reshape(-1))
    np.testing.assert_array_equal(js[5], splats["scales"][1][:2].reshape(-1))
    assert js[6] == len(splats["positions"][1])


@needs_browser
def test_scene_and_splats_together_with_a_toggle_each(browser_page):
    page = browser_page
    load(page, "both.fourd4d")
    page.evaluate("viewer.frusta.checked = false; viewer.pointsMaterial.size = 1; viewer.setFrame(0)")
    assert page.locator("input[title='show the Gaussian splats']").is_visible()
    assert page.locator("input[title='show the scene\\'s points']").is_visible()
    both = canvas_pixels(page)
    page.locator("input[title='show the Gaussian splats']").uncheck()
    points_only = canvas_pixels(page)
    page.locator("input[title='show the scene\\'s points']").uncheck()
    nothing = canvas_pixels(page)
    assert covered(both).mean() > 2 * covered(points_only).mean() > 0.02  # 400 points vs 192 splats
    assert covered(nothing).mean() == 0
    assert np.array_equal(nothing[5, 5], BACKGROUND)
    page.locator("input[title='show the Gaussian splats']").check()
    page.locator("input[title='show the scene\\'s points']").check()
    assert not page.errors


@needs_browser
def test_comfyui_extension_mounts_the_viewer_on_the_preview_nodes(browser_page):
    """web/fourd_preview.js against stubs of the frontend's app/api modules: the two preview node types get a
    working viewer widget that loads the asset named by the node's ui output; other nodes get none."""
    out = browser_page.evaluate("""async () => {
        await import('/extensions/ComfyUI-FourD/fourd_preview.js');
        const ext = window.fourdExtensions.find((e) => e.name === 'ComfyUI-FourD.Preview4D');
        const result = {};
        for (const name of ['FourDPreview4D', 'FourDPreviewGaussians', 'PreviewImage']) {
            function NodeType() { this.size = [200, 100]; }
            NodeType.prototype.addDOMWidget = function (n, t, el) {
                el.style.width = '300px'; el.style.height = '200px'; document.body.appendChild(el); this.el = el; };
            NodeType.prototype.setSize = function (s) { this.size = s; };
            await ext.beforeRegisterNodeDef(NodeType, { name });
            const node = new NodeType();
            if (node.onNodeCreated) node.onNodeCreated();
            if (!node.fourdViewer) { result[name] = null; continue; }
            node.onExecuted({ fourd_scene: [{ filename: 'a.fourd4d', subfolder: 'fourd_preview', type: 'temp' }] });
            for (let k = 0; k < 200 && !node.fourdViewer.asset; k++) await new Promise((r) => setTimeout(r, 50));
            await node.fourdViewer.settled();
            const frames = node.fourdViewer.frameCount, hasCanvas = !!node.el.querySelector('canvas');
            node.onRemoved && node.onRemoved();
            result[name] = [frames, hasCanvas, node.el.querySelector('canvas') === null, node.size[0] >= 440];
        }
        return result; }""")
    assert out == {"FourDPreview4D": [6, True, True, True], "FourDPreviewGaussians": [6, True, True, True],
                   "PreviewImage": None}
    assert not browser_page.errors and not browser_page.external


def test_comfyui_does_not_load_the_renderer_bundle_as_an_extension():
    """ComfyUI's /extensions route lists glob(WEB_DIRECTORY + '/**/*.js', recursive=True) and the frontend
    imports each listed file (server.py, get_extensions, Comfy-Org/ComfyUI a125cd84 and 0.8.0): the bundle and
    its build files must not be among them, and the bundle must be there with its licences."""
    web = ROOT / "web"
    listed = sorted(os.path.relpath(f, web) for f in glob.glob(os.path.join(glob.escape(str(web)), "**/*.js"),
                                                                recursive=True))
    assert listed == ["fourd/viewer.js", "fourd_preview.js"]
    bundle = web / "fourd" / "vendor" / "fourd-three-spark.mjs"
    assert bundle.is_file() and bundle.stat().st_size > 500_000
    licences = (web / "fourd" / "vendor" / "LICENSES").read_text()
    for name in ("three", "@sparkjsdev/spark", "fflate"):
        assert f"== {name} " in licences
    assert licences.count("MIT License") >= 3 or licences.count("Permission is hereby granted") >= 3
