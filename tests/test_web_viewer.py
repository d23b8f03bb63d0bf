"""The web 4D viewer in headless Chromium (Debian chromium driven by Playwright): a page loads the
widget module with a small generated 4D scene, renders non-blank pixels, and moving the time
slider changes them. Also loads the ComfyUI extension module against the real frontend's API
shape (app/api stubs served at /scripts/)."""

from __future__ import annotations

import functools
import http.server
import io
import shutil
import threading

import numpy as np
import pytest
import torch

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")

PAGE = """<!doctype html><html><body style="margin:0;background:#000">
<div id="host" style="width:480px;height:360px"></div>
<script type="module">
import { FourDViewer, parseAsset } from "/web/fourd/viewer.js";
const v = new FourDViewer(document.getElementById("host"));
window.viewer = v;
v.loadUrl("/scene.fourd4d").then(() => { window.ready = true; }, (e) => { window.failed = String(e); });
</script></body></html>"""


def moving_scene():
    """A coloured sphere of points that moves right over 6 frames, seen by a camera at the origin."""
    from fourd_core.scene import Scene4D

    F, H, W = 6, 24, 32
    K = torch.tensor([[30.0, 0, (W - 1) / 2], [0, 30.0, (H - 1) / 2], [0, 0, 1]]).expand(F, 3, 3).clone()
    c2w = torch.eye(4).expand(F, 4, 4).clone()
    i = torch.arange(H, dtype=torch.float32).view(H, 1).expand(H, W)
    j = torch.arange(W, dtype=torch.float32).view(1, W).expand(H, W)
    depth = torch.stack([2.0 + 0.3 * torch.sin(j / 5) + 0 * f for f in range(F)])
    rgb = torch.stack([torch.stack([j / W, i / H, torch.full_like(i, f / F)], -1) for f in range(F)])
    scene = Scene4D(rgb=rgb, xyz=torch.rand(F, H, W, 3), K=K, cam_to_world=c2w, depth=depth)
    for f in range(F):  # move the camera so that the points shift in the image
        scene.cam_to_world[f, 0, 3] = -0.6 * f
    return scene


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from fourd_core.io.viewer_asset import viewer_asset_bytes

    root = tmp_path_factory.mktemp("www")
    (root / "web").symlink_to(ROOT / "web")
    (root / "index.html").write_text(PAGE)
    (root / "scene.fourd4d").write_bytes(viewer_asset_bytes(moving_scene(), points_per_frame=600))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
        pg = browser.new_page(viewport={"width": 520, "height": 400})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(server + "/index.html")
        pg.wait_for_function("window.ready === true || window.failed !== undefined", timeout=20000)
        assert pg.evaluate("window.failed") is None, pg.evaluate("window.failed")
        pg.errors = errors
        yield pg
        browser.close()


def canvas_pixels(page) -> np.ndarray:
    from PIL import Image

    png = page.locator("canvas").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def test_viewer_renders_points(page):
    px = canvas_pixels(page)
    background = px[2, 2]
    differs = np.abs(px - background).sum(-1) > 30
    assert differs.mean() > 0.005, "the viewer drew (almost) nothing"
    assert page.evaluate("viewer.frames.length") == 6
    assert not page.errors


def test_time_slider_changes_the_picture(page):
    before = canvas_pixels(page)
    page.locator("input[type=range]").first.fill("5")  # fires 'input'
    assert page.evaluate("viewer.frame") == 5
    after = canvas_pixels(page)
    assert np.abs(after - before).sum(-1).astype(bool).mean() > 0.002
    assert page.locator("text=6/6").count() == 1


def test_orbit_and_zoom_change_the_view(page):
    before = canvas_pixels(page)
    box = page.locator("canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 80, cy + 10, steps=5)
    page.mouse.up()
    after = canvas_pixels(page)
    assert np.abs(after - before).sum(-1).astype(bool).mean() > 0.002
    d0 = page.evaluate("viewer.distance")
    page.mouse.wheel(0, 300)
    assert page.evaluate("viewer.distance") > d0


def test_point_size_and_frusta_controls(page):
    page.evaluate("viewer.frusta.checked = false; viewer.render()")
    no_frusta = canvas_pixels(page)
    page.evaluate("viewer.frusta.checked = true; viewer.render()")
    with_frusta = canvas_pixels(page)
    assert np.abs(with_frusta - no_frusta).sum() > 0
    small = (np.abs(canvas_pixels(page) - canvas_pixels(page)[2, 2]).sum(-1) > 30).mean()
    page.evaluate("viewer.sizeSlider.value = 8; viewer.render()")
    big = (np.abs(canvas_pixels(page) - canvas_pixels(page)[2, 2]).sum(-1) > 30).mean()
    assert big > small


def test_parse_asset_in_browser_matches_python(page, server):
    from fourd_core.io.viewer_asset import read_viewer_asset, viewer_asset_bytes

    header, pos, col = read_viewer_asset(viewer_asset_bytes(moving_scene(), points_per_frame=600))
    js = page.evaluate("""async () => { const r = await fetch('/scene.fourd4d'); const a = (await import('/web/fourd/viewer.js')).parseAsset(await r.arrayBuffer());
        return [a.header.frames, Array.from(a.positions[3].slice(0, 6)), Array.from(a.colors[3].slice(0, 6))]; }""")
    assert js[0] == header["frames"]
    assert np.allclose(js[1], pos[3][:2].reshape(-1), atol=1e-6) and js[2] == col[3][:2].reshape(-1).tolist()
