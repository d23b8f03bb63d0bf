"""Gaussian splats: PLY format (checked with plyfile), rasteriser against closed-form values and finite
differences, pixel-aligned splats reproducing their frame, gsplat agreement (CUDA + gsplat only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fourd_core.errors import InputError
from fourd_core.scene import Scene4D
from fourd_core.splats.gaussians import Gaussians, Gaussians4D, pixel_aligned_gaussians
from fourd_core.splats.ply import (
    read_gaussians_ply,
    write_gaussians_ply,
    write_gaussians_sequence,
)
from fourd_core.splats.rasterize import (
    gsplat_available,
    rasterize_gsplat,
    rasterize_torch,
)

plyfile = pytest.importorskip("plyfile")


from splat_fixtures import one_thread  # noqa: F401,E402 - autouse fixture

EXPECTED_PROPS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def random_gaussians(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g)
    colors = torch.rand(n, 3, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.1 + 0.01
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    quats = torch.randn(n, 4, generator=g)
    return Gaussians.from_values(means, colors, scales, opac, quats), (means, colors, scales, opac, quats)


def test_ply_matches_the_3dgs_layout_and_round_trips(tmp_path):
    g, (means, colors, scales, opac, quats) = random_gaussians()
    path = write_gaussians_ply(tmp_path / "s.ply", g)
    ply = plyfile.PlyData.read(str(path))
    v = ply["vertex"]
    assert [p.name for p in v.properties] == EXPECTED_PROPS
    assert all(v.data.dtype[p].str == "<f4" for p in EXPECTED_PROPS)
    assert not ply.text and ply.byte_order == "<"
    col = lambda *k: np.stack([v[x] for x in k], 1)
    np.testing.assert_allclose(col("x", "y", "z"), means.numpy(), rtol=1e-6)
    np.testing.assert_allclose(col("scale_0", "scale_1", "scale_2"), np.log(scales.numpy()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v["opacity"], np.log(opac.numpy() / (1 - opac.numpy())), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(col("f_dc_0", "f_dc_1", "f_dc_2"), (colors.numpy() - 0.5) / 0.28209479177387814,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(col("rot_0", "rot_1", "rot_2", "rot_3"), quats.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(col("nx", "ny", "nz"), 0)
    back = read_gaussians_ply(path)
    for name in ("means", "log_scales", "quats", "logit_opacities", "sh0"):
        torch.testing.assert_close(getattr(back, name), getattr(g, name))


def test_reader_accepts_reference_files_with_sh_rest_and_doubles(tmp_path):
    n = 7
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)] + \
            ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    arr = np.zeros(n, dtype=[(k, "f8" if k == "x" else "f4") for k in names])
    arr["x"] = np.arange(n)
    arr["opacity"] = 2.0
    arr["rot_0"] = 1
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "ref.ply"))
    g = read_gaussians_ply(tmp_path / "ref.ply")
    assert len(g) == n
    np.testing.assert_array_equal(g.means[:, 0].numpy(), np.arange(n))
    assert torch.allclose(g.opacities, torch.sigmoid(torch.tensor(2.0)))


def test_reader_rejects_plain_point_clouds(tmp_path):
    arr = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "pc.ply"))
    with pytest.raises(InputError, match="missing properties"):
        read_gaussians_ply(tmp_path / "pc.ply")


def _camera(h=20, w=24, f=30.0):
    K = torch.tensor([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
    return K, torch.eye(4), h, w


def test_one_gaussian_matches_the_closed_form():
    """A lone isotropic splat at (x, y, z): alpha(p) = o exp(-d^T S^-1 d / 2) with the EWA footprint
    S = s^2 J J^T + 0.3 I, J J^T = (f/z)^2 [[1 + a^2, ab], [ab, 1 + b^2]], a = x/z, b = y/z."""
    K, c2w, h, w = _camera()
    z, s, o = 2.0, 0.05, 0.8
    mean = torch.tensor([[0.1, -0.05, z]])
    col = torch.tensor([[0.9, 0.2, 0.4]])
    out = rasterize_torch(mean, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), s), torch.tensor([o]), col,
                          K, c2w, h, w, background=[0.1, 0.1, 0.1])
    f = 30.0
    u0, v0 = f * 0.1 / z + (w - 1) / 2, f * -0.05 / z + (h - 1) / 2
    a, b = 0.1 / z, -0.05 / z
    S = (s * f / z) ** 2 * torch.tensor([[1 + a * a, a * b], [a * b, 1 + b * b]]) + 0.3 * torch.eye(2)
    Si = torch.linalg.inv(S)
    jj, ii = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="xy")
    du, dv = jj - u0, ii - v0
    alpha = o * torch.exp(-0.5 * (Si[0, 0] * du * du + 2 * Si[0, 1] * du * dv + Si[1, 1] * dv * dv))
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    want = alpha[..., None] * col + (1 - alpha[..., None]) * 0.1
    torch.testing.assert_close(out["image"], want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["alpha"], alpha, atol=1e-5, rtol=1e-4)


def test_a_huge_footprint_is_capped_at_a_quarter_of_the_image():
    """A splat at the image centre whose projected standard deviation (15 px) is 2.5x the cap (a quarter of the
    24 px side) is drawn as the same Gaussian scaled down to sigma = MAX_FOOTPRINT * max(H, W): alpha(p) =
    o exp(-|p - c|^2 / (2 sigma^2)) (isotropic, centred; the 0.3 px^2 filter is inside the cap)."""
    from fourd_core.splats.rasterize import MAX_FOOTPRINT

    K, c2w, h, w = _camera()
    o, z = 0.8, 2.0
    out = rasterize_torch(torch.tensor([[0.0, 0.0, z]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 1.0),
                          torch.tensor([o]), torch.ones(1, 3), K, c2w, h, w)
    sigma = MAX_FOOTPRINT * max(h, w)
    assert (30.0 / z) ** 2 + 0.3 > sigma ** 2   # the cap binds
    jj, ii = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="xy")
    r2 = (jj - (w - 1) / 2) ** 2 + (ii - (h - 1) / 2) ** 2
    alpha = o * torch.exp(-0.5 * r2 / sigma ** 2)
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    torch.testing.assert_close(out["alpha"], alpha, atol=1e-5, rtol=1e-4)
    assert float(out["radii"][0]) == pytest.approx(math.sqrt(2 * math.log(255 * o)) * sigma, rel=1e-5)
    small = rasterize_torch(torch.tensor([[0.0, 0.0, z]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.05),
                            torch.tensor([o]), torch.ones(1, 3), K, c2w, h, w)
    uncapped = rasterize_torch(torch.tensor([[0.0, 0.0, z]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.05),
                               torch.tensor([o]), torch.ones(1, 3), K, c2w, h, w, max_footprint=1e9)
    assert torch.equal(small["image"], uncapped["image"])    # a healthy splat is far below the cap


def test_front_to_back_compositing_and_occlusion():
    """Two splats on the optical axis: C = a1 c1 + (1 - a1) a2 c2 at the centre pixel, whatever their order."""
    K, c2w, h, w = _camera(h=11, w=11)
    means = torch.tensor([[0.0, 0, 3.0], [0.0, 0, 2.0]])  # the second is in front
    cols = torch.tensor([[1.0, 0, 0], [0.0, 1, 0]])
    ops = torch.tensor([0.7, 0.6])
    out = rasterize_torch(means, torch.tensor([[1.0, 0, 0, 0]] * 2), torch.full((2, 3), 0.1), ops, cols, K, c2w, h, w)
    c = out["image"][5, 5]
    torch.testing.assert_close(c, torch.tensor([0.4 * 0.7, 0.6, 0.0]), atol=1e-5, rtol=1e-5)


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    K, c2w, h, w = _camera(h=12, w=14, f=16.0)
    K, c2w = K.double(), c2w.double()
    n = 5
    params = {
        "means": torch.cat([torch.rand(n, 2) * 0.6 - 0.3, torch.rand(n, 1) * 1.0 + 2.0], 1).double(),
        "quats": torch.randn(n, 4).double(),
        "scales": (torch.rand(n, 3) * 0.1 + 0.08).double(),
        "opacities": (torch.rand(n) * 0.5 + 0.3).double(),
        "colors": torch.rand(n, 3).double(),
    }
    weights = torch.rand(h, w, 3, dtype=torch.float64)

    def loss(p):
        out = rasterize_torch(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"], K, c2w, h, w,
                              background=[0.2, 0.3, 0.4])
        return (out["image"] * weights).sum() + out["depth"].sum() * 0.1

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss(leaves).backward()
    eps = 1e-6
    for name, value in params.items():
        flat = value.reshape(-1)
        for idx in range(0, flat.numel(), max(1, flat.numel() // 8)):
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[name].view(-1)[idx] += eps
            minus[name].view(-1)[idx] -= eps
            fd = (loss(plus) - loss(minus)) / (2 * eps)
            ad = leaves[name].grad.reshape(-1)[idx]
            assert abs(float(fd - ad)) <= 1e-5 + 1e-4 * abs(float(fd)), (name, idx, float(fd), float(ad))


def textured_scene(frames=2, h=48, w=64, seed=3):
    from fourd_core.testing.synthetic_scene import make_synthetic_scene

    s = make_synthetic_scene(frames=frames, height=h, width=w, seed=seed)
    jj, ii = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="xy")
    rgb = torch.stack([0.5 + 0.4 * torch.sin(jj / 3.0), 0.5 + 0.4 * torch.cos(ii / 4.0),
                       0.5 + 0.3 * torch.sin((jj + ii) / 5.0)], -1)
    rgb = torch.stack([rgb.roll(f, 1) for f in range(frames)])
    conf = torch.ones(frames, h, w)
    conf[:, :2] = 0.2  # a low-confidence band: more transparent splats
    return Scene4D(rgb=rgb, xyz=s.clean_points, K=s.K, cam_to_world=s.cam_to_world, depth=s.depth, confidence=conf), s


def test_pixel_aligned_splats_sit_on_the_point_map_and_reproduce_their_frame():
    scene, s = textured_scene()
    g4d = pixel_aligned_gaussians(scene)
    assert g4d.num_frames == 2 and g4d.counts() == [48 * 64] * 2
    for f in range(2):
        g = g4d.frame(f)
        torch.testing.assert_close(g.means, s.clean_points[f].reshape(-1, 3), atol=1e-4, rtol=1e-4)
        sigma = 0.4 * s.depth[f].reshape(-1) / s.K[f, 0, 0]
        torch.testing.assert_close(g.scales, sigma[:, None].expand(-1, 3), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(g.opacities, scene.confidence[f].reshape(-1).clamp(0.01, 0.99), rtol=1e-4, atol=1e-5)
        out = rasterize_torch(g.means, g.quats, g.scales, g.opacities, g.colors, s.K[f], s.cam_to_world[f], 48, 64)
        body = (slice(2, None), slice(None))  # the opaque part of the frame
        mse = float(((out["image"][body] - scene.rgb[f][body]) ** 2).mean())
        assert -10 * math.log10(mse) >= 30.0


def test_pixel_aligned_needs_cameras_and_sane_settings():
    scene, _ = textured_scene(frames=1, h=8, w=8)
    with pytest.raises(InputError, match="stride"):
        pixel_aligned_gaussians(scene, stride=0)
    bare = Scene4D(rgb=scene.rgb, xyz=scene.xyz)
    with pytest.raises(InputError, match="cameras"):
        pixel_aligned_gaussians(bare)


def test_sequence_export_and_viewer_asset(tmp_path):
    from fourd_core.io.viewer_asset import gaussians_viewer_asset_bytes
    from fourd_core.testing.readers import read_layer, read_viewer_asset

    scene, _ = textured_scene(frames=2, h=8, w=10)
    g4d = pixel_aligned_gaussians(scene, stride=2)
    paths = write_gaussians_sequence(g4d, tmp_path / "gs")
    assert [p.name for p in paths] == ["frame_00000.ply", "frame_00001.ply"]
    assert plyfile.PlyData.read(str(paths[1]))["vertex"].count == len(g4d.frame(1))
    data = gaussians_viewer_asset_bytes(g4d, splats_per_frame=1000)
    header, pos, col = read_viewer_asset(data)
    splats = read_layer(data, "splats")
    assert header["splats"] and header["points"] is None and header["frames"] == 2
    g = g4d.frame(1)
    # every splat at full precision: float32 means, colours, standard deviations, unit wxyz, opacities
    np.testing.assert_array_equal(pos[1], g.means.numpy())
    np.testing.assert_array_equal(splats["scales"][1], g.scales.numpy())
    np.testing.assert_array_equal(splats["opacities"][1], g.opacities.numpy())
    np.testing.assert_allclose(splats["colors"][1], g.colors.numpy(), rtol=1e-6)
    np.testing.assert_allclose(splats["rotations"][1], (g.quats / g.quats.norm(dim=-1, keepdim=True)).numpy(), rtol=1e-6)


def test_viewer_asset_keeps_low_opacity_splats_and_stores_a_deformable_set_once():
    """The default shows what was fitted (a fit whose opacities all fall below 0.05 still shows), and a
    deformable set's per-splat attributes are written once, not once per frame."""
    from fourd_core.io.viewer_asset import gaussians_viewer_asset_bytes
    from fourd_core.testing.readers import read_layer

    g, _ = random_gaussians(n=50, seed=3)
    g.logit_opacities = torch.logit(torch.full((50,), 0.02))
    dt = torch.randn(4, 50, 3) * 0.01
    g4d = Gaussians4D(canonical=g, time_offsets=dt, K=torch.eye(3).expand(4, 3, 3), cam_to_world=torch.eye(4).expand(4, 4, 4),
                      height=8, width=8)
    data = gaussians_viewer_asset_bytes(g4d)
    splats = read_layer(data, "splats")
    assert [len(p) for p in splats["positions"]] == [50] * 4
    np.testing.assert_allclose(splats["positions"][3], (g.means + dt[3]).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(splats["opacities"][2], 0.02, rtol=1e-5)
    per_frame = 50 * 3 * 4
    shared = 50 * (3 + 3 + 4 + 1) * 4
    assert len(data) < 4 * per_frame + shared + 4096  # header included; four copies of the shared part would not fit
    assert len(read_layer(gaussians_viewer_asset_bytes(g4d, min_opacity=0.05), "splats")["positions"][0]) == 0


def test_deformable_frames_follow_eq_11():
    g, _ = random_gaussians(n=4)
    dt = torch.randn(3, 4, 3)
    dv = torch.randn(2, 4, 3)
    dv[0] = 0
    g4d = Gaussians4D(canonical=g, time_offsets=dt, view_offsets=dv)
    torch.testing.assert_close(g4d.frame(2, view=1).means, g.means + dt[2] + dv[1])
    torch.testing.assert_close(g4d.frame(1).means, g.means + dt[1])
    with pytest.raises(InputError):
        g4d.frame(3)


@pytest.mark.skipif(not gsplat_available("cuda"), reason="needs CUDA and gsplat")
def test_gsplat_agrees_with_the_torch_rasteriser():
    g, _ = random_gaussians(n=400, seed=1)
    g = g.to("cuda")
    g.means[:, 2] += 4.0
    K = torch.tensor([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]], device="cuda")
    c2w = torch.eye(4, device="cuda")
    args = (g.means, g.quats, g.scales, g.opacities, g.colors, K, c2w, 48, 64, [0.1, 0.2, 0.3])
    a = rasterize_torch(*args)
    b = rasterize_gsplat(*args)
    assert float((a["image"] - b["image"]).abs().mean()) < 2e-3
    assert float((a["image"] - b["image"]).abs().max()) < 5e-2
    torch.testing.assert_close(a["alpha"], b["alpha"], atol=5e-2, rtol=0)


def test_orbit_distance_is_honoured_and_checked(monkeypatch):
    from fourd_core.splats import orbit as orbit_mod

    g4d = pixel_aligned_gaussians(textured_scene(frames=1, h=8, w=8)[0])
    poses = []

    def fake_render(g, K, pose, h, w, **kw):
        poses.append(pose.double())
        return {"image": torch.zeros(h, w, 3)}

    monkeypatch.setattr(orbit_mod, "render_gaussians", fake_render)
    c2w0 = g4d.cam_to_world[0].double()
    for d in (0.5, 3.0):  # an orbit about the point d in front of camera 0: radius d, every view looks at it
        poses.clear()
        orbit_mod.render_orbit(g4d, degrees=90.0, steps=4, distance=d)
        centre = c2w0[:3, 3] + d * c2w0[:3, 2]
        for pose in poses:
            to_centre = centre - pose[:3, 3]
            assert abs(float(to_centre.norm()) - d) < 1e-5
            assert torch.allclose(to_centre / d, pose[:3, 2], atol=1e-5)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "far", [1.0]):  # 0.0 was taken as "not given" (the median depth)
        with pytest.raises(InputError, match="distance must be a finite number > 0"):
            orbit_mod.render_orbit(g4d, distance=bad)
