"""FourD Render Trajectory (nodes/novel_view_nodes.py) without ComfyUI, and the tiny native VACE
weights read by diffusers' own single-file converter (a reading independent of the pack's writer).
The real-ComfyUI checks are in tests/comfyui/test_native_novel_view.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(Path(__file__).parent / "geometry"))
from trajectory_truth import F, check_frame, make_scene  # noqa: E402


@pytest.fixture(scope="module")
def pack():
    name = "ComfyUI_FourD_novel_view_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tiny_native_vace_is_a_diffusers_vace_transformer_to_diffusers_converter():
    from diffusers import WanVACETransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from fourd_core.native.tiny_vace import TINY_VACE_DIFFUSERS_CONFIG, tiny_vace_state_dict

    sd = tiny_vace_state_dict()
    assert "vace_patch_embedding.weight" in sd and "vace_blocks.0.before_proj.weight" in sd
    assert sd["vace_patch_embedding.weight"].shape[1] == 96 and sd["patch_embedding.weight"].shape[1] == 16
    assert not [k for k in sd if "img" in k]  # text-to-video base: no image projection
    model = WanVACETransformer3DModel(**TINY_VACE_DIFFUSERS_CONFIG)
    converted = convert_wan_transformer_to_diffusers(dict(sd))
    model.load_state_dict(converted, strict=True)  # every key and shape matches
    torch.testing.assert_close(model.vace_patch_embedding.weight, sd["vace_patch_embedding.weight"])
    torch.testing.assert_close(model.vace_blocks[0].proj_in.weight, sd["vace_blocks.0.before_proj.weight"])
    torch.testing.assert_close(model.vace_blocks[1].proj_out.weight, sd["vace_blocks.1.after_proj.weight"])


def _render(node, scene, **kw):
    args = dict(path="orbit", degrees=20.0, axis="y", distance=0.3, elevation=0.0, follow_scene=False, frames=F,
                width=48, height=32, fit="cover", point_size=1, filename_prefix="")
    args.update(kw)
    return node.render(scene, **args)


def test_render_trajectory_node_outputs_and_saved_cameras(pack, tmp_path, monkeypatch):
    monkeypatch.setenv("FOURD_OUTPUT_DIR", str(tmp_path))
    node = pack.NODE_CLASS_MAPPINGS["FourDRenderTrajectory"]()
    scene = make_scene()
    video, holes, cams, text, width, height, length = _render(node, scene, filename_prefix="fourd/nv")
    assert video.shape == (F, 32, 48, 3) and holes.shape == (F, 32, 48) and (width, height, length) == (48, 32, F)
    assert (cams.height, cams.width) == (32, 48) and cams.K.shape == (F, 3, 3)
    saved = json.loads((tmp_path / "fourd" / "nv_cameras_00001" / "cameras.json").read_text())
    assert saved == json.loads(text)
    assert (tmp_path / "fourd" / "nv_cameras_00001" / "transforms.json").is_file()
    for t, fr in enumerate(saved["frames"]):  # the saved cameras reproduce every rendered pixel
        check_frame(scene, video[t].numpy().astype(np.float64), holes[t].numpy(), np.array(fr["K"]),
                    np.array(fr["cam_to_world"]), t)
    _render(node, scene, filename_prefix="fourd/nv")
    assert (tmp_path / "fourd" / "nv_cameras_00002" / "cameras.json").is_file()  # numbered, never overwritten
    _render(node, scene)  # empty prefix: nothing saved
    assert sorted(p.name for p in (tmp_path / "fourd").iterdir()) == ["nv_cameras_00001", "nv_cameras_00002"]


def test_camera_path_node_drives_the_trajectory(pack):
    scene = make_scene()
    path_node = pack.NODE_CLASS_MAPPINGS["FourDCameraPath"]()
    cams_in, _ = path_node.make(scene, "arc", 15.0, F, "y", 0.3, 5.0, 0)
    node = pack.NODE_CLASS_MAPPINGS["FourDRenderTrajectory"]()
    video, holes, cams, *_ = node.render(scene, "orbit", 99.0, "y", 0.3, 0.0, False, F, 48, 32, "cover", 1, "",
                                         cameras=cams_in)
    torch.testing.assert_close(cams.cam_to_world, cams_in.cam_to_world)  # the given path, not the widgets' orbit
    for t in range(F):
        check_frame(scene, video[t].numpy().astype(np.float64), holes[t].numpy(), cams.K[t].numpy(),
                    cams.cam_to_world[t].numpy(), t)
    short, _ = path_node.make(scene, "orbit", 15.0, 3, "y", 0.3, 0.0, 0)
    errors = sys.modules[f"{pack.__name__}.fourd_core.errors"]  # the pack's own copy of fourd_core
    with pytest.raises(errors.InputError, match="3 poses but 5 frames"):
        node.render(scene, "orbit", 30.0, "y", 0.3, 0.0, False, F, 48, 32, "cover", 1, "", cameras=short)


def test_validate_inputs_refuse_what_vace_cannot_take(pack):
    cls = pack.NODE_CLASS_MAPPINGS["FourDRenderTrajectory"]
    assert cls.VALIDATE_INPUTS(frames=49, width=832, height=480, point_size=2, filename_prefix="fourd/nv") is True
    assert "4k+1" in cls.VALIDATE_INPUTS(frames=48)
    assert "multiple of 16" in cls.VALIDATE_INPUTS(width=840)
    assert "multiple of 16" in cls.VALIDATE_INPUTS(height=40)
    assert "relative" in cls.VALIDATE_INPUTS(filename_prefix="../outside")
    assert cls.VALIDATE_INPUTS(filename_prefix="") is True  # empty: save nothing
    for section in cls.INPUT_TYPES().values():  # every input has a tooltip
        for name, spec in section.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), name
