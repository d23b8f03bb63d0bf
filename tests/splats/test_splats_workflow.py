"""The Gaussian-splat part of the tiny CPU workflow (API format) runs through the node classes with a fake
ComfyUI: the scene and grid nodes' outputs are replaced by a synthetic scene and grid (the 4DNeX and grid
parts run in tests/test_nodes.py), everything downstream - camera path, pixel-aligned splats, the 4D fit,
PLY sequences, the splat preview - runs for real, wired exactly as the workflow file says."""

from __future__ import annotations

import json

import pytest
import torch
from test_nodes import WORKFLOWS, fake, node_id, pack  # noqa: F401 - fixtures

plyfile = pytest.importorskip("plyfile")

SPLAT_NODES = {"FourDGaussiansFromScene", "FourDSaveGaussians", "FourDFit4DGaussians", "FourDPreview4D",
               "FourDCameraPath"}


@pytest.mark.parametrize("name", ["fourd_native_tiny_gaussians_cpu", "fourd_native_image_to_4d_gaussians",
                                  "fourd_tiny_gaussians_cpu", "fourd_image_to_4d_gaussians"])
def test_gaussians_api_workflow_runs_through_the_nodes(pack, fake, name):  # noqa: F811
    from importlib import import_module

    prompt = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    scene_mod = import_module(pack.__name__ + ".fourd_core.scene")
    syn = import_module(pack.__name__ + ".fourd_core.testing.synthetic_scene")
    T, H, W = 3, 12, 16
    s = syn.make_synthetic_scene(frames=T, height=H, width=W, seed=2)
    scene = scene_mod.Scene4D(rgb=torch.rand(T, H, W, 3), xyz=s.clean_points, K=s.K, cam_to_world=s.cam_to_world,
                              depth=s.depth)
    views = prompt[node_id(prompt, "FourDCameraPath")]["inputs"]["steps"]
    fit_id = node_id(prompt, "FourDFit4DGaussians")
    grid_src = prompt[fit_id]["inputs"]["grid"]               # FourD 4D Grid Sampler, or core VAE Decode (native)
    assert grid_src[1] == 0
    seeded = {node_id(prompt, "FourDRecoverCameras"): (scene, None),
              grid_src[0]: (torch.rand(views * T, H, W, 3), None, views, T)}
    prompt[fit_id]["inputs"]["iterations"] = 3  # the real workflow asks for 3000
    results, ui = dict(seeded), {}

    def evaluate(nid):
        if nid not in results:
            node = prompt[nid]
            kwargs = {k: (evaluate(v[0])[v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
            cls = pack.NODE_CLASS_MAPPINGS[node["class_type"]]
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(out, dict):
                ui[nid] = out.get("ui")
                out = out.get("result", ())
            results[nid] = out
        return results[nid]

    for nid, node in prompt.items():
        if node["class_type"] in SPLAT_NODES:
            evaluate(nid)
    g4d, orbit = results[fit_id]
    assert g4d.is_deformable and g4d.num_frames == T and g4d.view_offsets.shape[0] == views
    assert orbit.shape[0] == 8 and orbit.shape[-1] == 3
    saved = [k for k, v in prompt.items() if v["class_type"] == "FourDSaveGaussians"]
    assert len(saved) == 2
    for k in saved:
        first, folder = results[k][:2]
        files = sorted((fake.root / "output" / folder).glob("frame_*.ply"))
        assert len(files) == T and (fake.root / "output" / first) == files[0]
        assert plyfile.PlyData.read(str(files[0]))["vertex"].count > 0
    # core Preview 3D shows the fitted splats' frame-0 centres (a GLB, which every frontend opens); the orbit goes to
    # a video
    fitted_save = saved[[prompt[k]["inputs"]["gaussians"][0] for k in saved].index(fit_id)]
    assert prompt[node_id(prompt, "Preview3D")]["inputs"]["model_file"] == [fitted_save, 2]
    assert (fake.root / "output" / results[fitted_save][2]).read_bytes()[:4] == b"glTF"
    assert prompt[node_id(prompt, "CreateVideo")]["inputs"]["images"] == [fit_id, 1]
    # the one 4D preview shows the fitted splats, every one of them (default min_opacity 0)
    preview_id = node_id(prompt, "FourDPreview4D")
    assert prompt[preview_id]["inputs"]["gaussians"] == [fit_id, 0]
    entry = ui[preview_id]["fourd_scene"][0]
    va = import_module(pack.__name__ + ".fourd_core.testing.readers")
    data = (fake.root / "temp" / entry["subfolder"] / entry["filename"]).read_bytes()
    header, pos, _ = va.read_viewer_asset(data)
    assert header["splats"] and header["points"] is None and header["frames"] == T and len(pos) == T
    assert [len(p) for p in pos] == [len(g4d.canonical)] * T
