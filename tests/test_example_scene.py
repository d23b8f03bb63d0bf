"""The no-weights example scene: a 4DNeX-format point map of the shipped photo from which camera recovery gets
back the cameras and depth it was built with (up to the point map's unknown global scale)."""

from __future__ import annotations

import pytest
import torch

from fourd_core.api import recover_geometry
from fourd_core.errors import InputError
from fourd_core.example_scene import example_scene


def test_example_scene_is_a_4dnex_point_map_whose_cameras_come_back():
    ex = example_scene(frames=5, width=192, dolly=0.1, rise=0.6)
    s = ex.scene
    assert s.rgb.shape == (5, 128, 192, 3) and not s.has_cameras
    assert float(s.xyz.min()) >= 0 and float(s.xyz.max()) <= 1        # 4DNeX's XYZ target range
    # the RGB is the photo: the cup's coffee (light brown) sits where the dome is
    assert float(s.rgb[0, 40, 92, 0]) > float(s.rgb[0, 40, 92, 2]) + 0.2
    rec = recover_geometry(s)
    assert rec.K[:, 0, 0].mean().item() == pytest.approx(ex.K[0, 0, 0].item(), rel=0.02)
    assert not rec.metadata["geometry"].get("fallback") and float(rec.confidence.mean()) > 0.9
    # depth and the dolly up to one global scale (the point map's normalisation)
    scale = float((rec.depth / ex.depth).median())
    torch.testing.assert_close(rec.depth / scale, ex.depth, rtol=0.02, atol=0.02)
    moved = (rec.cam_to_world[:, :3, 3] - rec.cam_to_world[:1, :3, 3]).norm(dim=-1) / scale
    torch.testing.assert_close(moved, 0.1 * torch.arange(5.0), rtol=0.05, atol=0.01)
    # the cup rises towards the camera over time; the table's points of every frame lie on one world plane
    cup = (40, 92)
    assert ex.points[-1, cup[0], cup[1], 2] < ex.points[0, cup[0], cup[1], 2] - 0.1
    corner = ex.points[:, 100:, :12].reshape(5, -1, 3).double()          # bottom-left: table only
    X = corner.reshape(-1, 3)
    n = torch.linalg.lstsq(X, torch.ones(len(X), 1, dtype=torch.float64)).solution
    assert float((X @ n - 1).abs().max()) < 1e-4


def test_example_scene_refuses_bad_sizes():
    with pytest.raises(InputError, match="width"):
        example_scene(width=100)
    with pytest.raises(InputError, match="frames"):
        example_scene(frames=1)
