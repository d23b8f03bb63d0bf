"""The splat CLI sub-command, the export's default pixel-aligned splats and the splat nodes (no ComfyUI)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fourd_core.scene import Scene4D

plyfile = pytest.importorskip("plyfile")


from splat_fixtures import one_thread  # noqa: F401,E402 - autouse fixture


def small_scene(frames=2, h=12, w=16, smooth=False):
    from fourd_core.testing.synthetic_scene import make_synthetic_scene

    s = make_synthetic_scene(frames=frames, height=h, width=w, seed=5)
    rgb = torch.rand(frames, h, w, 3, generator=torch.Generator().manual_seed(0))
    if smooth:   # colour ramps a quarter of the pixels can represent
        i, j = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        rgb = torch.stack([i, j, (i + j) / 2], -1).expand(frames, h, w, 3).contiguous()
    return Scene4D(rgb=rgb, xyz=s.clean_points, K=s.K, cam_to_world=s.cam_to_world, depth=s.depth)


def test_cli_gaussians_writes_a_ply_per_frame(tmp_path, capsys):
    from fourd_core.cli import main

    small_scene().save(tmp_path / "s.safetensors")
    assert main(["gaussians", "--scene", str(tmp_path / "s.safetensors"), "--out", str(tmp_path / "o")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 2 and summary["splats_per_frame"] == 12 * 16
    files = sorted((tmp_path / "o" / "gaussians").glob("*.ply"))
    assert [f.name for f in files] == ["frame_00000.ply", "frame_00001.ply"]
    assert plyfile.PlyData.read(str(files[0]))["vertex"].count == 12 * 16
    assert not list((tmp_path / "o").glob(".fourd-*"))


def test_cli_gaussians_fit_and_bad_input(tmp_path, capsys):
    from fourd_core.cli import main

    small_scene(smooth=True).save(tmp_path / "s.safetensors")
    assert main(["gaussians", "--scene", str(tmp_path / "s.safetensors"), "--out", str(tmp_path / "o"), "--fit",
                 "--iterations", "5", "--resolution", "0", "--orbit"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "fitted" and summary["fit"]["iterations"] == 5
    files = sorted((tmp_path / "o" / "gaussians").glob("*.ply"))
    assert len(files) == 2
    # the written splats, rendered from each frame's own camera, show that frame (a constant guess of these
    # ramps scores ~11 dB)
    from fourd_core.splats.losses import psnr
    from fourd_core.splats.ply import read_gaussians_ply
    from fourd_core.splats.rasterize import render_gaussians

    scene = small_scene(smooth=True)
    for t, f in enumerate(files):
        g = read_gaussians_ply(f)
        assert len(g) == summary["splats_per_frame"]
        img = render_gaussians(g, scene.K[t], scene.cam_to_world[t], 12, 16, backend="torch")["image"].clamp(0, 1)
        assert psnr(img, scene.rgb[t]) > 20, psnr(img, scene.rgb[t])
    assert (tmp_path / "o" / "gaussians_orbit.mp4").stat().st_size > 0
    bare = small_scene()
    Scene4D(rgb=bare.rgb, xyz=bare.xyz).save(tmp_path / "bare.safetensors")
    assert main(["gaussians", "--scene", str(tmp_path / "bare.safetensors"), "--out", str(tmp_path / "x")]) == 2
    assert "geometry" in capsys.readouterr().err
    assert not (tmp_path / "x" / "gaussians").exists()


def test_export_writes_pixel_aligned_splats_by_default(tmp_path):
    from fourd_core.io.export import ExportOptions, export_scene

    scene = small_scene(frames=3)
    written = export_scene(scene, tmp_path, ExportOptions.with_formats(videos=False, glb=False, frames=[0, 2]))
    assert [p.rsplit("/", 1)[1] for p in written["gaussians"]] == ["frame_00000.ply", "frame_00002.ply"]
    v = plyfile.PlyData.read(written["gaussians"][1])["vertex"]
    assert v.count == (12 // 2) * (16 // 2)  # default stride 2
    # the splat centres are the frame's world points at the kept pixels
    pts = scene.points(2)[1::2, 1::2].reshape(-1, 3).numpy()
    np.testing.assert_allclose(np.stack([v["x"], v["y"], v["z"]], 1), pts, rtol=1e-5, atol=1e-5)


def test_nodes_make_fit_save_and_preview(tmp_path, monkeypatch):
    from test_nodes import import_pack

    pack = import_pack("fourd_pack_splats")
    N = pack.NODE_CLASS_MAPPINGS

    monkeypatch.setenv("FOURD_OUTPUT_DIR", str(tmp_path / "output"))
    scene = small_scene()
    (g,) = N["FourDGaussiansFromScene"]().make(scene, stride=1, footprint=0.4, min_confidence=0.0)
    assert g.counts() == [12 * 16] * 2
    cams, _ = N["FourDCameraPath"]().make(scene, "orbit", 10.0, 3, "y", 0.3, 0.0, 0)
    grid = torch.rand(3 * 2, 12, 16, 3)
    fitted, orbit = N["FourDFit4DGaussians"]().fit(scene, iterations=4, resolution=0, isotropic=True, seed=0,
                                                   grid=grid, cameras=cams)
    assert fitted.is_deformable and fitted.view_offsets.shape[0] == 3
    assert orbit.shape == (8, 12, 16, 3) and float(orbit.max()) <= 1
    old_mask = os.umask(0o022)
    try:
        res = N["FourDSaveGaussians"]().save(fitted, "fourd/gs")
    finally:
        os.umask(old_mask)
    first, folder, centres = res["result"]
    assert first == "fourd/gs_00001/frame_00000.ply" and centres == "fourd/gs_00001/frame_00000_centres.glb"
    assert (tmp_path / "output" / centres).read_bytes()[:4] == b"glTF"      # what core Preview3D shows everywhere
    saved = tmp_path / "output" / folder
    assert len(list(saved.glob("*.ply"))) == 2
    assert saved.stat().st_mode & 0o777 == 0o755                          # published like a plain mkdir
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".fourd-")]   # no staging left
    ui = N["FourDPreviewGaussians"]().preview(fitted, 1000, 0.0)["ui"]["fourd_scene"][0]  # kept for old workflows
    assert ui["filename"].endswith(".fourd4d") and ui["type"] == "temp"
    assert N["FourDPreviewGaussians"].DEPRECATED is True
    # the one preview node: splats and the scene's points together in one asset
    from fourd_core.testing.readers import read_layer

    both = N["FourDPreview4D"]().preview(scene=scene, gaussians=fitted)["ui"]["fourd_scene"][0]
    data = (tmp_path / "temp" / both["subfolder"] / both["filename"]).read_bytes()
    assert len(read_layer(data, "splats")["positions"]) == 2 and len(read_layer(data, "points")["positions"]) == 2
    with pytest.raises(Exception, match="connect a scene"):
        N["FourDPreview4D"]().preview()
    with pytest.raises(Exception, match="both"):
        N["FourDFit4DGaussians"]().fit(scene, 2, 0, False, 0, grid=grid)


def test_splat_nodes_validate_at_queue_time_and_leave_nothing_on_failure(tmp_path, monkeypatch):
    from test_nodes import import_pack

    pack = import_pack("fourd_pack_splats_validate")
    N = pack.NODE_CLASS_MAPPINGS
    monkeypatch.setenv("FOURD_OUTPUT_DIR", str(tmp_path / "output"))
    fit = N["FourDFit4DGaussians"]
    assert fit.VALIDATE_INPUTS(iterations=0, resolution=0) != True  # noqa: E712 - ComfyUI wants True or text
    assert "resolution" in fit.VALIDATE_INPUTS(iterations=10, resolution=4)
    assert fit.VALIDATE_INPUTS(iterations=10, resolution=0) is True
    assert fit.VALIDATE_INPUTS(iterations=None, resolution=None) is True
    save = N["FourDSaveGaussians"]
    assert save.VALIDATE_INPUTS(filename_prefix="../x") is not True
    (g,) = N["FourDGaussiansFromScene"]().make(small_scene(), 1, 0.4, 0.0)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pack.nodes.splat_nodes, "write_gaussians_sequence", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save().save(g, "fourd/gs")
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").rglob("*"))
