"""Opens the pack's web 4D viewer (web/fourd/viewer.js) in headless Debian chromium driven by Playwright,
for the viewer tests and the docs/ screenshot scripts.

A throw-away folder is served on 127.0.0.1 with ``web/`` linked in and the given files beside it; the page
builds one ``FourDViewer`` (``window.viewer``) and loads ``/scene.fourd4d``. WebGL 2 runs on SwiftShader
(software), so no GPU is needed. :func:`skip_reason` tells why this cannot run here (tests skip on it).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import json
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--force-color-profile=srgb"]

PAGE = """<!doctype html><html><body style="margin:0;background:#000">
<div id="host" style="width:%(host_w)dpx;height:%(host_h)dpx"></div>
<script type="module">
import { FourDViewer } from "/web/fourd/viewer.js";
const v = new FourDViewer(document.getElementById("host"), %(options)s);
window.viewer = v;
v.loadUrl("/scene.fourd4d").then(() => v.settled()).then(
  (ok) => { window.ready = ok ? true : "the viewer did not settle"; }, (e) => { window.failed = String(e); });
</script></body></html>"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _local_only(external: list, route) -> None:
    """Serve only this machine's test server; record and refuse anything else (the viewer is offline)."""
    url = route.request.url
    if url.startswith("http://127.0.0.1:") or url.startswith("blob:") or url.startswith("data:"):
        route.continue_()
    else:
        external.append(url)
        route.abort()


def skip_reason() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    if CHROMIUM is None:
        return "Debian chromium is not installed (.ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (Python) is not installed (requirements-dev.txt)"
    return None


@contextlib.contextmanager
def viewer_page(asset: bytes, options: dict | None = None, host=(480, 360), viewport=(520, 420),
                files: dict[str, bytes] | None = None, mjs_type: str = "text/javascript"):
    """Yield a Playwright page whose ``window.viewer`` has loaded ``asset`` and settled.

    Args:
        asset: FD4D bytes (fourd_core.io.viewer_asset), served as ``/scene.fourd4d``.
        files: more files to serve beside it (name -> bytes), e.g. other assets for :func:`load`.
        mjs_type: the Content-Type the server sends for ``.mjs`` files (the renderer bundle).
        options: FourDViewer options (e.g. ``{"size": [W, H]}`` for a canvas of exactly W x H pixels).
        host: the widget container's size in CSS pixels; viewport: the page's.
    The page collects uncaught errors in ``page.errors`` and the requests it tried to send anywhere but the
    local server in ``page.external`` (refused); the browser and server are closed on exit.
    """
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="fourd-www-") as tmp:
        root = Path(tmp)
        (root / "web").symlink_to(ROOT / "web")
        (root / "extensions").mkdir()
        (root / "extensions" / "ComfyUI-FourD").symlink_to(ROOT / "web")  # where ComfyUI serves WEB_DIRECTORY
        (root / "scene.fourd4d").write_bytes(asset)
        for name, data in (files or {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        (root / "index.html").write_text(PAGE % {"host_w": host[0], "host_h": host[1],
                                                 "options": json.dumps(options or {})})
        handler_class = type("Handler", (_QuietHandler,), {
            "extensions_map": {**_QuietHandler.extensions_map, ".mjs": mjs_type}})
        handler = functools.partial(handler_class, directory=str(root))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
                    page.errors, page.external = [], []
                    page.on("pageerror", lambda e: page.errors.append(str(e)))
                    page.route("**/*", functools.partial(_local_only, page.external))
                    page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html")
                    page.wait_for_function("window.ready !== undefined || window.failed !== undefined", timeout=60000)
                    failed = page.evaluate("window.failed")
                    assert failed is None, failed
                    assert page.evaluate("window.ready") is True, page.evaluate("window.ready")
                    yield page
                finally:
                    browser.close()
        finally:
            httpd.shutdown()
            httpd.server_close()


def load(page, name: str) -> None:
    """Load the served asset ``name`` into the page's viewer (frame 0, the first camera's view) and settle."""
    failed = page.evaluate("(url) => viewer.loadUrl(url).then(() => null, (e) => String(e))", "/" + name)
    assert failed is None, failed
    settle(page)


def settle(page) -> None:
    """Wait until the viewer has drawn its final picture (Spark sorts splats in a worker)."""
    assert page.evaluate("viewer.settled()") is True, "the viewer did not settle"


def canvas_pixels(page) -> np.ndarray:
    """The viewer's drawing buffer (after it settled) as ``[H, W, 3]`` uint8, read with canvas.toDataURL
    (exact framebuffer values, no screenshot colour management)."""
    from PIL import Image

    settle(page)
    url = page.evaluate("viewer.canvas.toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

