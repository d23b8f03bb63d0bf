"""Makes the template thumbnails ``example_workflows/<title>.jpg`` (what ComfyUI's template browser shows beside
each of the pack's templates): each workflow loaded in the real frontend, the whole graph fitted into a square,
captured in headless Chromium, its title written across the top, saved as a 512 x 512 JPEG. The example-scene template is run first (CPU, about
a minute), so its Preview 3D and 4D preview show the scene.

    COMFYUI_PATH=/path/to/ComfyUI python docs/make_template_thumbnails.py [--frontend STATIC_DIR] [--only TITLE]

Uses tests/comfyui/frontend.py (a throw-away ComfyUI server with this checkout as its only custom node) and
Debian's Chromium through Playwright.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))

from frontend import comfy_server, dismiss_dialogs, open_ui  # noqa: E402

SIDE = 512
VIEW = 1000          # the square of the page the graph is fitted into (CSS pixels)
FIT = """(side) => {
    const nodes = app.graph._nodes, th = LiteGraph.NODE_TITLE_HEIGHT;
    const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - th));
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
    const r = app.canvas.canvas.getBoundingClientRect(), pad = 24;
    const scale = Math.min((side - 2 * pad) / (x1 - x0), (side - 2 * pad) / (y1 - y0), 1.2);
    const left = r.left + (r.width - side) / 2, top = r.top + (r.height - side) / 2;
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [(left - r.left + (side - scale * (x1 - x0)) / 2) / scale - x0,
                            (top - r.top + (side - scale * (y1 - y0)) / 2) / scale - y0];
    app.graph.setDirtyCanvas(true, true);
    return {x: left, y: top, width: side, height: side};
}"""


def banner(img, title: str):
    """``img`` with ``title`` (without the leading "FourD ") in white on a dark band across the top."""
    import textwrap

    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=30)
    lines = textwrap.wrap(title.removeprefix("FourD "), width=30)[:3]
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, 18 + 36 * len(lines)], fill=(24, 24, 28))
    for k, line in enumerate(lines):
        draw.text((16, 12 + 36 * k), line, fill=(240, 240, 240), font=font)
    return img


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frontend", help="a comfyui_frontend_package/static folder (default: the release's pinned one)")
    ap.add_argument("--only", help="make only this template's thumbnail (its title)")
    args = ap.parse_args()
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        sys.exit("Set COMFYUI_PATH to a ComfyUI checkout.")
    from PIL import Image

    venv = Path(comfyui) / ".venv" / "bin" / "python"
    templates = sorted((ROOT / "example_workflows").glob("*.json"))
    if args.only:
        templates = [p for p in templates if p.stem == args.only]
    with comfy_server(comfyui, args.frontend, python=str(venv) if venv.is_file() else None) as server:
        with open_ui(server, viewport=(VIEW + 600, VIEW + 400)) as ui:   # room around the square for the menus
            for p in templates:
                wf = json.loads(p.read_text())
                ui.evaluate("async (wf) => { await app.loadGraphData(wf); }", wf)
                dismiss_dialogs(ui.page)
                if wf["extra"]["fourd"]["name"] == "fourd_example_scene":
                    t0 = time.time()
                    ui.evaluate("async () => { await app.queuePrompt(0, 1); }")
                    ui.page.wait_for_timeout(3000)
                    while time.time() - t0 < 900:
                        q = json.loads(server.get("/queue"))
                        if not q["queue_running"] and not q["queue_pending"]:
                            break
                        time.sleep(2)
                    print(f"ran {p.stem} in {time.time() - t0:.0f} s")
                    ui.page.wait_for_timeout(20000)       # the viewers load and draw
                clip = ui.evaluate(FIT, VIEW)
                ui.page.wait_for_timeout(2500)
                dismiss_dialogs(ui.page)
                ui.evaluate("() => document.querySelectorAll('.p-toast, .p-toast-message').forEach((e) => e.remove())")
                png = ui.page.screenshot(clip=clip)
                img = Image.open(io.BytesIO(png)).convert("RGB").resize((SIDE, SIDE), Image.LANCZOS)
                banner(img, p.stem).save(p.with_suffix(".jpg"), quality=85, optimize=True)
                print("wrote", p.with_suffix(".jpg").relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
