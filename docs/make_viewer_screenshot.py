"""Renders docs/viewer.png: the pack's web 4D viewer (headless Chromium) on a small 4D scene built
from the example photo (a depth layout + a camera arc), to show what the widget looks like.

    python docs/make_viewer_screenshot.py
"""

from __future__ import annotations

import functools
import http.server
import shutil
import sys
import threading
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fourd_core.io.images import load_image, prepare_image  # noqa: E402
from fourd_core.io.viewer_asset import viewer_asset_bytes  # noqa: E402
from fourd_core.scene import Scene4D  # noqa: E402


def demo_scene(frames: int = 12, h: int = 256, w: int = 384) -> Scene4D:
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


def main() -> None:
    from playwright.sync_api import sync_playwright

    www = Path("/tmp/fourd_www")
    shutil.rmtree(www, ignore_errors=True)
    www.mkdir()
    (www / "web").symlink_to(ROOT / "web")
    (www / "scene.fourd4d").write_bytes(viewer_asset_bytes(demo_scene(), points_per_frame=60000))
    (www / "index.html").write_text("""<!doctype html><body style="margin:0;background:#222">
<div id="h" style="width:640px;height:470px"></div><script type="module">
import { FourDViewer } from "/web/fourd/viewer.js";
const v = new FourDViewer(document.getElementById("h")); window.v = v;
v.loadUrl("/scene.fourd4d").then(() => { v.yaw = 0.55; v.pitch = 0.35; v.distance *= 1.5; v.sizeSlider.value = 2; v.setFrame(6); window.ready = true; });
</script></body>""")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-background-networking"])
        page = b.new_page(viewport={"width": 640, "height": 470})
        page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html")
        page.wait_for_function("window.ready === true", timeout=30000)
        page.locator("#h").screenshot(path=str(ROOT / "docs" / "viewer.png"))
        b.close()
    httpd.shutdown()
    print("wrote docs/viewer.png")


if __name__ == "__main__":
    main()
