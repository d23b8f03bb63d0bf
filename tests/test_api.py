"""High-level geometry step: the solver on 4DNeX-convention maps and the camera-frame fallback."""

from __future__ import annotations

import math

import pytest
import torch

from fourd_core.api import GeometryConfig, camera_frame_fallback, recover_geometry
from fourd_core.errors import GeometryError
from fourd_core.scene import Scene4D


def camera_frame_points(F=3, H=24, W=36, f=30.0):
    i = torch.arange(H, dtype=torch.float64).view(H, 1).expand(H, W)
    j = torch.arange(W, dtype=torch.float64).view(1, W).expand(H, W)
    z = 1.0 + 0.02 * i + 0.01 * j + 0.2 * torch.sin(j / 4)
    p = torch.stack([(j - (W - 1) / 2) / f * z, (i - (H - 1) / 2) / f * z, z], -1)
    return p.expand(F, H, W, 3).float().contiguous()


def test_fallback_reads_maps_in_the_camera_frame():
    pts = camera_frame_points()
    K, c2w, depth, conf = camera_frame_fallback(pts)
    assert K[0, 0, 0] == pytest.approx(30.0, rel=1e-4) and K[0, 1, 1] == K[0, 0, 0]
    assert K[0, 0, 2] == pytest.approx(17.5) and K[0, 1, 2] == pytest.approx(11.5)
    assert torch.equal(c2w, torch.eye(4).expand(3, 4, 4)) and torch.allclose(depth, pts[..., 2])
    assert conf.abs().max() == 0


def test_fallback_focal_defaults_to_60_degrees_for_mirrored_maps():
    pts = camera_frame_points()
    pts[..., 0] = -pts[..., 0]
    K, *_ = camera_frame_fallback(pts)
    assert K[0, 0, 0] == pytest.approx((36 / 2) / math.tan(math.radians(30)), rel=1e-5)


def test_fallback_focal_stays_within_a_plausible_field_of_view():
    """Maps that admit no camera (random weights) must not give a fraction-of-a-pixel focal (a ~180 degree
    view): the fallback clamps the horizontal field of view to [20, 120] degrees."""
    W = 36
    wide = camera_frame_points(f=0.1)            # least squares alone would give f = 0.1 px
    narrow = camera_frame_points(f=1e4)
    K_wide, *_ = camera_frame_fallback(wide)
    K_narrow, *_ = camera_frame_fallback(narrow)
    fov = lambda f: 2 * math.degrees(math.atan((W / 2) / float(f)))  # noqa: E731
    assert fov(K_wide[0, 0, 0]) == pytest.approx(120.0, rel=1e-4)
    assert fov(K_narrow[0, 0, 0]) == pytest.approx(20.0, rel=1e-4)


def _scene_from_points(points_registration_frame):
    # 4DNeX maps are in [0, 1]; the registration frame is (x - 0.5, y - 0.5, z)
    xyz = points_registration_frame.clone()
    xyz[..., :2] += 0.5
    F, H, W, _ = xyz.shape
    return Scene4D(rgb=torch.rand(F, H, W, 3), xyz=xyz)


def test_recover_geometry_on_a_perspective_map():
    pts = camera_frame_points()
    out = recover_geometry(_scene_from_points(pts))
    assert not out.metadata["geometry"].get("fallback", False)
    assert out.K[0, 0, 0] == pytest.approx(30.0, rel=1e-3)
    assert torch.allclose(out.points(), pts, atol=1e-3)


def test_recover_geometry_fallback_and_strict_mode():
    pts = camera_frame_points()
    pts[..., 1] = -pts[..., 1]  # mirrored: no perspective camera explains it
    scene = _scene_from_points(pts)
    with pytest.warns(UserWarning, match="fallback"):
        out = recover_geometry(scene)
    assert out.metadata["geometry"]["fallback"] is True and out.confidence.max() == 0
    with pytest.raises(GeometryError):
        recover_geometry(scene, GeometryConfig(fallback=False))
