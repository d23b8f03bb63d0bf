"""A real ComfyUI server with its real frontend in headless Chromium, for the tests that check what a user
sees (tests/comfyui/test_frontend.py) and the scripts that make pictures of it (docs/).

* :func:`comfy_server` starts ``COMFYUI_PATH/main.py --cpu`` on 127.0.0.1 with a throw-away
  ``--base-directory`` whose ``custom_nodes/ComfyUI-FourD`` links this checkout, optionally with another
  frontend (``--front-end-root``), and stops it on exit.
* :func:`frontend_roots` reads ``FOURD_FRONTENDS`` (``os.pathsep``-separated ``.../comfyui_frontend_package/static``
  folders; e.g. ``pip install --no-deps --target /some/dir comfyui-frontend-package==1.58.1``); without it, the
  frontend the ComfyUI release pins (``None``).
* :func:`open_ui` opens the UI in Debian's Chromium (Playwright, SwiftShader WebGL) and records page errors.

Nothing here is imported by the pack; ComfyUI's code is never copied or installed by it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FOURD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def frontend_roots() -> list[str | None]:
    """The frontends to check: ``FOURD_FRONTENDS`` folders, else ``[None]`` (the release's pinned frontend)."""
    value = os.environ.get("FOURD_FRONTENDS", "")
    return [p for p in value.split(os.pathsep) if p] or [None]


def frontend_version(root: str | None) -> str:
    """``1.58.1`` from ``.../1.58.1/comfyui_frontend_package/static`` (the package's folder name), else ``pinned``."""
    if root is None:
        return "pinned"
    for part in reversed(Path(root).parts):
        if part[:1].isdigit():
            return part
    return Path(root).name


def browser_missing() -> str:
    """Why headless Chromium cannot run here ("" when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (Python) is not installed (requirements-dev.txt)"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FOURD_CHROMIUM)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ComfyUI: ``url``, ``base`` (its base directory: input/, output/, temp/), ``log`` (path)."""

    def __init__(self, url: str, base: Path, log: Path, proc: subprocess.Popen):
        self.url, self.base, self.log, self.proc = url, base, log, proc

    def get(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read()

    def get_json(self, path: str):
        return json.loads(self.get(path))

    def post_json(self, path: str, body) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return {"http_error": exc.code, **json.loads(exc.read() or b"{}")}

    def run_prompt(self, prompt: dict, timeout: float = 1800) -> dict:
        """Queue an API-format prompt and wait for it: ``{"ok", "seconds", "outputs" or "error"}``."""
        t0 = time.time()
        res = self.post_json("/prompt", {"prompt": prompt, "client_id": "fourd-tests"})
        if "prompt_id" not in res:
            return {"ok": False, "error": res, "seconds": 0.0}
        pid = res["prompt_id"]
        while time.time() - t0 < timeout:
            hist = self.get_json(f"/history/{pid}")
            if pid in hist:
                status = hist[pid].get("status", {})
                ok = status.get("status_str") == "success"
                return {"ok": ok, "seconds": time.time() - t0, "outputs": hist[pid].get("outputs", {}),
                        "error": None if ok else status.get("messages")}
            if self.proc.poll() is not None:
                return {"ok": False, "error": "the server stopped", "seconds": time.time() - t0}
            time.sleep(1.0)
        return {"ok": False, "error": f"no result after {timeout} s", "seconds": time.time() - t0}


@contextlib.contextmanager
def comfy_server(comfyui: str | Path, front_end_root: str | None = None, python: str | None = None,
                 startup_timeout: float = 300, with_pack: bool = True):
    """Start ComfyUI (see the module docstring; ``with_pack=False``: without this pack, to tell the frontend's
    own errors from the pack's); yields a :class:`Server`; stops it (and removes the base directory) on exit."""
    comfyui = Path(comfyui).expanduser().resolve()
    base = Path(tempfile.mkdtemp(prefix="fourd_comfy_"))
    (base / "custom_nodes").mkdir()
    if with_pack:
        os.symlink(ROOT, base / "custom_nodes" / "ComfyUI-FourD")
    port = _free_port()
    cmd = [python or sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--disable-auto-launch"]
    if front_end_root:
        cmd += ["--front-end-root", str(front_end_root)]
    log = base / "server.log"
    env = {**os.environ, "FOURD_CACHE": os.environ.get("FOURD_CACHE", str(base / "fourd_cache"))}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=comfyui, stdout=fh, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", base, log, proc)
    try:
        t0 = time.time()
        while True:
            try:
                server.get("/system_stats", timeout=2)
                break
            except Exception:
                if proc.poll() is not None or time.time() - t0 > startup_timeout:
                    raise RuntimeError(f"ComfyUI did not start: {log.read_text()[-2000:]}")
                time.sleep(1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if os.environ.get("FOURD_KEEP_SERVER_LOG"):
            shutil.copy(log, os.environ["FOURD_KEEP_SERVER_LOG"])
        shutil.rmtree(base, ignore_errors=True)


class Page:
    """The UI in one Chromium page: ``page`` (Playwright), ``errors`` (page errors and console errors)."""

    def __init__(self, page, errors: list[str]):
        self.page, self.errors = page, errors

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)


@contextlib.contextmanager
def open_ui(server: Server, viewport=(1600, 1000)):
    """Open the UI, wait for the app, dismiss the start-up dialogs; yields a :class:`Page`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console.error: {m.text}") if m.type == "error" else None)
            page.goto(server.url + "/", wait_until="domcontentloaded")
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=180000)
            page.wait_for_timeout(3000)
            dismiss_dialogs(page)
            yield Page(page, errors)
        finally:
            browser.close()


def dismiss_dialogs(page) -> None:
    """Close the templates / release-notes dialogs the frontend opens on a fresh profile."""
    for _ in range(3):
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    page.evaluate("() => document.querySelectorAll('.p-dialog-mask').forEach(e => e.remove())")


#: frontend page errors unrelated to the pack (seen with no custom node installed), matched by substring
KNOWN_FRONTEND_NOISE = (
    "Jobs API",                        # frontend 1.58.1 on a backend without /api/jobs (0.3.64): 404s
    "/api/jobs",
    "Failed to load resource",         # the 404s above, and favicon/locale probes
    "reading 'id'",                    # frontend 1.27.10 on page load, with or without any custom node
)


def pack_errors(errors: list[str]) -> list[str]:
    """``errors`` without :data:`KNOWN_FRONTEND_NOISE`."""
    return [e for e in errors if not any(k in e for k in KNOWN_FRONTEND_NOISE)]
