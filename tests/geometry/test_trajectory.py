"""Trajectory render (fourd_core.geometry.trajectory) against a brute-force numpy z-buffer on a
scene with known geometry (tests/geometry/trajectory_truth.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fourd_core.errors import InputError
from fourd_core.geometry.trajectory import (output_intrinsics, render_novel_view, render_trajectory,
                                            source_frame_indices, trajectory_cameras)
from fourd_core.scene import Scene4D
from trajectory_truth import F, H, W, box_cols, check_frame, decode, make_scene, project, world_points


@pytest.mark.parametrize("path,kw", [("orbit", dict(degrees=23.0)), ("arc", dict(degrees=-17.0, elevation_degrees=9.0)),
                                     ("dolly", dict(distance=0.37)), ("static", {})])
def test_every_pixel_is_the_nearest_projecting_point(path, kw):
    scene = make_scene()
    r = render_novel_view(scene, path, height=H, width=W, point_size=1, **kw)
    assert r.video.shape == (F, H, W, 3) and r.holes.shape == (F, H, W) and r.K.shape == (F, 3, 3)
    assert r.cam_to_world.shape == (F, 4, 4) and r.video.dtype == torch.float32
    assert set(torch.unique(r.holes).tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(r.cam_to_world[0], scene.cam_to_world[0])  # the path starts at frame 0's camera
    for t in range(F):
        check_frame(scene, r.video[t].numpy().astype(np.float64), r.holes[t].numpy(), r.K[t].numpy(),
                    r.cam_to_world[t].numpy(), t)
        # holes are filled with mid-gray
        assert np.allclose(r.video[t].numpy()[r.holes[t].numpy() > 0.5], 0.5)


def test_occlusion_is_exercised_and_the_front_square_wins():
    scene = make_scene()
    r = render_novel_view(scene, "orbit", degrees=10.0, height=H, width=W, point_size=1)
    t = F - 1  # the nearer square moves farther than the plane and lands on the plane's points beside it
    X_bg, K, c2w = world_points(scene, t), r.K[t].double().numpy(), r.cam_to_world[t].double().numpy()
    u, v, z = project(X_bg, K, c2w)
    cu, cv = np.floor(u + 0.5).astype(int), np.floor(v + 0.5).astype(int)
    depth = scene.depth[t].numpy().ravel()
    is_box = depth < 3
    box_pix = {(a, b) for a, b in zip(cv[is_box], cu[is_box])}
    both = [(a, b) for a, b in zip(cv[~is_box], cu[~is_box]) if (a, b) in box_pix and 0 <= a < H and 0 <= b < W]
    assert len(both) > 5  # background points do project behind the square
    rows, cols, _ = decode(r.video[t].numpy().astype(np.float64))
    for a, b in both:
        assert depth[rows[a, b] * W + cols[a, b]] == 2.0  # the square, not the plane behind it


def test_a_moving_object_moves():
    scene = make_scene()
    r = render_novel_view(scene, "static", height=H, width=W, point_size=1)
    for t in range(F):
        rows, cols, _ = decode(r.video[t].numpy().astype(np.float64))
        c0, c1 = box_cols(t)
        # same camera as the source: the picture is frame t itself, square included
        np.testing.assert_array_equal(cols, np.arange(W)[None].repeat(H, 0))
        np.testing.assert_array_equal(rows, np.arange(H)[:, None].repeat(W, 1))
        assert r.holes[t].sum() == 0
    # and through a moved camera the square is drawn where frame t puts it, not frame 0
    r2 = render_novel_view(scene, "orbit", degrees=10.0, height=H, width=W, point_size=1)
    centres = []
    for t in range(F):
        X = world_points(scene, t)[(scene.depth[t].numpy().ravel() < 3)]
        u, v, _ = project(X, r2.K[t].double().numpy(), r2.cam_to_world[t].double().numpy())
        rows, cols, _ = decode(r2.video[t].numpy().astype(np.float64))
        drawn = r2.holes[t].numpy() < 0.5
        in_box = np.zeros((H, W), bool)
        in_box[drawn] = scene.depth[t].numpy()[rows[drawn], cols[drawn]] < 3
        drawn_c = np.nonzero(in_box)[1].mean()
        assert abs(drawn_c - u.mean()) < 1.0
        centres.append(drawn_c)
    assert all(b > a + 1.0 for a, b in zip(centres, centres[1:]))


def test_output_size_and_fit_follow_the_intrinsics_rule():
    scene = make_scene()
    # odd sizes: no source pixel centre maps exactly onto an output pixel border
    for fit, ho, wo in (("cover", 29, 47), ("contain", 29, 47), ("cover", 15, 17)):
        r = render_novel_view(scene, "orbit", degrees=12.0, height=ho, width=wo, fit=fit, point_size=1)
        k = (max if fit == "cover" else min)(ho / H, wo / W)
        K = r.K[0].double().numpy()
        assert K[0, 0] == pytest.approx(30 * k) and K[1, 1] == pytest.approx(30 * k)
        # the source image centre stays the output image centre
        assert K[0, 2] == pytest.approx(k * (15.5 - (W - 1) / 2) + (wo - 1) / 2)
        assert K[1, 2] == pytest.approx(k * (11.5 - (H - 1) / 2) + (ho - 1) / 2)
        for t in (0, F - 1):
            check_frame(scene, r.video[t].numpy().astype(np.float64), r.holes[t].numpy(), r.K[t].numpy(),
                        r.cam_to_world[t].numpy(), t, out_hw=(ho, wo))
        if fit == "contain":  # the source view is narrower than the output: holes at the sides of frame 0
            assert r.holes[0, :, 0].all() and r.holes[0, :, -1].all()
        else:  # the source view covers the output (magnified views crack between points at point size 1)
            assert not r.holes[0, :, 0].all() and not r.holes[0, :, -1].all()


@pytest.mark.parametrize("point_size", [2, 3])
def test_point_size_splats_squares_with_the_z_buffer(point_size):
    scene = make_scene()
    r = render_novel_view(scene, "orbit", degrees=30.0, height=36, width=48, point_size=point_size)
    for t in range(F):
        check_frame(scene, r.video[t].numpy().astype(np.float64), r.holes[t].numpy(), r.K[t].numpy(),
                    r.cam_to_world[t].numpy(), t, point_size=point_size)


def test_follow_scene_offsets_the_scene_cameras():
    scene = make_scene(moving_cameras=True)
    K, c2w, src = trajectory_cameras(scene, "static", follow_scene=True)
    torch.testing.assert_close(c2w, scene.cam_to_world)  # static + follow = the scene's own cameras
    torch.testing.assert_close(K, scene.K)
    Kf, c2wf, _ = trajectory_cameras(scene, "orbit", degrees=20.0, follow_scene=True)
    _, path, _ = trajectory_cameras(scene, "orbit", degrees=20.0)
    for t in range(F):
        rel_follow = torch.linalg.inv(scene.cam_to_world[t].double()) @ c2wf[t].double()
        rel_path = torch.linalg.inv(path[0].double()) @ path[t].double()
        torch.testing.assert_close(rel_follow, rel_path, atol=1e-5, rtol=1e-5)
    r = render_trajectory(scene, Kf, c2wf, H, W, point_size=1)
    for t in range(F):
        check_frame(scene, r.video[t].numpy().astype(np.float64), r.holes[t].numpy(), r.K[t].numpy(),
                    r.cam_to_world[t].numpy(), t)


def test_given_poses_and_time_resampling():
    scene = make_scene()
    assert source_frame_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert source_frame_indices(3, 5).tolist() == [0, 2, 4]
    assert source_frame_indices(9, 5).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]  # round half up
    assert source_frame_indices(1, 5).tolist() == [0]
    poses = torch.eye(4).repeat(3, 1, 1)
    poses[:, 0, 3] = torch.tensor([0.0, 0.13, 0.27])
    K2 = torch.tensor([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]])  # the path's K at twice the scene size
    r = render_novel_view(scene, path_poses=poses, path_K=K2, path_size=(48, 64), height=H, width=W, point_size=1)
    assert r.source_frames.tolist() == [0, 2, 4]
    torch.testing.assert_close(r.K[0], scene.K[0])  # rescaled back to the output size
    torch.testing.assert_close(r.cam_to_world, poses)
    for t in range(3):
        check_frame(scene, r.video[t].numpy().astype(np.float64), r.holes[t].numpy(), r.K[t].numpy(),
                    r.cam_to_world[t].numpy(), int(r.source_frames[t]))


def test_output_intrinsics_maps_source_rays_to_the_scaled_pixel():
    K = torch.tensor([[100.0, 2.0, 40.0], [0, 90.0, 25.0], [0, 0, 1]])
    K2 = output_intrinsics(K, (50, 70), (100, 100), "contain").double()
    k = min(100 / 50, 100 / 70)
    for u, v in ((0.0, 0.0), (69.0, 49.0), (12.3, 40.1)):
        ray = torch.linalg.solve(K.double(), torch.tensor([u, v, 1.0], dtype=torch.float64))
        p = K2 @ ray
        assert float(p[0] / p[2]) == pytest.approx(k * (u - 34.5) + 49.5, abs=1e-4)
        assert float(p[1] / p[2]) == pytest.approx(k * (v - 24.5) + 49.5, abs=1e-4)


def test_bad_input():
    scene = make_scene()
    with pytest.raises(InputError, match="zero frames|positive"):
        render_novel_view(scene, "orbit", frames=0)
    with pytest.raises(InputError, match="path must be"):
        render_novel_view(scene, "spiral")
    with pytest.raises(InputError, match="fit"):
        render_novel_view(scene, "orbit", fit="stretch")
    with pytest.raises(InputError, match="degrees"):
        render_novel_view(scene, "orbit", degrees=float("nan"))
    with pytest.raises(InputError, match="zero frames"):
        render_trajectory(scene, torch.zeros(0, 3, 3), torch.zeros(0, 4, 4), H, W)
    with pytest.raises(InputError, match="poses"):
        render_novel_view(scene, path_poses=torch.eye(4).repeat(3, 1, 1), frames=5)
    no_cams = Scene4D(rgb=scene.rgb, xyz=scene.xyz)
    with pytest.raises(InputError, match="no cameras"):
        render_novel_view(no_cams, "orbit")
