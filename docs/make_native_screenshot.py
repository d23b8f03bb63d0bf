"""Checks the example workflows in a running ComfyUI's frontend and renders docs/comfyui_native_tiny_demo.png.

    python docs/make_native_screenshot.py http://127.0.0.1:8190

The ComfyUI must have this pack in custom_nodes/. For every UI workflow in example_workflows/, headless
Chromium (Debian's /usr/bin/chromium through Playwright) loads it into the graph and checks that
every node type is registered, that no error dialog opens and that the console shows no error.
Then the native tiny demo is queued from the frontend, and the canvas is captured after the run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_NOISE = ("net::ERR_NAME_NOT_RESOLVED", "Error fetching file size")   # model-size probes, no network here
DIALOGS = """() => Array.from(document.querySelectorAll('.p-dialog, .comfy-modal'))
    .filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 120).replace(/\\n/g, ' '))"""
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main(url: str = "http://127.0.0.1:8190", out: Path = ROOT / "docs" / "comfyui_native_tiny_demo.png") -> int:
    from playwright.sync_api import sync_playwright

    failures = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 2200, "height": 1250})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        time.sleep(3)

        def close_dialogs():
            for _ in range(4):
                page.keyboard.press("Escape")
                time.sleep(0.3)

        close_dialogs()
        errors.clear()
        for wf in sorted((ROOT / "example_workflows").glob("*.json")):
            data = json.loads(wf.read_text())
            needs_models = any(n.get("properties", {}).get("models") for n in data["nodes"])
            before = len(errors)
            missing = page.evaluate("""async (wf) => {
                await window.app.loadGraphData(wf);
                const types = window.LiteGraph.registered_node_types;
                return wf.nodes.filter(n => !(n.type in types)).map(n => n.type);
            }""", data)
            time.sleep(1.5)
            dialogs = page.evaluate(DIALOGS)
            if needs_models:   # the frontend's download list for models not installed here is expected
                dialogs = [d for d in dialogs if not d.startswith("Missing Models")]
            close_dialogs()
            new_errors = [e for e in errors[before:] if not any(s in e for s in OFFLINE_NOISE)]
            ok = not missing and not dialogs and not new_errors
            failures += not ok
            n = page.evaluate("() => window.app.graph._nodes.length")
            print(f"{'OK  ' if ok else 'FAIL'} {wf.name}: {n} nodes loaded; missing types {missing}; dialogs {dialogs}; "
                  f"console errors {new_errors}")
        data = json.loads((ROOT / "example_workflows" / "FourD tiny demo, image to 4D (native, CPU, random weights).json").read_text())
        page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", data)
        close_dialogs()
        start = time.time()
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        time.sleep(2)
        while time.time() - start < 600:
            q = page.evaluate("async () => (await (await fetch('/queue')).json())")
            if not q["queue_running"] and not q["queue_pending"]:
                break
            time.sleep(1)
        print(f"native tiny demo queued from the frontend: finished after {time.time() - start:.1f} s")
        hist = page.evaluate("async () => (await (await fetch('/history?max_items=1')).json())")
        status = next(iter(hist.values()))["status"] if hist else {}
        print("status:", status.get("status_str"), "completed:", status.get("completed"))
        failures += status.get("status_str") != "success"
        close_dialogs()
        page.evaluate("() => { const c = window.app.canvas; c.ds.scale = 0.62; c.ds.offset = [20, 40]; c.setDirty(true, true); }")
        time.sleep(2)
        page.screenshot(path=str(out))
        print("wrote", out)
        browser.close()
    return failures


if __name__ == "__main__":
    sys.exit(1 if main(*sys.argv[1:2]) else 0)
