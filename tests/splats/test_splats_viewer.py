"""The web 4D viewer draws a Gaussian-splat asset (headless Debian chromium via Playwright): round splats
sized by their standard deviation, and the size slider scales them."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
from conftest import ROOT
from test_web_viewer import CHROMIUM, PAGE, canvas_pixels, moving_scene

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def splat_page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    from fourd_core.io.viewer_asset import gaussians_viewer_asset_bytes
    from fourd_core.splats.gaussians import pixel_aligned_gaussians

    root = tmp_path_factory.mktemp("www")
    (root / "web").symlink_to(ROOT / "web")
    (root / "index.html").write_text(PAGE)
    g4d = pixel_aligned_gaussians(moving_scene(), stride=2, footprint=0.3)
    (root / "scene.fourd4d").write_bytes(gaussians_viewer_asset_bytes(g4d, splats_per_frame=1000))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
            pg = browser.new_page(viewport={"width": 520, "height": 400})
            errors = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html")
            pg.wait_for_function("window.ready === true || window.failed !== undefined", timeout=20000)
            assert pg.evaluate("window.failed") is None, pg.evaluate("window.failed")
            pg.errors = errors
            yield pg
            browser.close()
    finally:
        httpd.shutdown()


def coverage(page) -> float:
    px = canvas_pixels(page)
    return float((np.abs(px - px[2, 2]).sum(-1) > 30).mean())


def test_viewer_draws_splats_and_the_size_slider_scales_them(splat_page):
    page = splat_page
    assert page.evaluate("viewer.header.splats") is True
    assert page.evaluate("viewer.frames.length") == 6
    page.evaluate("viewer.frusta.checked = false; viewer.render()")
    base = coverage(page)
    assert base > 0.005, "the viewer drew (almost) nothing"
    page.evaluate("viewer.sizeSlider.value = 1; viewer.render()")
    small = coverage(page)
    page.evaluate("viewer.sizeSlider.value = 6; viewer.render()")
    big = coverage(page)
    assert small < base < big
    page.locator("input[type=range]").first.fill("5")
    assert page.evaluate("viewer.frame") == 5
    assert not page.errors
