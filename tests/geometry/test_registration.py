"""Camera / depth recovery from point maps (fourd_core.geometry.registration).

Every expectation comes from the synthetic ground truth (known K, poses, depth), from formulas
written out here, or from invariants; never from the solver's own output.
"""

import numpy as np
import pytest
import torch

from fourd_core.errors import CancelledError, GeometryError, InputError
from fourd_core.testing.official_registration import official_registration, rotation_6d_to_matrix
from fourd_core.geometry.registration import (
    CameraFit,
    GeometryWarning,
    fit_cameras,
    points_from_depth,
    prepare_4dnex_points,
)
from fourd_core.testing.synthetic_scene import make_synthetic_scene, rotation_angle_deg


def focal_err(fit, sc):
    return float(((fit.K[:, 0, 0] - sc.K[:, 0, 0]).abs() / sc.K[:, 0, 0]).max())


def rot_err(fit, sc):
    return float(rotation_angle_deg(fit.cam_to_world[:, :3, :3], sc.cam_to_world[:, :3, :3]).max())


def centre_err(fit, sc):
    return float((fit.cam_to_world[:, :3, 3] - sc.cam_to_world[:, :3, 3]).norm(dim=-1).max()) / sc.scale


def depth_absrel(fit, sc, mask=None):
    rel = (fit.depth - sc.depth).abs() / sc.depth
    return float(rel[mask].mean() if mask is not None else rel.mean())


# ------------------------------------------------------------------------------------------
# the forward model
# ------------------------------------------------------------------------------------------


def test_points_from_depth_matches_pinhole_formula():
    g = torch.Generator().manual_seed(0)
    F, H, W = 2, 5, 7
    depth = 1 + torch.rand(F, H, W, generator=g)
    K = torch.tensor([[[50.0, 0.5, 3.2], [0, 45.0, 2.1], [0, 0, 1]], [[60.0, 0, 3.0], [0, 60.0, 2.0], [0, 0, 1]]])
    T = torch.eye(4).repeat(F, 1, 1)
    T[1, :3, :3] = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    T[:, :3, 3] = torch.tensor([[1.0, 2, 3], [-1, 0, 0.5]])
    P = points_from_depth(depth, K, T)
    assert P.shape == (F, H, W, 3) and P.dtype == torch.float32
    # independent per-pixel evaluation in numpy: X_c = d K^-1 (u, v, 1) with u = column, v = row
    for f, i, j in [(0, 0, 0), (0, 4, 6), (1, 2, 3), (1, 4, 1)]:
        Kn = K[f].double().numpy()
        ray = np.linalg.solve(Kn, np.array([j, i, 1.0]))
        xc = depth[f, i, j].item() * ray / ray[2]
        xw = T[f, :3, :3].double().numpy() @ xc + T[f, :3, 3].double().numpy()
        np.testing.assert_allclose(P[f, i, j].double().numpy(), xw, rtol=1e-5, atol=1e-5)
    # camera-frame z of the unprojected points is the depth
    Xc = torch.einsum("fba,fhwb->fhwa", T[:, :3, :3], P - T[:, None, None, :3, 3])
    torch.testing.assert_close(Xc[..., 2], depth, rtol=1e-5, atol=1e-5)
    # unbatched call; float64 depth gives float64 points
    torch.testing.assert_close(points_from_depth(depth[0], K[0], T[0]), P[0])
    P64 = points_from_depth(depth.double(), K, T)
    assert P64.dtype == torch.float64
    torch.testing.assert_close(P64.float(), P)


def test_prepare_4dnex_points_shifts_x_and_y_only():
    xyz = torch.rand(2, 3, 4, 3)
    out = prepare_4dnex_points(xyz)
    torch.testing.assert_close(out[..., 0], xyz[..., 0] - 0.5)
    torch.testing.assert_close(out[..., 1], xyz[..., 1] - 0.5)
    torch.testing.assert_close(out[..., 2], xyz[..., 2])
    assert xyz.max() <= 1  # input untouched
    with pytest.raises(InputError):
        prepare_4dnex_points(torch.rand(2, 3, 4, 2))
    with pytest.raises(InputError):
        prepare_4dnex_points(torch.zeros(2, 3, 4, 3, dtype=torch.int64))


# ------------------------------------------------------------------------------------------
# recovery on synthetic ground truth
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fourdnex", [False, True])
def test_clean_maps_are_fitted_to_float_precision(fourdnex):
    sc = make_synthetic_scene(8, 48, 72, seed=1, fourdnex=fourdnex)
    fit = fit_cameras(sc.points)
    assert isinstance(fit, CameraFit)
    assert fit.K.shape == (8, 3, 3) and fit.cam_to_world.shape == (8, 4, 4)
    assert fit.depth.shape == fit.confidence.shape == fit.residual.shape == (8, 48, 72)
    assert fit.points.shape == (8, 48, 72, 3)
    for t in (fit.K, fit.cam_to_world, fit.depth, fit.confidence, fit.residual, fit.points):
        assert t.dtype == torch.float32
    assert focal_err(fit, sc) < 1e-5
    torch.testing.assert_close(fit.K[:, :2, 2], sc.K[:, :2, 2])
    assert rot_err(fit, sc) < 1e-3
    assert centre_err(fit, sc) < 1e-5
    assert depth_absrel(fit, sc) < 1e-5
    assert float(fit.residual.max()) < 1e-5 * sc.scale
    assert float((fit.points - sc.clean_points).norm(dim=-1).max()) < 1e-5 * sc.scale
    assert float(fit.confidence.min()) > 0.5
    # the pose block is a rotation and the last row is (0, 0, 0, 1)
    R = fit.cam_to_world[:, :3, :3].double()
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3, dtype=torch.float64).expand(8, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(fit.cam_to_world[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(8, 4))


def test_outputs_are_consistent_with_the_model():
    sc = make_synthetic_scene(4, 40, 60, seed=2, noise=0.01)
    fit = fit_cameras(sc.points)
    # snapped points are the unprojection of the returned depth with the returned cameras (Eq. 10)
    P = points_from_depth(fit.depth, fit.K, fit.cam_to_world)
    assert float((P - fit.points).norm(dim=-1).max()) < 1e-4 * sc.scale
    # residual = distance from each input point to its ray point
    torch.testing.assert_close(fit.residual, (sc.points - fit.points).norm(dim=-1), atol=1e-5 * sc.scale, rtol=1e-4)
    # the snapped point is the orthogonal projection: (p - snapped) is perpendicular to the ray
    c = fit.cam_to_world[:, None, None, :3, 3]
    ray = fit.points - c
    cosang = ((sc.points - fit.points) * ray).sum(-1) / (ray.norm(dim=-1) * fit.residual.clamp_min(1e-12))
    assert float(cosang.abs().max()) < 1e-2
    assert float(fit.confidence.min()) >= 0 and float(fit.confidence.max()) <= 1
    assert bool((fit.depth > 0).all())


def _ray_outputs(points, K, c2w):
    """Depth (camera z of the ray point) and point-to-ray distance, written directly from the
    definitions in float64: ray d = R K^-1 [u, v, 1] through the centre c, ray point
    c + ((p - c).d / d.d) d."""
    F, H, W, _ = points.shape
    jj, ii = torch.meshgrid(torch.arange(W, dtype=torch.float64), torch.arange(H, dtype=torch.float64), indexing="xy")
    pix = torch.stack([jj, ii, torch.ones_like(jj)], -1)
    d_cam = torch.einsum("fab,hwb->fhwa", torch.linalg.inv(K.double()), pix)
    d = torch.einsum("fab,fhwb->fhwa", c2w[:, :3, :3].double(), d_cam)
    pc = points.double() - c2w[:, None, None, :3, 3].double()
    a = (pc * d).sum(-1) / (d * d).sum(-1)
    return a * d_cam[..., 2], (pc - a[..., None] * d).norm(dim=-1)


def test_output_pass_matches_the_definitions_on_every_path():
    """Depth and residual equal a direct float64 computation from the returned cameras, whatever
    the path of the output pass: float32 or float64 maps, no mask or a mask with NaN at invalid
    pixels, one block per frame or blocks of a few rows that do not divide the height."""
    sc = make_synthetic_scene(3, 30, 44, seed=5, noise=0.005)
    K = sc.K[0]
    base = fit_cameras(sc.points, K=K)
    depth0, res0 = _ray_outputs(sc.points, base.K, base.cam_to_world)
    torch.testing.assert_close(base.depth.double(), depth0, atol=1e-5 * sc.scale, rtol=1e-5)
    torch.testing.assert_close(base.residual.double(), res0, atol=1e-5 * sc.scale, rtol=1e-4)
    mask = torch.ones(3, 30, 44, dtype=torch.bool)
    mask[1, 4:9, 10:20] = False
    holes = sc.points.clone()
    holes[~mask] = float("nan")
    for kw in (dict(chunk_pixels=3 * 44), dict(points=sc.points.double()), dict(valid_mask=torch.ones_like(mask)),
               dict(points=holes, valid_mask=mask, chunk_pixels=7 * 44)):
        fit = fit_cameras(kw.pop("points", sc.points), K=K, **kw)
        d, r = _ray_outputs(torch.nan_to_num(sc.points), fit.K, fit.cam_to_world)
        m = kw.get("valid_mask", mask | True)
        torch.testing.assert_close(fit.depth.double()[m], d[m], atol=1e-5 * sc.scale, rtol=1e-5)
        torch.testing.assert_close(fit.residual.double()[m], r[m], atol=1e-5 * sc.scale, rtol=1e-4)
        assert bool((fit.residual[~m] == 0).all()) and bool((fit.confidence[~m] == 0).all())
        assert bool(torch.isfinite(fit.depth).all()) and bool((fit.depth > 0).all())
    # the snapped points are computed on first access, then kept
    assert "points" not in base.__dict__
    assert base.points is base.points


# this generator puts the principal point at the image centre; the precision tests below say so
# (the default model selection is tested on the held-out generator in test_solver_heldout.py)
CENTRED = dict(centered_principal_point=True)


def test_half_percent_noise():
    sc = make_synthetic_scene(12, 72, 108, seed=0, noise=0.005)
    fit = fit_cameras(sc.points, **CENTRED)
    assert focal_err(fit, sc) <= 5e-4
    assert rot_err(fit, sc) <= 0.05
    assert depth_absrel(fit, sc) <= 0.01


def test_one_percent_noise_ten_percent_outliers():
    sc = make_synthetic_scene(12, 72, 108, seed=3, noise=0.01, outliers=0.10)
    fit = fit_cameras(sc.points, **CENTRED)
    assert focal_err(fit, sc) <= 2e-3
    assert rot_err(fit, sc) <= 0.2
    inl = ~sc.outlier_mask
    assert depth_absrel(fit, sc, inl) <= 0.02
    # confidence separates the gross outliers from the inliers
    assert float(fit.confidence[inl].mean()) > 0.8
    assert float(fit.confidence[sc.outlier_mask].mean()) < 0.1


def test_random_scenes_with_heavy_outliers_robust_init():
    """2 % noise, 20 % gross outliers, random FOV/trajectory/world frame: >= 7 of 8 correct."""
    ok_robust = ok_plain = 0
    for seed in range(100, 108):
        sc = make_synthetic_scene(8, 48, 72, seed=seed, noise=0.02, outliers=0.2, fourdnex=seed % 2 == 0)
        try:
            fit = fit_cameras(sc.points)
            ok_robust += focal_err(fit, sc) < 0.02 and rot_err(fit, sc) < 1.0
        except GeometryError:
            pass
        try:
            fit = fit_cameras(sc.points, robust_init=False)
            ok_plain += focal_err(fit, sc) < 0.02 and rot_err(fit, sc) < 1.0
        except GeometryError:
            pass  # the plain start fails loudly rather than silently
    assert ok_robust >= 7
    assert ok_plain <= 4


@pytest.mark.parametrize("robust", ["huber", "cauchy", "tukey", "none"])
def test_robust_functions_on_noisy_maps(robust):
    sc = make_synthetic_scene(6, 48, 72, seed=13, noise=0.005)
    fit = fit_cameras(sc.points, robust=robust, **CENTRED)
    assert focal_err(fit, sc) < 3e-3 and rot_err(fit, sc) < 0.1
    # the estimated noise level matches the synthetic one (std per coordinate)
    torch.testing.assert_close(fit.info["noise_scale"], torch.full((6,), 0.005 * sc.scale), rtol=0.15, atol=0)
    fit_d = fit_cameras(sc.points, robust=robust, huber_delta=0.02 * sc.scale, outlier_threshold=None, **CENTRED)
    assert focal_err(fit_d, sc) < 3e-3


def test_float16_input():
    sc = make_synthetic_scene(3, 48, 72, seed=14, fourdnex=True)
    fit = fit_cameras(sc.points.half())
    # float16 keeps ~3 significant digits of the points, so the cameras are good to about that
    assert focal_err(fit, sc) < 5e-3 and rot_err(fit, sc) < 0.3


def test_per_frame_intrinsics_follow_a_zoom():
    sc = make_synthetic_scene(6, 48, 72, seed=4, zoom=0.3)
    fit = fit_cameras(sc.points, shared_intrinsics=False)
    assert focal_err(fit, sc) < 1e-5
    assert rot_err(fit, sc) < 1e-3
    # a shared K cannot represent the zoom: forced, it says so (low confidence and a warning) ...
    with pytest.warns(GeometryWarning, match="not explain"):
        shared = fit_cameras(sc.points, shared_intrinsics=True)
    assert torch.allclose(shared.K[0], shared.K[-1])
    assert focal_err(shared, sc) > 0.05 and shared.info["confidence"] == "low"
    # ... and by default the per-frame model is chosen
    auto = fit_cameras(sc.points)
    assert auto.info["intrinsics_model"].startswith("per-frame focal")
    assert focal_err(auto, sc) < 1e-4


def test_free_aspect_and_principal_point():
    sc = make_synthetic_scene(6, 48, 72, seed=5, aspect=1.1, principal_offset=(0.04, -0.03))
    fit = fit_cameras(sc.points, square_pixels=False, centered_principal_point=False)
    torch.testing.assert_close(fit.K, sc.K, rtol=1e-5, atol=1e-3)
    assert rot_err(fit, sc) < 1e-3
    # fx = fy by default; centred: the principal point at ((W-1)/2, (H-1)/2)
    fit2 = fit_cameras(make_synthetic_scene(2, 48, 72, seed=5).points, **CENTRED)
    torch.testing.assert_close(fit2.K[:, 0, 0], fit2.K[:, 1, 1])
    torch.testing.assert_close(fit2.K[:, :2, 2], torch.tensor([35.5, 23.5]).expand(2, 2))


def test_known_K_fits_poses_only():
    sc = make_synthetic_scene(4, 48, 72, seed=6, noise=0.005, principal_offset=(0.02, 0.01))
    fit = fit_cameras(sc.points, K=sc.K[0])
    torch.testing.assert_close(fit.K, sc.K, rtol=1e-6, atol=1e-4)
    assert rot_err(fit, sc) < 0.1
    with pytest.raises(InputError):
        fit_cameras(sc.points, K=torch.eye(2))
    with pytest.raises(InputError):
        fit_cameras(sc.points, K=torch.tensor([[-50.0, 0, 30], [0, 50, 20], [0, 0, 1]]))


def test_temporal_smoothness_reduces_jitter_on_a_smooth_path():
    errs = {0.0: [0.0, 0.0], 1.0: [0.0, 0.0]}
    for seed in (1, 2):
        sc = make_synthetic_scene(16, 48, 72, seed=seed, noise=0.03, orbit_deg=0.0)
        for lam in errs:
            fit = fit_cameras(sc.points, temporal_smoothness=lam)
            c = fit.cam_to_world[:, :3, 3]
            errs[lam][0] += float((c - sc.cam_to_world[:, :3, 3]).norm(dim=-1).mean()) / sc.scale
            errs[lam][1] += float(rotation_angle_deg(fit.cam_to_world[:, :3, :3], sc.cam_to_world[:, :3, :3]).mean())
    assert errs[1.0][0] < errs[0.0][0]
    assert errs[1.0][1] < errs[0.0][1]


def test_valid_mask_excludes_nan_pixels():
    sc = make_synthetic_scene(4, 48, 72, seed=7)
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 48, 72, generator=g) > 0.3
    pts = sc.points.clone()
    pts[~mask] = float("nan")
    fit = fit_cameras(pts, valid_mask=mask)
    assert focal_err(fit, sc) < 1e-5 and rot_err(fit, sc) < 1e-3
    assert float(fit.confidence[~mask].abs().max()) == 0.0
    assert float(fit.residual[~mask].abs().max()) == 0.0
    assert bool(torch.isfinite(fit.points).all()) and bool(torch.isfinite(fit.depth).all())
    # a [H,W] mask is broadcast over the frames
    fit2 = fit_cameras(sc.points, valid_mask=mask[0])
    assert focal_err(fit2, sc) < 1e-5


def test_single_frame_and_float64_input():
    sc = make_synthetic_scene(1, 48, 72, seed=8)
    fit = fit_cameras(sc.points[0].double())
    assert fit.K.shape == (1, 3, 3) and fit.depth.shape == (1, 48, 72)
    assert focal_err(fit, sc) < 1e-5 and rot_err(fit, sc) < 1e-3


def test_tilted_plane_is_solvable():
    sc = make_synthetic_scene(3, 48, 72, seed=1)
    K = sc.K
    j, i = torch.arange(72.0), torch.arange(48.0)
    xn = (j[None, :] - K[0, 0, 2]) / K[0, 0, 0]
    yn = (i[:, None] - K[0, 1, 2]) / K[0, 1, 1]
    depth = (3.0 / (1 - 0.5 * xn - 0.3 * yn)).expand(3, 48, 72)  # plane z = 3 + 0.5 x + 0.3 y
    pts = points_from_depth(depth, K, sc.cam_to_world)
    fit = fit_cameras(pts)
    assert float(((fit.K[:, 0, 0] - K[:, 0, 0]).abs() / K[:, 0, 0]).max()) < 1e-5
    assert float(rotation_angle_deg(fit.cam_to_world[:, :3, :3], sc.cam_to_world[:, :3, :3]).max()) < 1e-3


def test_callback_progress_and_cancel():
    sc = make_synthetic_scene(2, 32, 48, seed=9)
    calls = []
    fit_cameras(sc.points, callback=lambda s, t: calls.append((s, t)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))
    with pytest.raises(CancelledError):
        fit_cameras(sc.points, callback=lambda s, t: False)

    class Stop(Exception):
        pass

    def boom(s, t):
        raise Stop()

    with pytest.raises(Stop):
        fit_cameras(sc.points, callback=boom)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene():
    return make_synthetic_scene(3, 32, 48, seed=11)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_points_raise(scene, value):
    pts = scene.points.clone()
    pts[1, 5, 7, 2] = value
    with pytest.raises(GeometryError, match="non-finite"):
        fit_cameras(pts)


def test_constant_frame_raises(scene):
    pts = scene.points.clone()
    pts[1] = torch.tensor([0.1, 0.2, 0.3])
    with pytest.raises(GeometryError, match="constant"):
        fit_cameras(pts)


def test_too_few_valid_pixels_raise(scene):
    mask = torch.zeros(3, 32, 48, dtype=torch.bool)
    mask[:, :2, :3] = True
    with pytest.raises(GeometryError, match="too few valid pixels"):
        fit_cameras(scene.points, valid_mask=mask)


def test_collinear_points_raise():
    t = torch.linspace(0, 1, 32 * 48).reshape(32, 48)
    pts = torch.stack([t, 2 * t, 3 * t + 1], -1).expand(2, 32, 48, 3)
    with pytest.raises(GeometryError, match="line"):
        fit_cameras(pts)


def test_points_on_a_plane_through_the_camera_raise(scene):
    # every point moved into the plane y_cam = 0, which contains the camera centre
    T = scene.cam_to_world
    Xc = torch.einsum("fba,fhwb->fhwa", T[:, :3, :3], scene.points - T[:, None, None, :3, 3])
    Xc[..., 1] = 0
    pts = torch.einsum("fab,fhwb->fhwa", T[:, :3, :3], Xc) + T[:, None, None, :3, 3]
    with pytest.raises(GeometryError):
        fit_cameras(pts)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mirrored_maps_raise(scene, axis):
    # a reflection of the camera-frame points (left-handed axes, or z pointing backward)
    T = scene.cam_to_world
    Xc = torch.einsum("fba,fhwb->fhwa", T[:, :3, :3], scene.points - T[:, None, None, :3, 3])
    Xc[..., axis] *= -1
    pts = torch.einsum("fab,fhwb->fhwa", T[:, :3, :3], Xc) + T[:, None, None, :3, 3]
    with pytest.raises(GeometryError):
        fit_cameras(pts)


def test_fronto_parallel_plane_and_xyz_init_plane_raise(scene):
    # a plane facing the camera: any focal fits, so it must not return one silently
    depth = torch.full((3, 32, 48), 2.0)
    with pytest.raises(GeometryError, match="focal"):
        fit_cameras(points_from_depth(depth, scene.K, scene.cam_to_world))
    # the 4DNeX XYZ initialisation plane (4dnex.md sec. 2): an affine image of the pixel grid
    H, W = 32, 48
    X = (2 * torch.arange(W) / (W - 1) - 1)[None, :].expand(H, W)
    Y = (2 * torch.arange(H) / (H - 1) - 1)[:, None].expand(H, W)
    xyz01 = (torch.stack([X, Y, -Y], -1) + 1) / 2
    with pytest.raises(GeometryError, match="focal"):
        fit_cameras(prepare_4dnex_points(xyz01.expand(2, H, W, 3)))
    # with the focal given, the pose of that plane view is well defined: no error
    fit_cameras(points_from_depth(depth, scene.K, scene.cam_to_world), K=scene.K)


def test_noisy_nearly_fronto_parallel_plane_raises(scene):
    # a plane tilted by ~3 deg: its focal is determined only in the absence of noise
    K = scene.K
    xn = (torch.arange(48.0)[None, :] - K[0, 0, 2]) / K[0, 0, 0]
    depth = (3.0 / (1 - 0.05 * xn)).expand(3, 32, 48)
    pts = points_from_depth(depth, K, scene.cam_to_world)
    fit = fit_cameras(pts)  # clean: exact
    assert float(((fit.K[:, 0, 0] - K[:, 0, 0]).abs() / K[:, 0, 0]).max()) < 1e-4
    noisy = pts + 0.01 * torch.randn(pts.shape, generator=torch.Generator().manual_seed(0))
    with pytest.raises(GeometryError, match="focal"):
        fit_cameras(noisy)


def test_bad_arguments_raise_input_error(scene):
    pts = scene.points
    with pytest.raises(InputError):
        fit_cameras(pts[None])  # 5-D
    with pytest.raises(InputError):
        fit_cameras(pts.reshape(-1, 3))  # flat [N,3]: no pixel grid
    with pytest.raises(InputError):
        fit_cameras(pts[..., :2])
    with pytest.raises(InputError):
        fit_cameras((pts * 100).to(torch.int32))
    with pytest.raises(InputError):
        fit_cameras(pts, robust="l1")
    with pytest.raises(InputError):
        fit_cameras(pts, temporal_smoothness=-1.0)
    with pytest.raises(InputError):
        fit_cameras(pts, huber_delta=0.0)
    with pytest.raises(InputError):
        fit_cameras(pts, iterations=0)
    with pytest.raises(InputError):
        fit_cameras(pts, valid_mask=torch.ones(3, 31, 48, dtype=torch.bool))
    with pytest.raises(InputError):
        fit_cameras(pts[:, :1, :1])
    with pytest.raises(InputError):
        fit_cameras("not a tensor")


# ------------------------------------------------------------------------------------------
# the official baseline
# ------------------------------------------------------------------------------------------


def test_rotation_6d():
    # the proper identity encoding (first two rows of I) gives I
    torch.testing.assert_close(rotation_6d_to_matrix(torch.tensor([1.0, 0, 0, 0, 1, 0])), torch.eye(3))
    # Gram-Schmidt of two generic vectors gives a rotation whose first row is a1 / |a1|
    x = torch.tensor([0.3, -1.2, 0.4, 2.0, 0.1, -0.7])
    R = rotation_6d_to_matrix(x)
    torch.testing.assert_close(R @ R.T, torch.eye(3), atol=1e-6, rtol=0)
    assert abs(float(torch.linalg.det(R)) - 1) < 1e-6
    torch.testing.assert_close(R[0], x[:3] / x[:3].norm())
    # the official "identity" [1,0,0,1,0,0] is degenerate: the second row vanishes
    Rd = rotation_6d_to_matrix(torch.tensor([1.0, 0, 0, 1, 0, 0]))
    assert float(Rd[1].norm()) == 0.0 and float(Rd[2].norm()) == 0.0


def test_official_registration_initial_state_and_descent():
    sc = make_synthetic_scene(2, 12, 18, seed=12, fourdnex=True)
    init = official_registration(sc.points, iterations=0)
    H, W = 12, 18
    torch.testing.assert_close(init.K[0], torch.tensor([[1.2 * W, 0, W / 2], [0, 1.2 * H, H / 2], [0, 0, 1]]))
    torch.testing.assert_close(init.depth, sc.points.norm(dim=-1))  # d initialised to ||p||
    run = official_registration(sc.points, iterations=60)
    losses = [l for _, l in run.info["losses"]]
    assert losses[-1] < losses[0]
    assert run.info["iterations"] == 60 and run.info["seconds_per_iteration"] > 0
    with pytest.raises(GeometryError):
        official_registration(torch.full((1, 4, 4, 3), float("nan")))
