"""The README's generate command, end to end, in a fresh process with the tiny preset, on a machine
where open3d cannot load (as on a fresh Debian without libusb: the README's two commands must
still write every output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import EXAMPLE_IMAGE, EXAMPLE_PROMPT, ROOT


def _run(args, tmp_path, *, env_extra=None, **kw):
    env = {**os.environ, "FOURD_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "fourd_core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, **kw)


def broken_open3d(tmp_path) -> dict:
    """An ``open3d`` that fails to import exactly as the real wheel does without libusb, first on the path."""
    shadow = tmp_path / "shadow"
    (shadow / "open3d").mkdir(parents=True)
    (shadow / "open3d" / "__init__.py").write_text(
        "raise ImportError('libusb-1.0.so.0: cannot open shared object file: No such file or directory')\n")
    return {"PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def test_generate_tiny_preset_writes_every_output_without_open3d(tmp_path):
    out = tmp_path / "out"
    r = _run(["generate", "--preset", "tiny", "--image", str(EXAMPLE_IMAGE), "--prompt-file", str(EXAMPLE_PROMPT),
              "--out", str(out), "--voxel-size", "0.01"], tmp_path, env_extra=broken_open3d(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    # the optional open3d step says so, up front, and names the fix
    assert "libusb-1.0-0" in r.stderr and "skipped" in r.stderr
    assert "TINY PRESET" in r.stderr
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["tiny_preset"] is True and summary["frames"] == 49
    for name in ("rgb.mp4", "xyz.mp4", "scene.safetensors", "cameras.json", "transforms.json", "depth.npy"):
        assert (out / name).is_file(), name
    F = 49
    assert len(list((out / "pointclouds").glob("*.ply"))) == F
    assert len(list((out / "pointclouds").glob("*.glb"))) == F
    assert len(list((out / "depth").glob("*.png"))) == F
    cams = json.loads((out / "cameras.json").read_text())
    assert len(cams["frames"]) == F and cams["convention"] == "opencv"
    K = np.array(cams["frames"][0]["K"])
    assert K[0, 0] > 0 and np.allclose(K[2], [0, 0, 1])
    assert np.load(out / "depth.npy").shape == (F, 96, 144)
    from fourd_core.scene import Scene4D

    scene = Scene4D.load(out / "scene.safetensors")
    assert scene.has_cameras and scene.metadata["prompt"].startswith("The video showcases")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    from fourd_core.testing.readers import read_ply

    pts, cols = read_ply(out / "pointclouds" / "frame_00000.ply")
    assert len(pts) == 96 * 144 and torch.isfinite(pts).all()  # every pixel (voxel step skipped, not failed)


def test_geometry_subcommand_reexports_a_scene(tmp_path):
    from test_io import _scene

    _scene(F=2, H=16, W=24).save(tmp_path / "s.safetensors")
    r = _run(["geometry", "--scene", str(tmp_path / "s.safetensors"), "--out", str(tmp_path / "o"), "--no-ply"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "o" / "cameras.json").is_file() and not list((tmp_path / "o").glob("pointclouds/*.ply"))


@pytest.mark.parametrize("args,msg", [
    (["--image", "/nonexistent.png", "--prompt", "x"], "not found"),
    (["--image", str(EXAMPLE_IMAGE)], "prompt"),
    (["--image", str(EXAMPLE_IMAGE), "--prompt", "x", "--frames", "48"], "4k+1"),
])
def test_generate_bad_input_is_a_clear_error(tmp_path, args, msg):
    r = _run(["generate", "--preset", "tiny", "--out", str(tmp_path / "o"), *args], tmp_path)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
