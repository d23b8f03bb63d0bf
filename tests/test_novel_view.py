"""``python -m fourd_core novel-view``: the trajectory render written with its cameras, the tiny
diffusers VACE run, and bad input (exit 2 before the expensive work, nothing left behind)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "geometry"))
from trajectory_truth import F, check_frame, make_scene  # noqa: E402

from fourd_core.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nv") / "scene.safetensors"
    scene = make_scene()
    scene.metadata["prompt"] = "a square in front of a wall"
    scene.save(path)
    return path


@pytest.fixture(scope="module")
def vace_cache(tmp_path_factory) -> Path:
    from fourd_core.models.vace import ensure_tiny_vace

    root = tmp_path_factory.mktemp("vace_cache")
    ensure_tiny_vace(root)
    return root


def test_render_only_cameras_reproduce_the_projections(scene_file, tmp_path):
    import imageio.v2 as imageio

    out = tmp_path / "nv"
    ho, wo = 29, 47
    rc = main(["novel-view", "--scene", str(scene_file), "--path", "orbit", "--degrees", "17", "--render-only",
               "--height", str(ho), "--width", str(wo), "--point-size", "2", "--out", str(out)])
    assert rc == 0
    for name in ("render.mp4", "mask.mp4", "holes.npy", "cameras.json", "transforms.json", "novel_view.json"):
        assert (out / name).is_file(), name
    assert not (out / "novel_view.mp4").exists()  # no model, no refined video
    cams = json.loads((out / "cameras.json").read_text())
    assert cams["convention"] == "opencv" and (cams["width"], cams["height"]) == (wo, ho) and len(cams["frames"]) == F
    holes = np.load(out / "holes.npy", allow_pickle=False)
    assert holes.shape == (F, ho, wo) and holes.dtype == np.uint8 and set(np.unique(holes)) <= {0, 1}
    from fourd_core.scene import Scene4D

    scene = Scene4D.load(scene_file)  # colours as saved (uint8): the row/col/frame code survives exactly
    for t, fr in enumerate(cams["frames"]):
        img = imageio.imread(out / "render" / f"frame_{t:05d}.png").astype(np.float64) / 255.0
        covered = check_frame(scene, img, holes[t].astype(np.float64), np.array(fr["K"]),
                              np.array(fr["cam_to_world"]), t, point_size=2)
        assert covered.sum() > 0.7 * ho * wo
    # transforms.json: the same cameras in nerfstudio's conventions, pointing at the written frames
    tr = json.loads((out / "transforms.json").read_text())
    for fr, cv in zip(tr["frames"], cams["frames"]):
        assert (out / fr["file_path"]).is_file()
        np.testing.assert_allclose(np.array(fr["transform_matrix"]), np.array(cv["cam_to_world"]) @ np.diag([1, -1, -1, 1]))
        assert fr["cx"] == pytest.approx(cv["cx"] + 0.5) and fr["fl_x"] == pytest.approx(cv["fx"])
    info = json.loads((out / "novel_view.json").read_text())
    assert info["source_frames"] == list(range(F)) and info["render"]["path"] == "orbit"
    assert 0 < info["hole_fraction"] < 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left


def test_tiny_vace_run_writes_video_mask_render_and_cameras(scene_file, vace_cache, tmp_path, capsys):
    from fourd_core.io.video import read_video

    out = tmp_path / "nv"
    rc = main(["novel-view", "--scene", str(scene_file), "--vace", "tiny", "--cache-dir", str(vace_cache),
               "--height", "32", "--width", "48", "--steps", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err[-2000:]
    video = read_video(out / "novel_view.mp4")
    assert video.shape == (F, 32, 48, 3)
    assert read_video(out / "render.mp4").shape == (F, 32, 48, 3)
    assert np.load(out / "holes.npy").shape == (F, 32, 48)
    assert len(json.loads((out / "cameras.json").read_text())["frames"]) == F
    info = json.loads((out / "novel_view.json").read_text())
    assert info["tiny"] is True and info["prompt"] == "a square in front of a wall"
    assert info["sampling"]["steps"] == 2 and info["sampling"]["reference"] == "scene frame 0"
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"]["video"] == 1


def test_vace_inputs_follow_the_diffusers_convention(scene_file, monkeypatch):
    """The pipeline gets the render as control video, white (255) = hole = generate, the first frame as reference."""
    from fourd_core.geometry.trajectory import render_novel_view
    from fourd_core.pipelines.novel_view import VaceSettings, refine_with_vace
    from fourd_core.scene import Scene4D

    scene = Scene4D.load(scene_file)
    render = render_novel_view(scene, "orbit", degrees=25.0, height=32, width=48)
    seen = {}

    class FakePipe:
        _execution_device = torch.device("cpu")

        def __call__(self, **kw):
            seen.update(kw)
            return type("Out", (), {"frames": torch.zeros(1, F, 3, 32, 48)})()

    video = refine_with_vace(FakePipe(), render, scene.rgb[0], VaceSettings(prompt="p", steps=3))
    assert video.shape == (F, 32, 48, 3)
    assert len(seen["video"]) == len(seen["mask"]) == F and seen["num_frames"] == F
    for t in range(F):
        m = np.asarray(seen["mask"][t])
        assert m.shape == (32, 48) and set(np.unique(m)) <= {0, 255}
        np.testing.assert_array_equal(m == 255, render.holes[t].numpy() > 0.5)
        v = np.asarray(seen["video"][t])
        assert np.all(v[m == 255] == 128)  # holes are mid-gray: 0 in VACE's [-1, 1] inputs
    np.testing.assert_array_equal(np.asarray(seen["reference_images"]), np.round(scene.rgb[0].numpy() * 255))
    assert (seen["height"], seen["width"], seen["num_inference_steps"]) == (32, 48, 3)


def _truncated(vace_cache, tmp_path) -> str:
    bad = tmp_path / "vace_truncated"
    shutil.copytree(vace_cache / "tiny-vace-v1", bad)
    f = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return str(bad)


def _no_cameras(tmp_path) -> str:
    from fourd_core.scene import Scene4D

    s = make_scene()
    p = tmp_path / "nocams.safetensors"
    Scene4D(rgb=s.rgb, xyz=s.xyz).save(p)
    return str(p)


BAD = [
    ("truncated VACE file", lambda c, t: ["--vace", _truncated(c, t)], "truncated|bytes"),
    ("VACE folder of another family", lambda c, t: ["--vace", str(c / "i2v")], "image-to-video.*not Wan VACE"),
    ("frames VACE cannot take", lambda c, t: ["--vace", "tiny", "--frames", "6"], "4k\\+1"),
    ("a path with zero frames", lambda c, t: ["--render-only", "--frames", "0"], "zero frames"),
    ("size VACE cannot take", lambda c, t: ["--vace", "tiny", "--height", "40"], "multiple of 16"),
    ("offline hub id", lambda c, t: ["--vace", "Wan-AI/Wan2.1-VACE-1.3B-diffusers", "--offline", "--cache-dir",
                                     str(t / "empty")], "cannot download"),
    ("not a model folder", lambda c, t: ["--vace", str(t)], "no model_index.json"),
    ("neither a model nor render-only", lambda c, t: [], "--vace"),
    ("both", lambda c, t: ["--vace", "tiny", "--render-only"], "--render-only"),
    ("no cameras", lambda c, t: ["--render-only", "--scene", _no_cameras(t)], "no cameras"),
    ("point size 0", lambda c, t: ["--render-only", "--point-size", "0"], "point_size"),
]


@pytest.mark.parametrize("what,extra,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_before_the_expensive_work(what, extra, msg, scene_file, vace_cache, tiny_base, tmp_path,
                                                     capsys, monkeypatch):
    import fourd_core.models.vace as vace

    if not (vace_cache / "i2v").exists():  # a Wan2.1-I2V diffusers folder (the tiny 4DNeX base)
        (vace_cache / "i2v").symlink_to(tiny_base, target_is_directory=True)
    monkeypatch.setenv("FOURD_CACHE", str(vace_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    called = []
    monkeypatch.setattr(vace, "load_vace_pipeline", lambda *a, **k: called.append("load") or pytest.fail("loaded"))
    args = extra(vace_cache, tmp_path)
    if "--scene" not in args:
        args = ["--scene", str(scene_file)] + args
    out = tmp_path / "out" / "nv"
    rc = main(["novel-view", "--height", "32", "--width", "48", *args, "--out", str(out)])  # later options win
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(msg, err), err
    assert not called
    assert not (tmp_path / "out").exists()  # nothing left behind, not even the folder
