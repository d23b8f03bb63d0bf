"""Cameras, depth and a dynamic point cloud from XYZ point maps (4DNeX Sec. 4.3, Eqs. 9-10).

4DNeX generates, per frame, an XYZ point map ``P[f,i,j]`` (a 3D point for every pixel).  Its
post-optimisation (paper Eq. 9) recovers a pinhole camera ``K``, a pose ``(R, t)`` and a depth map
``d`` such that the back-projection of Eq. 10, ``R (d K^-1 [u, v, 1]^T) + t``, reproduces the map.
The official code does this with 1500 Adam steps over every per-pixel depth (see
``/work/shared/reference/4dnex.md`` section 8, reproduced as :func:`official_registration`).

:func:`fit_cameras` solves the same problem directly:

* With a free depth per pixel, the best depth puts the fitted point at the orthogonal projection of
  ``P`` on the pixel's ray, so the problem is a camera resection with dense 2D-3D matches.
* The objective is the distance, in world units, between each point and the point of its ray at
  the same camera depth: ``e = (x_c - x_n z_c, y_c - y_n z_c)`` with ``(x_c, y_c, z_c)`` the point
  in camera coordinates and ``(x_n, y_n) = K^-1 (u, v)``.  It is within a factor
  ``cos(angle to the optical axis)`` of the point-to-ray distance, zero at the same solutions, and
  ``e`` is linear in the per-pixel data.  Hence the whole weighted least-squares cost, its
  Gauss-Newton Hessian and gradient are exact functions of five 4x4 weighted moment matrices per
  frame (``sum w q q^T`` times ``1, u, u^2, v, v^2``).  One pass over the pixels builds them; the
  Levenberg-Marquardt iterations then cost nothing that depends on the image size.  On a pixel
  grid the sums separate into row and column sums.  The passes run in float32; the gradient is
  also summed directly from the per-pixel residuals, which removes the rounding error of the
  float32 moments from the solution (clean maps are fitted to ~1e-7 of the scene size).
* Point noise biases the focal length of such estimators (errors in variables: the expected
  residual grows with ``x_n^2 + y_n^2``); that expected term is subtracted, with the noise level
  estimated from the residuals (``noise_bias_correction``).
* Initialisation per frame, on a sub-sample of about 4096 pixels: a weighted DLT (linear
  resection, 12 unknowns) from the same moments; robustly, a neighbour-distance outlier
  pre-filter and 64 DLT hypotheses from random 8-point subsets, scored by their median residual
  (least median of squares), the best ones re-fitted on their inliers; near-planar frames also
  try a homography-based camera.  With one K for all frames, every frame's pose is then chosen
  again among its hypotheses projected on the median focal length.
* Robustness: iteratively re-weighted least squares (Huber by default; Cauchy, Tukey or none),
  per-frame noise scale from the median residual, gross outliers beyond ``outlier_threshold``
  noise scales rejected.
* Coarse to fine: IRLS on the sample grid, on every 3rd pixel (large images), then full resolution
  (one or two passes, the last one also writing the outputs).
* Optional temporal smoothness: second differences of camera centres and rotation matrices.
* Guards: NaN/inf, constant, collinear, mirrored (left-handed) maps, an unobservable focal length
  (plane facing the camera, orthographic maps) and unexplained maps raise :class:`GeometryError`.

Pixel convention (OpenCV): pixel (row i, column j) has its centre at (u, v) = (j, i), integer
coordinates; the image spans [-0.5, W - 0.5] x [-0.5, H - 0.5], so the image centre is
((W - 1) / 2, (H - 1) / 2).  Cameras use OpenCV axes (x right, y down, z forward); ``K`` is in
pixels; ``cam_to_world`` maps camera to world coordinates; depth is z in the camera frame.

Gauge: the points are given in world coordinates, so every frame's pose is fully determined by
resection (no free similarity).  Frames are fitted independently (4DNeX maps are re-centred per
frame, 4dnex.md sections 9-10); a shared ``K`` and the smoothness term couple them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..errors import CancelledError, GeometryError, InputError

__all__ = [
    "CameraFit",
    "fit_cameras",
    "official_registration",
    "points_from_depth",
    "prepare_4dnex_points",
    "rotation_6d_to_matrix",
]

_F64 = torch.float64


@dataclass
class CameraFit:
    """Result of :func:`fit_cameras` / :func:`official_registration` (all float32, one device).

    K:            [F,3,3] intrinsics in pixels (a per-frame copy even when shared).
    cam_to_world: [F,4,4] OpenCV camera-to-world (x right, y down, z forward).
    depth:        [F,H,W] z in the camera frame (not ray length), world units.  Always > 0.
    confidence:   [F,H,W] in [0, 1]; 0 at invalid pixels and points behind the camera.
    residual:     [F,H,W] distance of each input point to its fitted ray point, world units
                  (0 at invalid pixels).
    points:       [F,H,W,3] re-projected (ray-snapped) world points ``R (depth K^-1 [u,v,1]) + t``.
    info:         dict: iterations, rms / median residuals, noise scale, timings, flags.
    """

    K: torch.Tensor
    cam_to_world: torch.Tensor
    depth: torch.Tensor
    confidence: torch.Tensor
    residual: torch.Tensor
    points: torch.Tensor
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _skew_generators(dtype=_F64, device=None) -> torch.Tensor:
    """[3,3,3]: G[k] = [e_k]_x, the cross-product matrix of the k-th unit vector."""
    G = torch.zeros(3, 3, 3, dtype=dtype, device=device)
    G[0, 1, 2], G[0, 2, 1] = -1, 1
    G[1, 0, 2], G[1, 2, 0] = 1, -1
    G[2, 0, 1], G[2, 1, 0] = -1, 1
    return G


def _exp_so3(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [...,3,3] from rotation vectors [...,3] (Rodrigues), any dtype."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]
    theta = theta2.sqrt()
    small = theta2 < 1e-12
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta.clamp_min(1e-30))
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-30))
    G = _skew_generators(w.dtype, w.device)
    W = torch.einsum("...k,kab->...ab", w, G)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a * W + b * (W @ W)


def _callback(callback, step, total):
    if callback is None:
        return
    if callback(step, total) is False:
        raise CancelledError("Camera fitting was cancelled by the caller (callback returned False).")


def _as_points(points, name="points") -> tuple[torch.Tensor, bool]:
    if not isinstance(points, torch.Tensor):
        try:
            points = torch.as_tensor(points)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{name} must be a tensor or array of shape [F,H,W,3]; got {type(points).__name__}.") from exc
    if not (points.is_floating_point()):
        raise InputError(f"{name} must be a floating-point tensor (world coordinates); got dtype {points.dtype}.")
    single = points.dim() == 3
    if single:
        points = points[None]
    if points.dim() != 4 or points.shape[-1] != 3:
        raise InputError(
            f"{name} must have shape [F,H,W,3] (or [H,W,3] for one frame); got {tuple(points.shape)}. "
            "Reshape flat [F,H*W,3] maps to [F,H,W,3] first."
        )
    F, H, W, _ = points.shape
    if F < 1 or H < 2 or W < 2:
        raise InputError(f"{name} needs at least one frame of at least 2x2 pixels; got {tuple(points.shape)}.")
    return points, single


def _pixel_norm(H: int, W: int):
    """Normalised pixel coordinates: uhat = (u - (W-1)/2) / s, vhat = (v - (H-1)/2) / s, s = max(H,W)/2."""
    s = max(H, W) / 2.0
    return s, (W - 1) / 2.0, (H - 1) / 2.0


# --------------------------------------------------------------------------------------------
# public: unprojection and the 4DNeX convention
# --------------------------------------------------------------------------------------------


def points_from_depth(depth: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    """Unproject depth maps into world points (paper Eq. 10: ``X = R (d K^-1 [u, v, 1]^T) + t``).

    Args:
        depth: [F,H,W] (or [H,W]) z-depth in the camera frame, world units.
        K: [F,3,3] or [3,3] pinhole intrinsics in pixels (skew allowed).
        cam_to_world: [F,4,4] or [4,4] OpenCV camera-to-world poses.

    Returns:
        [F,H,W,3] world points (or [H,W,3] when ``depth`` is [H,W]), in the dtype of ``depth``
        (float32 at least); pixel (i, j) is taken at (u, v) = (j, i) (OpenCV, integer centres).

    Raises:
        InputError: on shapes that do not match or a non-floating ``depth``.
    """
    if not isinstance(depth, torch.Tensor) or not depth.is_floating_point():
        raise InputError("depth must be a floating-point tensor [F,H,W] or [H,W].")
    single = depth.dim() == 2
    d = depth[None] if single else depth
    if d.dim() != 3:
        raise InputError(f"depth must be [F,H,W] or [H,W]; got {tuple(depth.shape)}.")
    F, H, W = d.shape
    K = torch.as_tensor(K, device=d.device)
    T = torch.as_tensor(cam_to_world, device=d.device)
    if K.shape[-2:] != (3, 3) or T.shape[-2:] != (4, 4):
        raise InputError(f"K must be [...,3,3] and cam_to_world [...,4,4]; got {tuple(K.shape)} and {tuple(T.shape)}.")
    K = K.expand(F, 3, 3) if K.dim() == 2 else K
    T = T.expand(F, 4, 4) if T.dim() == 2 else T
    if K.shape[0] != F or T.shape[0] != F:
        raise InputError(f"K and cam_to_world need {F} frames (or one); got {K.shape[0]} and {T.shape[0]}.")
    out_dtype = d.dtype if d.dtype == _F64 else torch.float32
    Kinv = torch.linalg.inv(K.to(_F64))
    jj = torch.arange(W, dtype=_F64, device=d.device)
    ii = torch.arange(H, dtype=_F64, device=d.device)
    pix = torch.stack([jj[None, :].expand(H, W), ii[:, None].expand(H, W), torch.ones(H, W, dtype=_F64, device=d.device)], -1)
    rays = torch.einsum("fab,hwb->fhwa", Kinv, pix)  # z component 1 (K's last row is [0,0,1])
    rays = rays / rays[..., 2:3]
    Xc = rays * d.to(_F64)[..., None]
    Tw = T.to(_F64)
    X = torch.einsum("fab,fhwb->fhwa", Tw[:, :3, :3], Xc) + Tw[:, None, None, :3, 3]
    X = X.to(out_dtype)
    return X[0] if single else X


def prepare_4dnex_points(xyz01: torch.Tensor) -> torch.Tensor:
    """Bring decoded 4DNeX XYZ (in [0, 1]) into the registration convention.

    4DNeX decodes its XYZ video to ``p = (X_norm + 1) / 2`` in [0, 1] (4dnex.md section 7).  The
    official registration subtracts 0.5 from x and y only, so that x, y are centred on 0 and z stays
    in [0, 1], in front of a camera near the origin (4dnex.md sections 7-8).  This does the same.

    Args:
        xyz01: [F,H,W,3] or [H,W,3] floating tensor, normally in [0, 1] (values outside are kept).

    Returns:
        A new float32 (or float64 if given) tensor of the same shape: ``(x - 0.5, y - 0.5, z)``.

    Raises:
        InputError: if the last dimension is not 3 or the tensor is not floating point.
    """
    if not isinstance(xyz01, torch.Tensor) or not xyz01.is_floating_point():
        raise InputError("xyz01 must be a floating-point tensor [...,3] of decoded XYZ in [0, 1].")
    if xyz01.shape[-1] != 3:
        raise InputError(f"xyz01 must end with 3 channels (x, y, z); got shape {tuple(xyz01.shape)}.")
    out = xyz01.to(xyz01.dtype if xyz01.dtype == _F64 else torch.float32).clone()
    out[..., 0] -= 0.5
    out[..., 1] -= 0.5
    return out


# --------------------------------------------------------------------------------------------
# moments and the exact weighted least-squares model
# --------------------------------------------------------------------------------------------

_PAIRS = [(a, b) for a in range(4) for b in range(a, 4)]  # 10 monomials of q~ q~^T


def _monomials(q: torch.Tensor) -> torch.Tensor:
    """[...,N,3] -> [...,N,10]: the upper triangle of q~ q~^T with q~ = [q, 1]."""
    x, y, z = q.unbind(-1)
    return torch.stack([x * x, x * y, x * z, x, y * y, y * z, y, z * z, z, torch.ones_like(x)], -1)


def _unpack(m10: torch.Tensor) -> torch.Tensor:
    """[...,10] -> [...,4,4] symmetric."""
    out = m10.new_zeros(*m10.shape[:-1], 4, 4)
    for k, (a, b) in enumerate(_PAIRS):
        out[..., a, b] = m10[..., k]
        out[..., b, a] = m10[..., k]
    return out


def _moments(q: torch.Tensor, w: torch.Tensor, uh: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """Weighted moments [...,5,4,4] = sum_i w_i c_i q~_i q~_i^T for c in (1, u, u^2, v, v^2).

    q [...,N,3], w [...,N], uh and vh broadcastable to [...,N]; computed in float64.
    """
    q = q.to(_F64)
    w = w.to(_F64)
    uh = uh.to(_F64).expand_as(w)
    vh = vh.to(_F64).expand_as(w)
    cols = torch.stack([w, w * uh, w * uh * uh, w * vh, w * vh * vh], -1)  # [...,N,5]
    mono = _monomials(q)  # [...,N,10]
    m = cols.transpose(-1, -2) @ mono  # [...,5,10]
    return _unpack(m)


def _G_blocks(mom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 Gram matrices of the lifted features [q~, u q~] and [q~, v q~] from moments [...,5,4,4]."""
    S0, Su, Suu, Sv, Svv = mom.unbind(-3)
    Gx = torch.cat([torch.cat([S0, Su], -1), torch.cat([Su, Suu], -1)], -2)
    Gy = torch.cat([torch.cat([S0, Sv], -1), torch.cat([Sv, Svv], -1)], -2)
    return Gx, Gy


def _g_vectors(M: torch.Tensor, kap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """g_x = [M0 + gx M2, -bx M2], g_y = [M1 + gy M2, -by M2]; M [F,3,4], kap [F,4] = (bx, by, gx, gy)."""
    bx, by, gx, gy = kap.unbind(-1)
    M0, M1, M2 = M.unbind(-2)
    g_x = torch.cat([M0 + gx[:, None] * M2, -bx[:, None] * M2], -1)
    g_y = torch.cat([M1 + gy[:, None] * M2, -by[:, None] * M2], -1)
    return g_x, g_y


@dataclass
class _Problem:
    """Everything the LM needs that does not change while the weights are fixed."""

    Gx: torch.Tensor  # [F,8,8]
    Gy: torch.Tensor  # [F,8,8]
    cf: torch.Tensor  # [F] factor sigma_f^2 / mean total weight (world units)
    mu: torch.Tensor  # [F,3] per-frame centre
    sig: torch.Tensor  # [F] per-frame scale
    T: torch.Tensor  # [4,k] tying of (bx, by, gx, gy) to the free intrinsics
    shared: bool
    fixed_K: bool
    smooth: float
    rho: float  # rotation-to-distance scale for the smoothness term
    ncorr: Optional[torch.Tensor] = None  # [F] noise-bias correction factor (see _noise_correction)
    m33: Optional[torch.Tensor] = None  # [F,5] sum w * (1, u, u^2, v, v^2)
    bcorr: Optional[torch.Tensor] = None  # [F,10] exact minus moment half-gradient at the start point


def _noise_correction(kap, P: _Problem):
    """Expected contribution of isotropic point noise to the cost, its gradient and GN Hessian.

    With noise n (std sigma per coordinate) on a point, the same-depth residual gains
    ``B n`` with ``B = [[1, 0, -x_n], [0, 1, -y_n]]`` and ``E||B n||^2 = sigma^2 (2 + x_n^2 +
    y_n^2)``.  That term depends on the intrinsics and biases the focal length (an
    errors-in-variables bias of order sigma^2); subtracting ``sigma^2 sum_i w_i (x_n^2 + y_n^2)``
    (an exact quadratic in (bx, by, gx, gy) from the moments) makes the estimate consistent.
    Returns (value, half-gradient [F,4], half-Hessian [F,4,4]) in the GN convention.
    """
    bx, by, gx, gy = kap.unbind(-1)
    S0, Su, Suu, Sv, Svv = P.m33.unbind(-1)
    c = P.ncorr
    val = (c * (bx * bx * Suu - 2 * bx * gx * Su + gx * gx * S0 + by * by * Svv - 2 * by * gy * Sv + gy * gy * S0)).sum()
    grad = torch.stack([bx * Suu - gx * Su, by * Svv - gy * Sv, gx * S0 - bx * Su, gy * S0 - by * Sv], -1) * c[:, None]
    Hs = kap.new_zeros(kap.shape[0], 4, 4)
    Hs[:, 0, 0], Hs[:, 0, 2], Hs[:, 2, 0], Hs[:, 2, 2] = Suu, -Su, -Su, S0
    Hs[:, 1, 1], Hs[:, 1, 3], Hs[:, 3, 1], Hs[:, 3, 3] = Svv, -Sv, -Sv, S0
    return val, grad, Hs * c[:, None, None]


def _data_cost(M, kap, P: _Problem) -> torch.Tensor:
    g_x, g_y = _g_vectors(M, kap)
    c = torch.einsum("fi,fij,fj->f", g_x, P.Gx, g_x) + torch.einsum("fi,fij,fj->f", g_y, P.Gy, g_y)
    return (P.cf * c).sum()


def _smooth_terms(R, t, P: _Problem):
    """Stacked smoothness state s_f = [rho vec(R_f), c_f] [F,12] and its Jacobian [F,12,6]."""
    F = R.shape[0]
    c = P.mu - P.sig[:, None] * torch.einsum("fba,fb->fa", R, t)  # world camera centre
    s = torch.cat([P.rho * R.reshape(F, 9), c], -1)
    G = _skew_generators(R.dtype, R.device)
    dR = torch.einsum("kab,fbc->fkac", G, R).reshape(F, 3, 9).transpose(1, 2) * P.rho  # [F,9,3]
    B = R.new_zeros(F, 12, 6)
    B[:, :9, :3] = dR
    B[:, 9:, 3:] = -P.sig[:, None, None] * R.transpose(1, 2)
    return s, B


def _second_diff(F, dtype, device):
    D = torch.zeros(F - 2, F, dtype=dtype, device=device)
    idx = torch.arange(F - 2, device=device)
    D[idx, idx] = 1
    D[idx, idx + 1] = -2
    D[idx, idx + 2] = 1
    return D


def _total_cost(R, t, kap, P: _Problem) -> torch.Tensor:
    M = torch.cat([R, t[..., None]], -1)
    cost = _data_cost(M, kap, P)
    if P.ncorr is not None:
        cost = cost - _noise_correction(kap, P)[0]
    if P.smooth > 0 and R.shape[0] >= 3:
        s, _ = _smooth_terms(R, t, P)
        D = _second_diff(R.shape[0], R.dtype, R.device)
        cost = cost + P.smooth * ((D @ s) ** 2).sum()
    return cost


def _D_mats(M: torch.Tensor, kap: torch.Tensor):
    """Jacobians [F,10,8] of g_x and g_y w.r.t. (w, tau, bx, by, gx, gy) (rows), at M [F,3,4]."""
    F = M.shape[0]
    Gs = _skew_generators(M.dtype, M.device)
    dM = M.new_zeros(F, 6, 3, 4)
    dM[:, :3] = torch.einsum("kab,fbc->fkac", Gs, M)
    for k in range(3):
        dM[:, 3 + k, k, 3] = 1.0
    bx, by, gx, gy = kap.unbind(-1)
    M2 = M[:, 2]
    Dx = M.new_zeros(F, 10, 8)
    Dy = M.new_zeros(F, 10, 8)
    Dx[:, :6, :4] = dM[:, :, 0] + gx[:, None, None] * dM[:, :, 2]
    Dx[:, :6, 4:] = -bx[:, None, None] * dM[:, :, 2]
    Dy[:, :6, :4] = dM[:, :, 1] + gy[:, None, None] * dM[:, :, 2]
    Dy[:, :6, 4:] = -by[:, None, None] * dM[:, :, 2]
    Dx[:, 6, 4:] = -M2  # d/d bx
    Dx[:, 8, :4] = M2  # d/d gx
    Dy[:, 7, 4:] = -M2  # d/d by
    Dy[:, 9, :4] = M2  # d/d gy
    return Dx, Dy


def _intrinsics_curvature(R, t, kap, P: _Problem) -> torch.Tensor:
    """[F,4]: diagonal of the data Gauss-Newton Hessian for (bx, by, gx, gy), per frame."""
    M = torch.cat([R, t[..., None]], -1)
    Dx, Dy = _D_mats(M, kap)
    Hf = Dx @ P.Gx @ Dx.transpose(1, 2) + Dy @ P.Gy @ Dy.transpose(1, 2)
    return P.cf[:, None] * Hf.diagonal(dim1=-2, dim2=-1)[:, 6:]


def _gradient_correction(R, t, kap, P: _Problem, gsum: torch.Tensor) -> torch.Tensor:
    """[F,10]: exact half-gradient (from per-pixel residual sums gsum [F,2,8]) minus the moment one."""
    M = torch.cat([R, t[..., None]], -1)
    Dx, Dy = _D_mats(M, kap)
    g_x, g_y = _g_vectors(M, kap)
    b_mom = torch.einsum("fpi,fij,fj->fp", Dx, P.Gx, g_x) + torch.einsum("fpi,fij,fj->fp", Dy, P.Gy, g_y)
    b_ex = torch.einsum("fpi,fi->fp", Dx, gsum[:, 0]) + torch.einsum("fpi,fi->fp", Dy, gsum[:, 1])
    return P.cf[:, None] * (b_ex - b_mom)


def _normal_equations(R, t, kap, P: _Problem):
    """Gauss-Newton H [n,n], gradient [n] and cost for the stacked parameters.

    Parameter order: 6 per frame (rotation increment w applied on the left of the world-to-camera
    rotation, then translation increment), then the free intrinsics (shared: k; per frame: k*F).
    """
    F = R.shape[0]
    dev = R.device
    M = torch.cat([R, t[..., None]], -1)  # [F,3,4]
    Dx, Dy = _D_mats(M, kap)
    g_x, g_y = _g_vectors(M, kap)
    cf = P.cf[:, None, None]
    Hf = cf * (Dx @ P.Gx @ Dx.transpose(1, 2) + Dy @ P.Gy @ Dy.transpose(1, 2))  # [F,10,10]
    bf = P.cf[:, None] * (torch.einsum("fpi,fij,fj->fp", Dx, P.Gx, g_x) + torch.einsum("fpi,fij,fj->fp", Dy, P.Gy, g_y))
    cost = (P.cf * (torch.einsum("fi,fij,fj->f", g_x, P.Gx, g_x) + torch.einsum("fi,fij,fj->f", g_y, P.Gy, g_y))).sum()
    if P.ncorr is not None:
        cval, cgrad, chess = _noise_correction(kap, P)
        cost = cost - cval
        bf = bf.clone()
        bf[:, 6:] -= cgrad
        Hf = Hf.clone()
        Hf[:, 6:, 6:] -= chess
    if P.bcorr is not None:
        bf = bf + P.bcorr

    T = P.T
    k = 0 if P.fixed_K else T.shape[1]
    nk = k if P.shared else k * F
    n = 6 * F + nk
    H = M.new_zeros(n, n)
    b = M.new_zeros(n)
    pidx = (6 * torch.arange(F, device=dev)[:, None] + torch.arange(6, device=dev)[None, :])  # [F,6]
    H[pidx[:, :, None], pidx[:, None, :]] = Hf[:, :6, :6]
    b[pidx] = bf[:, :6]
    if k:
        Hpi = Hf[:, :6, 6:] @ T  # [F,6,k]
        Hii = T.T @ Hf[:, 6:, 6:] @ T  # [F,k,k]
        bi = bf[:, 6:] @ T  # [F,k]
        if P.shared:
            o = 6 * F
            H[o:, o:] = Hii.sum(0)
            b[o:] = bi.sum(0)
            H[pidx[:, :, None], o + torch.arange(k, device=dev)[None, None, :]] = Hpi
            H[o + torch.arange(k, device=dev)[None, :, None], pidx[:, None, :]] = Hpi.transpose(1, 2)
        else:
            kidx = 6 * F + k * torch.arange(F, device=dev)[:, None] + torch.arange(k, device=dev)[None, :]
            H[kidx[:, :, None], kidx[:, None, :]] = Hii
            b[kidx] = bi
            H[pidx[:, :, None], kidx[:, None, :]] = Hpi
            H[kidx[:, :, None], pidx[:, None, :]] = Hpi.transpose(1, 2)

    if P.smooth > 0 and F >= 3:
        s, B = _smooth_terms(R, t, P)
        D = _second_diff(F, _F64, dev)
        r = D @ s  # [F-2,12]
        cost = cost + P.smooth * (r**2).sum()
        DtD = D.T @ D  # pentadiagonal
        b[pidx] += P.smooth * torch.einsum("fqp,fq->fp", B, D.T @ r)
        for off in range(3):
            a_idx = torch.arange(F - off, device=dev)
            coef = DtD[a_idx, a_idx + off]
            blk = P.smooth * coef[:, None, None] * (B[a_idx].transpose(1, 2) @ B[a_idx + off])
            H[pidx[a_idx][:, :, None], pidx[a_idx + off][:, None, :]] += blk
            if off:
                H[pidx[a_idx + off][:, :, None], pidx[a_idx][:, None, :]] += blk.transpose(1, 2)
    return H, b, cost


def _apply(R, t, kap, delta, P: _Problem):
    """Apply a stacked step; also returns it per frame in the untied [F,10] parameterisation."""
    F = R.shape[0]
    d = delta[: 6 * F].reshape(F, 6)
    E = _exp_so3(d[:, :3])
    R2 = E @ R
    t2 = torch.einsum("fab,fb->fa", E, t) + d[:, 3:]
    kap2 = kap
    dk = torch.zeros_like(kap)
    if not P.fixed_K and P.T.shape[1]:
        k = P.T.shape[1]
        di = delta[6 * F:]
        dk = (P.T @ di)[None, :].expand(F, 4) if P.shared else di.reshape(F, k) @ P.T.T
        kap2 = kap + dk
    return R2, t2, kap2, torch.cat([d, dk], -1)


def _lm(R, t, kap, P: _Problem, max_iter=30, tol=1e-12):
    """Levenberg-Marquardt on the moment-based cost (weights fixed).

    Returns R, t, kap, the iteration count, d^T H d for the total step d (H the Gauss-Newton
    Hessian at the start) and the number of parameters.

    With ``P.bcorr`` (the difference between the exact gradient, summed from per-pixel residuals,
    and the moment gradient at the starting point) the cost gets the matching linear term in the
    accumulated step, so that rounding errors of the moments cannot bias the minimiser.
    """
    lam = 1e-6
    acc = torch.zeros(R.shape[0], 10, dtype=R.dtype, device=R.device)
    acc_stacked = None

    def lin(a):
        return 0.0 if P.bcorr is None else 2 * (P.bcorr * a).sum()

    H, b, cost = _normal_equations(R, t, kap, P)
    H0 = H
    acc_stacked = torch.zeros_like(b)
    it = 0
    for it in range(1, max_iter + 1):
        diag = H.diagonal().clamp_min(1e-12 * H.diagonal().abs().max().clamp_min(1e-300))
        accepted = False
        for _ in range(12):
            A = H + torch.diag(lam * diag)
            delta, info = torch.linalg.solve_ex(A, -b)
            if info.item() != 0 or not torch.isfinite(delta).all():
                lam *= 10
                continue
            R2, t2, k2, dpre = _apply(R, t, kap, delta, P)
            c_old = cost + lin(acc)
            c2 = _total_cost(R2, t2, k2, P) + lin(acc + dpre)
            if torch.isfinite(c2) and c2 <= c_old:
                accepted = True
                break
            lam *= 10
        if not accepted:
            break
        step = delta.abs().max().item()
        R, t, kap, acc = R2, t2, k2, acc + dpre
        acc_stacked = acc_stacked + delta
        rel = (c_old - c2).item() / max(abs(c_old.item()), 1e-300)
        lam = max(lam / 10, 1e-12)
        H, b, cost = _normal_equations(R, t, kap, P)
        if step < 1e-13 or rel < tol:
            break
    # displacement in units of the GN curvature (for the convergence test of the IRLS passes)
    return R, t, kap, it, float(acc_stacked @ (H0 @ acc_stacked)), acc_stacked.numel()


# --------------------------------------------------------------------------------------------
# residuals, robust weights
# --------------------------------------------------------------------------------------------


def _samez_residual(q, R, t, kap, uh, vh):
    """Same-depth residual norms of points q [F,N,3] (normalised frame units).

    Returns (r, rho, z): r = ||e||; rho = ||e|| / sqrt(1 + |m|^2 / 2), the residual normalised so
    that E[rho^2] = 2 sigma^2 for isotropic noise of sigma per coordinate (E||e||^2 =
    sigma^2 (2 + |m|^2) with m = (x_n, y_n)); z the camera depth.
    """
    X = torch.einsum("fab,fnb->fna", R.to(q.dtype), q) + t.to(q.dtype)[:, None, :]
    k = kap.to(q.dtype)
    xn = k[:, 0, None] * uh - k[:, 2, None]
    yn = k[:, 1, None] * vh - k[:, 3, None]
    ex = X[..., 0] - xn * X[..., 2]
    ey = X[..., 1] - yn * X[..., 2]
    r = torch.sqrt(ex * ex + ey * ey)
    rho = r / torch.sqrt(1 + 0.5 * (xn * xn + yn * yn))
    return r, rho, X[..., 2]


_RAYLEIGH_MEDIAN = math.sqrt(2 * math.log(2))  # median of |e| for 2D N(0, s^2 I): 1.1774 s
_TUNING = {"huber": 2.0, "cauchy": 2.385, "tukey": 4.685}


def _robust_scale(rho: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-frame noise scale (std per coordinate) from the median normalised residual. [F,N] -> [F]."""
    rr = torch.where(valid, rho, torch.nan)
    if rr.shape[1] > 200_000:  # the median of a strided subset is plenty
        rr = rr[:, :: rr.shape[1] // 100_000]
    return torch.nanmedian(rr, dim=1).values / _RAYLEIGH_MEDIAN


def _weight_fn(x: torch.Tensor, robust: str, c: torch.Tensor, reject: Optional[torch.Tensor]):
    """IRLS weight of residual x for threshold c (same units); gross outliers beyond reject -> 0."""
    if robust == "none":
        return torch.ones_like(x)
    if robust == "huber":
        w = torch.where(x <= c, torch.ones_like(x), c / x.clamp_min(1e-300))
    elif robust == "cauchy":
        w = 1.0 / (1.0 + (x / c) ** 2)
    else:  # tukey
        w = torch.where(x < c, (1 - (x / c) ** 2) ** 2, torch.zeros_like(x))
    if reject is not None:
        w = torch.where(x <= reject, w, torch.zeros_like(w))
    return w


def _robust_weights(rho, valid, scale, robust: str, delta: Optional[float], reject: Optional[float]):
    """IRLS weights in [0,1] for normalised residuals rho [F,N] (per-frame noise scale [F])."""
    vf = valid.to(rho.dtype)
    if robust == "none":
        return vf
    c = torch.full_like(scale, float(delta)) if delta is not None else _TUNING[robust] * scale
    rej = None if reject is None else (float(reject) * scale)[:, None]
    return _weight_fn(rho, robust, c[:, None], rej) * vf


@functools.lru_cache(maxsize=256)
def _weighted_noise_factor(robust: str, delta_sigmas: Optional[float], reject: Optional[float]) -> float:
    """E[w(r) r^2] / E[r^2] for r the norm of a 2D standard normal (Rayleigh), by quadrature.

    It scales the expected noise contribution to the weighted cost (see ``_noise_correction``).
    """
    r = torch.linspace(0, 12, 12001, dtype=_F64)
    pdf = r * torch.exp(-0.5 * r * r)
    c = torch.tensor(_TUNING.get(robust, 1.0) if delta_sigmas is None else delta_sigmas, dtype=_F64)
    w = _weight_fn(r, robust, c, None if reject is None else torch.tensor(float(reject), dtype=_F64))
    return float(torch.trapezoid(w * r * r * pdf, r) / torch.trapezoid(r * r * pdf, r))


def _to_q_coords(R: torch.Tensor, t: torch.Tensor):
    """A^-1 [F,4,4] for X~ = A q~ with A = [[R, t], [0, 1]] (camera from normalised frame coords)."""
    F = R.shape[0]
    Ai = R.new_zeros(F, 4, 4)
    Ai[:, :3, :3] = R.transpose(1, 2)
    Ai[:, :3, 3] = -torch.einsum("fba,fb->fa", R, t)
    Ai[:, 3, 3] = 1
    return Ai


def _centred_soa(points: torch.Tensor, mu: torch.Tensor, valid: Optional[torch.Tensor], dtype) -> torch.Tensor:
    """(points - mu_f) as [F,3,H,W] (structure of arrays) in ``dtype``; 0 at invalid pixels."""
    F, H, W, _ = points.shape
    out = torch.empty(F, 3, H, W, dtype=dtype, device=points.device)
    for f in range(F):
        if points.dtype == torch.float64 and dtype != torch.float64:  # subtract before rounding
            out[f] = (points[f].permute(2, 0, 1) - mu[f][:, None, None]).to(dtype)
        else:
            torch.sub(points[f].permute(2, 0, 1).to(dtype), mu[f].to(dtype)[:, None, None], out=out[f])
        if valid is not None:
            out[f].masked_fill_(~valid[f], 0.0)
    return out


def _grid_pass(q0, valid, uh, vh, mu, sig, R, t, kap, *, robust, delta, reject, dtype, chunk_frames,
               weights=None, scale_samples=8000, out=None, moments=True):
    """One pass over a pixel grid: residuals of the current cameras, per-frame noise scale, robust
    weights, the weighted moments and the exact residual-gradient sums (and optionally the outputs).

    q0 [F,3,h,w]: the points minus the frame centre mu (see :func:`_centred_soa`), finite
    everywhere; valid [F,h,w] bool or None (all valid); uh [w] / vh [h] normalised pixel
    coordinates of the grid columns / rows.  Works in camera coordinates X = R q + t
    (q = (p - mu) / sig) with ``dtype`` arithmetic and preallocated buffers, sums the lifted
    monomials over rows and columns separately (the pixel coordinates are separable on a grid) and
    maps the sums back to q coordinates in float64.  ``weights`` [F,h,w] overrides the robust
    weights.  With ``out`` (a dict of preallocated depth, residual, confidence [F,h,w], points
    [F,h*w,3], c2w [F,4,4] and per-frame stat vectors) it also writes the ray-snapped outputs.

    With ``moments=False`` only the noise scale and the outputs are computed (moments and gsum
    are then None).

    Returns (moments [F,5,4,4], gsum [F,2,8], noise scale [F] in world units), all float64.
    """
    return _grid_pass_range(q0, valid, uh, vh, mu, sig, R, t, kap, 0, q0.shape[0], robust=robust, delta=delta,
                            reject=reject, dtype=dtype, chunk_frames=chunk_frames, weights=weights,
                            scale_samples=scale_samples, out=out, moments=moments)


def _grid_pass_range(q0, valid, uh, vh, mu, sig, R, t, kap, f0, f1, *, robust, delta, reject, dtype, chunk_frames,
                     weights, scale_samples, out, moments=True):
    """:func:`_grid_pass` on frames [f0, f1)."""
    _, _, h, w_ = q0.shape
    n = h * w_
    dev = q0.device
    c_max = max(1, min(chunk_frames, f1 - f0))
    Xb = torch.empty(c_max, 3, n, dtype=dtype, device=dev)
    Mb = torch.empty(c_max, 10 if moments else 3, h, w_, dtype=dtype, device=dev)
    Gb = torch.empty(c_max, 8, h, w_, dtype=dtype, device=dev) if moments else None
    ex, ey, r2, tmp = (torch.empty(c_max, h, w_, dtype=dtype, device=dev) for _ in range(4))
    uh_d, vh_d = uh.to(dtype), vh.to(dtype)
    uh64, vh64 = uh.to(_F64), vh.to(_F64)
    sstep = max(1, n // scale_samples)
    moms, gsums, scales = [], [], []
    for a in range(f0, f1, chunk_frames):
        b = min(f1, a + chunk_frames)
        c = b - a
        X, M = Xb[:c], Mb[:c]
        G = Gb[:c] if moments else None
        ex_, ey_, r2_, tmp_ = ex[:c], ey[:c], r2[:c], tmp[:c]
        v = None if valid is None else valid[a:b]
        sg = sig[a:b, None, None].to(dtype)
        # X = R (p - mu) / sig + t
        torch.bmm((R[a:b] / sig[a:b, None, None]).to(dtype), q0[a:b].reshape(c, 3, n), out=X)
        X += t[a:b, :, None].to(dtype)
        x, y, z = (X[:, k].view(c, h, w_) for k in range(3))
        k = kap[a:b].to(dtype)
        xn = (k[:, 0, None] * uh_d - k[:, 2, None])[:, None, :]  # [c,1,w]
        yn = (k[:, 1, None] * vh_d - k[:, 3, None])[:, :, None]  # [c,h,1]
        # same-depth residual e = (x - x_n z, y - y_n z)
        torch.mul(z, xn, out=ex_)
        torch.sub(x, ex_, out=ex_)
        torch.mul(z, yn, out=ey_)
        torch.sub(y, ey_, out=ey_)
        torch.mul(ex_, ex_, out=r2_)
        r2_.addcmul_(ey_, ey_)
        # normalised residual rho = |e| / sqrt(1 + |m|^2 / 2), world units (into tmp)
        torch.add(0.5 * xn * xn, 0.5 * yn * yn + 1, out=tmp_)
        torch.div(r2_, tmp_, out=tmp_)
        rho_ = tmp_.sqrt_().mul_(sg)
        rs = rho_.reshape(c, n)[:, ::sstep]
        if v is None:
            med = rs.median(dim=1).values
        else:
            med = torch.nanmedian(torch.where(v.reshape(c, n)[:, ::sstep], rs, torch.nan), dim=1).values
        sc = (med / _RAYLEIGH_MEDIAN).to(_F64)
        scales.append(sc)
        if moments:
            _accumulate_moments(M, G, x, y, z, ex_, ey_, rho_, sc, v, weights, a, b, robust, delta, reject, dtype,
                                uh64, vh64, R, t, moms, gsums)
        if out is None:
            continue
        # ---- outputs: snap each point on its ray -------------------------------------------
        m2, D, cz = M[:, 0], M[:, 1], M[:, 2]  # the monomial buffers are free again
        torch.add(xn * xn, yn * yn + 1, out=m2)  # |m|^2, m = (x_n, y_n, 1)
        torch.mul(x, xn, out=D)
        D.addcmul_(y, yn.expand_as(y)).add_(z).div_(m2)  # depth of the ray point nearest to X
        torch.mul(x, yn, out=cz)
        cz.sub_(y * xn)  # third component of X x m; the first two are (e_y, -e_x)
        bh = D <= 0
        if v is not None:
            bh &= v
        nv = torch.full((c,), float(n), dtype=_F64, device=dev) if v is None else v.reshape(c, -1).sum(1).to(_F64)
        out["behind"][a:b] = bh.reshape(c, -1).sum(1).to(_F64) / nv.clamp_min(1)
        res = out["residual"][a:b]
        r2_.addcmul_(cz, cz)
        torch.div(r2_, m2, out=res)
        res.sqrt_()  # point-to-ray distance |X x m| / |m|
        if bool(bh.any()):
            res.copy_(torch.where(bh, torch.sqrt(x * x + y * y + z * z), res))
        res.mul_(sg)
        if v is not None:
            res.masked_fill_(~v, 0.0)
        rs = res.reshape(c, n)[:, ::sstep]
        if v is None:
            out["median"][a:b] = rs.median(dim=1).values.to(_F64)
        else:
            out["median"][a:b] = torch.nanmedian(torch.where(v.reshape(c, n)[:, ::sstep], rs, torch.nan), 1).values.to(_F64)
        out["rms"][a:b] = torch.sqrt((res.reshape(c, n).to(_F64) ** 2).sum(1) / nv.clamp_min(1))
        nzf = torch.maximum(sc, 1e-6 * sig[a:b]).to(dtype)[:, None, None]
        cf = out["confidence"][a:b]
        torch.div(res, 3 * nzf, out=cf)
        cf.mul_(cf).mul_(-0.5).exp_()
        if v is not None:
            cf.masked_fill_(~v, 0.0)
        cf.masked_fill_(bh, 0.0)
        dep = out["depth"][a:b]
        torch.clamp(D, min=1e-6, out=dep)
        dep.mul_(sg)  # depth, world units
        torch.mul(dep, xn, out=x)
        torch.mul(dep, yn, out=y)
        z.copy_(dep)
        c2w = out["c2w"][a:b].to(dtype)
        out["points"][a:b] = (torch.bmm(c2w[:, :3, :3], X) + c2w[:, :3, 3, None]).transpose(1, 2)
    if not moments:
        return None, None, torch.cat(scales)
    return torch.cat(moms), torch.cat(gsums), torch.cat(scales)


def _accumulate_moments(M, G, x, y, z, ex_, ey_, rho_, sc, v, weights, a, b, robust, delta, reject, dtype,
                        uh64, vh64, R, t, moms, gsums):
    """Robust weights, weighted lifted monomials and gradient sums of one chunk (see _grid_pass)."""
    wgt = M[:, 9]  # the weights live in the monomial slot of "1"
    if weights is not None:
        wgt.copy_(weights[a:b].to(dtype))
    elif robust == "none":
        wgt.fill_(1.0)
    else:
        cc = (torch.full_like(sc, float(delta)) if delta is not None else _TUNING[robust] * sc).to(dtype)
        cc = cc[:, None, None]
        if robust == "huber":
            torch.div(cc.expand_as(rho_), rho_, out=wgt)
            wgt.clamp_(max=1.0)
        elif robust == "cauchy":
            torch.div(rho_, cc, out=wgt)
            wgt.mul_(wgt).add_(1.0).reciprocal_()
        else:  # tukey
            torch.div(rho_, cc, out=wgt)
            wgt.mul_(wgt).neg_().add_(1.0).clamp_(min=0.0)
            wgt.mul_(wgt)
        if reject is not None:
            wgt.masked_fill_(rho_ > (float(reject) * sc).to(dtype)[:, None, None], 0.0)
    if v is not None:
        wgt.mul_(v)
    # lifted monomials of X~ = (x, y, z, 1), weighted: order of _PAIRS
    torch.mul(wgt, x, out=M[:, 3])
    torch.mul(wgt, y, out=M[:, 6])
    torch.mul(wgt, z, out=M[:, 8])
    torch.mul(M[:, 3], x, out=M[:, 0])
    torch.mul(M[:, 3], y, out=M[:, 1])
    torch.mul(M[:, 3], z, out=M[:, 2])
    torch.mul(M[:, 6], y, out=M[:, 4])
    torch.mul(M[:, 6], z, out=M[:, 5])
    torch.mul(M[:, 8], z, out=M[:, 7])
    # exact gradient sums: sum w e_x X~ (1, u) and sum w e_y X~ (1, v)
    torch.mul(wgt, ex_, out=G[:, 3])
    torch.mul(wgt, ey_, out=G[:, 7])
    torch.mul(G[:, 3], x, out=G[:, 0])
    torch.mul(G[:, 3], y, out=G[:, 1])
    torch.mul(G[:, 3], z, out=G[:, 2])
    torch.mul(G[:, 7], x, out=G[:, 4])
    torch.mul(G[:, 7], y, out=G[:, 5])
    torch.mul(G[:, 7], z, out=G[:, 6])
    col = M.sum(2).to(_F64)  # [c,10,w]
    row = M.sum(3).to(_F64)  # [c,10,h]
    m10 = torch.stack([col.sum(-1), col @ uh64, col @ (uh64 * uh64), row @ vh64, row @ (vh64 * vh64)], 1)
    gcol = G[:, :4].sum(2).to(_F64)  # [c,4,w]
    grow = G[:, 4:].sum(3).to(_F64)  # [c,4,h]
    gX = torch.stack([gcol.sum(-1), gcol @ uh64, grow.sum(-1), grow @ vh64], 1)  # [c,4,4]
    Ai = _to_q_coords(R[a:b], t[a:b])
    momq = Ai[:, None] @ _unpack(m10) @ Ai[:, None].transpose(-1, -2)
    gq = torch.einsum("fab,fkb->fka", Ai, gX)
    moms.append(0.5 * (momq + momq.transpose(-1, -2)))
    gsums.append(torch.stack([torch.cat([gq[:, 0], gq[:, 1]], -1), torch.cat([gq[:, 2], gq[:, 3]], -1)], 1))


# --------------------------------------------------------------------------------------------
# initialisation: DLT hypotheses and a homography for planar frames
# --------------------------------------------------------------------------------------------


def _dlt_from_moments(mom: torch.Tensor) -> torch.Tensor:
    """Weighted DLT: P [...,3,4] (unit norm) minimising the algebraic error, from moments [...,5,4,4]."""
    S0, Su, Suu, Sv, Svv = mom.unbind(-3)
    Z = torch.zeros_like(S0)
    A = torch.cat(
        [
            torch.cat([S0, Z, -Su], -1),
            torch.cat([Z, S0, -Sv], -1),
            torch.cat([-Su, -Sv, Suu + Svv], -1),
        ],
        -2,
    )
    A = 0.5 * (A + A.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(A)
    return evecs[..., 0].reshape(*A.shape[:-2], 3, 4)


def _normalise_P(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign and scale so that det(M) > 0 and ||M[2]|| = 1 (then P[2] q~ is the camera depth).

    Returns P and the geometric-mean focal sqrt(det M) (normalised pixel units; NaN if det <= 0).
    """
    Mm = P[..., :3]
    det = torch.linalg.det(Mm)
    sgn = torch.where(det < 0, -torch.ones_like(det), torch.ones_like(det))
    n2 = Mm[..., 2, :].norm(dim=-1).clamp_min(1e-300)
    P = P * (sgn / n2)[..., None, None]
    det = det.abs() / n2**3
    f = torch.where(det > 0, det.sqrt(), torch.full_like(det, float("nan")))
    return P, f


def _score_P(P, f, q, uh, vh, want_any=True):
    """Score projective cameras P [F,C,3,4] (normalised by :func:`_normalise_P`) on points q [F,S,3].

    Returns (median same-depth residual with points behind the camera counted as infinite,
    the same median ignoring the side (None unless ``want_any``), fraction of points in front),
    each [F,C].
    """
    qt = torch.cat([q, torch.ones_like(q[..., :1])], -1)  # [F,S,4]
    proj = torch.einsum("fcab,fsb->fcas", P, qt)  # [F,C,3,S]
    z = proj[..., 2, :]
    ex = (proj[..., 0, :] - uh[:, None, :] * z) / f[..., None]
    ey = (proj[..., 1, :] - vh[:, None, :] * z) / f[..., None]
    r = torch.sqrt(ex * ex + ey * ey)
    front = z > 0
    r_front = torch.where(front, r, torch.full_like(r, float("inf")))
    k = (r.shape[-1] + 1) // 2
    med_any = torch.kthvalue(r, k, dim=-1).values if want_any else None
    return torch.kthvalue(r_front, k, dim=-1).values, med_any, front.to(r.dtype).mean(-1)


def _rq3(M: torch.Tensor):
    """RQ decomposition of [...,3,3]: M = K R, K upper triangular with positive diagonal, R orthogonal."""
    flip = torch.flip(torch.eye(3, dtype=M.dtype, device=M.device), dims=[0])
    Q, Rr = torch.linalg.qr((flip @ M).transpose(-1, -2))
    K = flip @ Rr.transpose(-1, -2) @ flip
    R = flip @ Q.transpose(-1, -2)
    D = torch.diag_embed(torch.sign(K.diagonal(dim1=-2, dim2=-1)).where(K.diagonal(dim1=-2, dim2=-1) != 0, torch.ones_like(K[..., 0, :])))
    return K @ D, D @ R


def _homography_P(q, uh, vh, w, only=None):
    """Camera hypothesis for near-planar frames, from a homography and centred square pixels.

    Returns P [F,3,4] (NaN where the focal is unobservable: plane facing the camera, or the camera
    in the plane, and for frames not in ``only`` [F] bool when given) and the plane-fit thickness
    ratio (smallest / largest variance of the points).
    """
    F = q.shape[0]
    wsum = w.sum(1).clamp_min(1e-300)
    mu = (w[..., None] * q).sum(1) / wsum[:, None]
    qc = q - mu[:, None]
    C = torch.einsum("fn,fna,fnb->fab", w, qc, qc) / wsum[:, None, None]
    ev, E = torch.linalg.eigh(C)  # ascending
    thick = ev[:, 0] / ev[:, 2].clamp_min(1e-300)
    E = torch.stack([E[..., 2], E[..., 1], torch.linalg.cross(E[..., 2], E[..., 1])], -1)  # [e1 e2 n]
    if only is not None:  # the homography is only needed for these (near-planar) frames
        P = torch.full((F, 3, 4), float("nan"), dtype=q.dtype, device=q.device)
        if bool(only.any()):
            sel = torch.nonzero(only).flatten()
            P[sel] = _homography_P(q[sel], uh[sel], vh[sel], w[sel])[0]
        return P, thick
    ab = torch.einsum("fna,fak->fnk", qc, E[..., :2])
    s = ab.norm(dim=-1).median(dim=1).values.clamp_min(1e-300)
    ab = ab / s[:, None, None]
    # homography DLT (9 unknowns) from the plane coordinates, via the same moments as the DLT
    mom = _moments(torch.cat([ab, torch.zeros_like(ab[..., :1])], -1), w, uh, vh)[..., [0, 1, 3], :][..., [0, 1, 3]]
    S0, Su, Suu, Sv, Svv = mom.unbind(-3)
    Z = torch.zeros_like(S0)
    A = torch.cat([torch.cat([S0, Z, -Su], -1), torch.cat([Z, S0, -Sv], -1), torch.cat([-Su, -Sv, Suu + Svv], -1)], -2)
    _, V = torch.linalg.eigh(0.5 * (A + A.transpose(-1, -2)))
    Hm = V[..., 0].reshape(F, 3, 3)
    h1, h2 = Hm[..., 0], Hm[..., 1]
    # f^2 (h31 h32) + (h11 h12 + h21 h22) = 0 ; f^2 (h31^2 - h32^2) + (h11^2 + h21^2 - h12^2 - h22^2) = 0
    c1 = h1[:, 2] * h2[:, 2]
    d1 = h1[:, 0] * h2[:, 0] + h1[:, 1] * h2[:, 1]
    c2 = h1[:, 2] ** 2 - h2[:, 2] ** 2
    d2 = h1[:, 0] ** 2 + h1[:, 1] ** 2 - h2[:, 0] ** 2 - h2[:, 1] ** 2
    den = c1 * c1 + c2 * c2
    f2 = -(c1 * d1 + c2 * d2) / den.clamp_min(1e-300)
    hn = Hm.norm(dim=(1, 2))
    ok = (den > 1e-10 * hn**4) & (f2 > 0)
    f = f2.clamp_min(1e-300).sqrt()
    Kinv = torch.diag_embed(torch.stack([1 / f, 1 / f, torch.ones_like(f)], -1))
    B = Kinv @ Hm
    lam = 2.0 / (B[..., 0].norm(dim=-1) + B[..., 1].norm(dim=-1)).clamp_min(1e-300)
    lam = lam * torch.sign(B[:, 2, 2]).where(B[:, 2, 2] != 0, torch.ones_like(lam))  # plane centre in front
    r1, r2, tt = (lam[:, None] * B[..., 0]), (lam[:, None] * B[..., 1]), (lam[:, None] * B[..., 2])
    Rp = torch.stack([r1, r2, torch.linalg.cross(r1, r2)], -1)
    U, _, Vh = torch.linalg.svd(Rp)
    Rp = U @ Vh
    Rp = torch.where((torch.linalg.det(Rp) < 0)[:, None, None], -Rp, Rp)
    # plane coordinates -> world: a = E^T (q - mu) / s ; X_c = s^{-1}... in units of s
    Rcw = Rp @ E.transpose(1, 2)
    tcw = s[:, None] * tt - torch.einsum("fab,fb->fa", Rcw, mu)
    Kh = torch.diag_embed(torch.stack([f, f, torch.ones_like(f)], -1))
    P = Kh @ torch.cat([Rcw, tcw[..., None]], -1)
    P = torch.where(ok[:, None, None], P, torch.full_like(P, float("nan")))
    return P, thick


def _neighbour_consistency(points, valid, ii, jj):
    """Local outlier score of sampled points: the 2nd smallest distance to their 4 neighbours.

    A point of a surface has close neighbours; an isolated gross outlier has none (with 20 %
    outliers an inlier still has >= 2 inlier 4-neighbours 97 % of the time).  points [F,H,W,3],
    valid [F,H,W]; ii [S], jj [S] sampled pixel indices (full resolution) -> score [F,S] (inf where
    fewer than 2 valid neighbours).
    """
    F, H, W, _ = points.shape
    offs = torch.tensor([(-1, 0), (1, 0), (0, -1), (0, 1)], device=points.device)
    ni = ii[:, None] + offs[None, :, 0]
    nj = jj[:, None] + offs[None, :, 1]
    inside = (ni >= 0) & (ni < H) & (nj >= 0) & (nj < W)
    flat = (ni.clamp(0, H - 1) * W + nj.clamp(0, W - 1)).reshape(-1)  # [S*4]
    pf = points.reshape(F, H * W, 3)
    centre = pf.index_select(1, ii * W + jj)  # [F,S,3]
    nb = pf.index_select(1, flat).reshape(F, -1, 4, 3)
    d = (nb - centre[:, :, None]).norm(dim=-1).to(_F64)  # [F,S,4]
    ok = valid.reshape(F, H * W).index_select(1, flat).reshape(F, -1, 4) & inside[None] & torch.isfinite(d)
    d = torch.where(ok, d, torch.full_like(d, float("inf")))
    return torch.kthvalue(d, 2, dim=-1).values


# --------------------------------------------------------------------------------------------
# public: the solver
# --------------------------------------------------------------------------------------------

_ROBUST = ("huber", "cauchy", "tukey", "none")


def _check_inputs(points, valid_mask, device):
    points, single = _as_points(points)
    if device is not None:
        points = points.to(device)
    F, H, W, _ = points.shape
    if valid_mask is None:
        valid = torch.ones(F, H, W, dtype=torch.bool, device=points.device)
    else:
        vm = torch.as_tensor(valid_mask, device=points.device)
        if vm.dim() == 2:
            vm = vm[None].expand(F, H, W)
        if tuple(vm.shape) != (F, H, W):
            raise InputError(f"valid_mask must be [F,H,W] or [H,W] matching points {tuple(points.shape)}; got {tuple(vm.shape)}.")
        valid = vm.to(torch.bool) if vm.dtype == torch.bool else vm > 0.5
    # fast path: NaN/inf propagate through the sum (a finite overflow only triggers the exact check)
    if valid_mask is None and bool(torch.isfinite(points.sum(dtype=_F64 if points.dtype == _F64 else torch.float32))):
        return points, valid, single
    finite = torch.isfinite(points).all(-1)
    bad = valid & ~finite
    if bad.any():
        frames = torch.nonzero(bad.flatten(1).any(1)).flatten().tolist()
        n_nan = int((torch.isnan(points).any(-1) & valid).sum())
        n_inf = int(bad.sum()) - n_nan
        raise GeometryError(
            f"points contain non-finite values at {int(bad.sum())} valid pixels ({n_nan} NaN, {n_inf} inf) "
            f"in frame(s) {frames[:10]}{'...' if len(frames) > 10 else ''}. Clean the point map, or pass "
            "valid_mask=torch.isfinite(points).all(-1) to exclude those pixels."
        )
    return points, valid, single


def fit_cameras(
    points: torch.Tensor,
    *,
    valid_mask: Optional[torch.Tensor] = None,
    shared_intrinsics: bool = True,
    square_pixels: bool = True,
    centered_principal_point: bool = True,
    robust: str = "huber",
    huber_delta: Optional[float] = None,
    temporal_smoothness: float = 0.0,
    iterations: int = 4,
    outlier_threshold: Optional[float] = 5.0,
    noise_bias_correction: bool = True,
    device: Optional[str | torch.device] = None,
    callback: Optional[Callable[[int, int], object]] = None,
    K: Optional[torch.Tensor] = None,
    robust_init: bool = True,
    sample_pixels: int = 4096,
    seed: int = 0,
    chunk_pixels: int = 400_000,
) -> CameraFit:
    """Recover intrinsics, poses and depth from XYZ point maps (4DNeX paper Sec. 4.3, Eqs. 9-10).

    Minimises, per frame f and pixel (i, j), the robustly weighted squared distance between the
    point ``P[f,i,j]`` and the point of the pixel's ray at the same camera depth (see the module
    docstring), over K (shared or per frame), the cam-to-world rotation and translation, plus an
    optional temporal smoothness term; then snaps every point on its ray (the free per-pixel depth
    of Eq. 9) to give depth, residual and the re-projected points.  Frames are fitted on their own
    (4DNeX maps are re-centred per frame; 4dnex.md sections 9-10), coupled only through a shared K
    and the smoothness term.  Replaces the official 1500-step Adam loop (4dnex.md section 8).

    Args:
        points: [F,H,W,3] (or [H,W,3]) world points, float16/32/64, any units.  4DNeX output goes
            through :func:`prepare_4dnex_points` first.  Pixel (i, j) is at (u, v) = (j, i).
        valid_mask: optional bool [F,H,W] or [H,W]; False pixels are ignored (and may hold NaN).
        shared_intrinsics: one K for all frames (True) or one per frame (zoom).
        square_pixels: fx = fy.
        centered_principal_point: (cx, cy) = ((W-1)/2, (H-1)/2); otherwise fitted.
        robust: "huber" (default), "cauchy", "tukey" (IRLS weights) or "none" (plain least squares).
        huber_delta: robust threshold in world units for the residual norm; default 2.0 (Huber),
            2.385 (Cauchy) or 4.685 (Tukey) times the per-frame noise scale estimated from the
            median residual.
        temporal_smoothness: weight lambda >= 0 of ``sum_f ||c_{f-1} - 2c_f + c_{f+1}||^2 +
            rho^2 ||R_{f-1} - 2R_f + R_{f+1}||_F^2`` (world camera centres c, world-to-camera
            rotations R, rho the mean frame scale).  The data term is the per-frame weighted sum
            of squared residuals divided by the mean number of pixels per frame, so lambda = 1
            makes an acceleration of d world units cost as much as a residual of d at every pixel
            of a frame; 0.1-1 removes jitter, larger values also bend real motion.  0 (default)
            fits frames independently.  Only meaningful when the frames share one world frame (not
            for 4DNeX maps, which are re-centred per frame).  The rotation term uses the exact
            chordal distance.
        iterations: maximum number of full-resolution passes that update the cameras (each one
            pass over the pixels plus a few Levenberg-Marquardt steps on the moments); 0-2 are
            normally used, the coarser levels do the rest.
        outlier_threshold: residuals above this many noise scales get weight 0 (gross outliers);
            None keeps the pure robust function.  Ignored with ``robust="none"``.
        noise_bias_correction: subtract the expected contribution of isotropic point noise to the
            cost (removes the focal-length bias of order noise^2; see the module docstring).
        device: where to compute ("cpu", "cuda", ...); default the device of ``points``.
        callback: ``callback(step, total)`` after each stage; raise (or return False, which raises
            :class:`CancelledError`) to cancel.
        K: optional known intrinsics [3,3] or [F,3,3] (zero skew); then only the poses are fitted.
        robust_init: initialise from robust hypotheses (neighbour-distance pre-filter, least
            median of squares over random 8-point DLTs, inlier re-fit); False uses one
            least-squares DLT on all pixels (the "plain" initialisation, for comparison).
        sample_pixels: about this many pixels per frame are used by the initialisation.
        seed: seed of the hypothesis sampling (results are deterministic for a given seed).
        chunk_pixels: pixels processed at once in the full-resolution passes (bounds memory).

    Returns:
        :class:`CameraFit` with float32 tensors on the compute device, always batched (F = 1 for
        an [H,W,3] input).  ``info`` has "iterations" (full-resolution updates), "passes" (per
        level), "lm_iterations", per-frame "rms_residual", "median_residual" (world units),
        "noise_scale" (noise std per coordinate estimated from the residuals), "scale" (point
        spread), "behind_fraction", "planar_frames", "intrinsics_observability" (share of the
        intrinsics' curvature left after the poses are marginalised; ~0 = unobservable),
        "timings" (seconds per stage) and the options.

    Raises:
        InputError: bad shapes, dtypes or options.
        GeometryError: NaN/inf at valid pixels, too few valid pixels, constant, collinear or
            otherwise degenerate frames, a mirrored (left-handed) map, an unobservable or invalid
            focal length, or a fit whose median residual exceeds 10 % of the scene scale; the
            message says what to do.
        CancelledError: the callback asked to stop.
    """
    t_start = time.perf_counter()
    timings = {}
    if robust not in _ROBUST:
        raise InputError(f"robust must be one of {_ROBUST}; got {robust!r}.")
    if huber_delta is not None and not (math.isfinite(huber_delta) and huber_delta > 0):
        raise InputError(f"huber_delta must be a positive finite number (world units) or None; got {huber_delta}.")
    if not (math.isfinite(temporal_smoothness) and temporal_smoothness >= 0):
        raise InputError(f"temporal_smoothness must be >= 0; got {temporal_smoothness}.")
    if int(iterations) < 1:
        raise InputError(f"iterations must be >= 1; got {iterations}.")
    points, valid, single = _check_inputs(points, valid_mask, device)
    dev = points.device
    F, H, W, _ = points.shape
    s_pix, c0x, c0y = _pixel_norm(H, W)
    total_steps = 4 + int(iterations)
    _callback(callback, 0, total_steps)

    # ---- known intrinsics -> internal (bx, by, gx, gy) -------------------------------------
    kap_fixed = None
    if K is not None:
        Kt = torch.as_tensor(K, device=dev).to(_F64)
        if Kt.shape[-2:] != (3, 3) or Kt.dim() not in (2, 3) or (Kt.dim() == 3 and Kt.shape[0] not in (1, F)):
            raise InputError(f"K must be [3,3] or [F,3,3] with F={F}; got {tuple(Kt.shape)}.")
        Kt = Kt.expand(F, 3, 3) if Kt.dim() == 2 else Kt.expand(F, 3, 3)
        if not torch.isfinite(Kt).all() or (Kt[:, 0, 0] <= 0).any() or (Kt[:, 1, 1] <= 0).any():
            raise InputError("K must be finite with positive focal lengths.")
        if (Kt[:, 0, 1].abs() > 1e-9 * Kt[:, 0, 0]).any():
            raise InputError("K with skew is not supported; set K[0,1] = 0.")
        bx, by = s_pix / Kt[:, 0, 0], s_pix / Kt[:, 1, 1]
        kap_fixed = torch.stack([bx, by, bx * (Kt[:, 0, 2] - c0x) / s_pix, by * (Kt[:, 1, 2] - c0y) / s_pix], -1)

    # ---- sub-sample for the initialisation ----------------------------------------------
    t0 = time.perf_counter()
    # a grid of about sample_pixels valid pixels in the sparsest frame
    n_min = int(valid.reshape(F, -1).sum(1).min())
    stride = max(1, int(math.sqrt(max(n_min, 1) / max(int(sample_pixels), 16))))
    si = torch.arange(stride // 2, H, stride, device=dev)
    sj = torch.arange(stride // 2, W, stride, device=dev)
    ii = si[:, None].expand(len(si), len(sj)).reshape(-1)
    jj = sj[None, :].expand(len(si), len(sj)).reshape(-1)
    if stride == 1:
        ps = points.reshape(F, H * W, 3).to(_F64)  # [F,S,3]
        vs = valid.reshape(F, H * W)
    else:
        ps = points.reshape(F, H * W, 3).index_select(1, ii * W + jj).to(_F64)  # [F,S,3]
        vs = valid.reshape(F, H * W).index_select(1, ii * W + jj)
    n_valid = vs.sum(1)
    min_pixels = 16
    if (n_valid < min_pixels).any():
        bad = torch.nonzero(n_valid < min_pixels).flatten().tolist()
        n_full = valid.flatten(1).sum(1)
        raise GeometryError(
            f"too few valid pixels in frame(s) {bad[:10]} (at most {int(n_full[bad].max())} in the frame, "
            f"{int(n_valid[bad].min())} on the sampling grid; at least {min_pixels} on a ~{sample_pixels}-pixel "
            "grid are needed). Check valid_mask, or drop those frames."
        )
    uh_s = ((jj.to(_F64) - c0x) / s_pix)[None].expand(F, -1)
    vh_s = ((ii.to(_F64) - c0y) / s_pix)[None].expand(F, -1)

    # neighbour-distance outlier pre-filter (robust init only)
    if robust_init:
        dev_loc = _neighbour_consistency(points, valid, ii, jj)
        dl = torch.where(vs & torch.isfinite(dev_loc), dev_loc, torch.nan)
        med_dev = torch.nanmedian(dl, dim=1).values

    # per-frame normalisation: centre mu (median), scale sig (median distance)
    pnan = torch.where(vs[..., None], ps, torch.nan)
    mu = torch.nanmedian(pnan, dim=1).values  # [F,3]
    dist = torch.where(vs, (ps - mu[:, None]).norm(dim=-1), torch.nan)
    sig = torch.nanmedian(dist, dim=1).values
    mag = mu.norm(dim=-1)
    if not torch.isfinite(sig).all() or (sig <= 1e-7 * torch.maximum(mag, torch.ones_like(mag) * 1e-30)).any() or (sig <= 0).any():
        bad = torch.nonzero(~(sig > 1e-7 * torch.maximum(mag, torch.full_like(mag, 1e-30)))).flatten().tolist()
        raise GeometryError(
            f"frame(s) {bad[:10]} are constant (all points at the same place), so no camera can be fitted. "
            "Check that the XYZ decoding produced a real point map (not a blank or saturated frame)."
        )
    if robust_init:
        keep = vs & (dev_loc <= torch.maximum(6 * med_dev, 1e-4 * sig)[:, None])
        few = keep.sum(1) < min_pixels
        keep = torch.where(few[:, None], vs, keep)
    else:
        keep = vs
    wk = keep.to(_F64)
    qs = (ps - mu[:, None]) / sig[:, None, None]
    qs = torch.where(vs[..., None], qs, torch.zeros_like(qs))

    # degeneracy of the point cloud itself (collinear)
    wsum = wk.sum(1)
    qm = (wk[..., None] * qs).sum(1) / wsum[:, None]
    C = torch.einsum("fn,fna,fnb->fab", wk, qs - qm[:, None], qs - qm[:, None]) / wsum[:, None, None]
    ev = torch.linalg.eigvalsh(C)
    if (ev[:, 1] < 1e-10 * ev[:, 2]).any():
        bad = torch.nonzero(ev[:, 1] < 1e-10 * ev[:, 2]).flatten().tolist()
        raise GeometryError(
            f"the points of frame(s) {bad[:10]} lie on a line; a camera cannot be recovered from them. "
            "Check the point map (it should be a surface seen by the camera)."
        )

    # ---- hypotheses ----------------------------------------------------------------------
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    mom = _moments(qs, wk, uh_s, vh_s)
    P0 = _dlt_from_moments(mom)  # [F,3,4]
    cands = [P0[:, None]]
    if robust_init:
        n_hyp, k_pts = 64, 8
        probs = wk.cpu() + 1e-12
        replace = bool((keep.sum(1) < n_hyp * k_pts).any())
        idx = torch.multinomial(probs, n_hyp * k_pts, replacement=replace, generator=gen).to(dev)
        idx = idx.reshape(F, n_hyp, k_pts)
        qh = torch.gather(qs, 1, idx.reshape(F, -1, 1).expand(-1, -1, 3)).reshape(F, n_hyp, k_pts, 3)
        uhh = torch.gather(uh_s, 1, idx.reshape(F, -1)).reshape(F, n_hyp, k_pts)
        vhh = torch.gather(vh_s, 1, idx.reshape(F, -1)).reshape(F, n_hyp, k_pts)
        momh = _moments(qh, torch.ones_like(uhh), uhh, vhh)
        cands.append(_dlt_from_moments(momh))
    Ph, thick = _homography_P(qs, uh_s, vh_s, wk, only=ev[:, 0] < 0.1**2 * ev[:, 2])
    planar = thick < 0.05**2
    cands.append(Ph[:, None])
    Pall = torch.cat(cands, 1)  # [F,C,3,4]
    Pall, fall = _normalise_P(Pall)
    bad_c = ~torch.isfinite(Pall).all(-1).all(-1) | ~torch.isfinite(fall)
    Pall = torch.where(bad_c[..., None, None], torch.zeros_like(Pall), Pall)
    fall = torch.where(bad_c, torch.ones_like(fall), fall)
    # score on 384 of the kept sample points per frame (least median of squares)
    n_sc = 384
    sidx = torch.multinomial(wk.cpu() + 1e-12, n_sc, replacement=bool((keep.sum(1) < n_sc).any()), generator=gen).to(dev)
    q_sc, u_sc, v_sc = (torch.gather(qs, 1, sidx[..., None].expand(-1, -1, 3)), torch.gather(uh_s, 1, sidx),
                        torch.gather(vh_s, 1, sidx))

    def score_all(P_, f_, bad_, want_any=True):
        sc_, sa_, fr_ = _score_P(P_, f_, q_sc, u_sc, v_sc, want_any)
        inf = torch.full_like(sc_, float("inf"))
        sa_ = torch.where(bad_ | torch.isnan(sa_), inf, sa_) if want_any else None
        return torch.where(bad_ | torch.isnan(sc_), inf, sc_), sa_, fr_

    score, score_any, front = score_all(Pall, fall, bad_c)
    if robust_init:
        # local optimisation: re-fit a DLT on the inliers of the best hypotheses (either side)
        lo = []
        for sel in (score[:, :-1].argmin(1), score_any[:, :-1].argmin(1)):
            Pb_ = Pall[torch.arange(F, device=dev), sel]
            qt_ = torch.cat([qs, torch.ones_like(qs[..., :1])], -1)
            pr = torch.einsum("fab,fsb->fas", Pb_, qt_)
            r_ = torch.sqrt((pr[:, 0] - uh_s * pr[:, 2]) ** 2 + (pr[:, 1] - vh_s * pr[:, 2]) ** 2)
            r_ = torch.where(keep, r_, torch.nan)
            inl = keep & (r_ <= 2.5 * torch.nanmedian(r_, dim=1).values[:, None])
            lo.append(_dlt_from_moments(_moments(qs, inl.to(_F64), uh_s, vh_s))[:, None])
        P_lo, f_lo = _normalise_P(torch.cat(lo, 1))
        bad_lo = ~torch.isfinite(P_lo).all(-1).all(-1) | ~torch.isfinite(f_lo)
        P_lo = torch.where(bad_lo[..., None, None], torch.zeros_like(P_lo), P_lo)
        f_lo = torch.where(bad_lo, torch.ones_like(f_lo), f_lo)
        s_lo, sa_lo, fr_lo = score_all(P_lo, f_lo, bad_lo)
        # keep the homography candidate last
        Pall = torch.cat([Pall[:, :-1], P_lo, Pall[:, -1:]], 1)
        fall = torch.cat([fall[:, :-1], f_lo, fall[:, -1:]], 1)
        score = torch.cat([score[:, :-1], s_lo, score[:, -1:]], 1)
        score_any = torch.cat([score_any[:, :-1], sa_lo, score_any[:, -1:]], 1)
        front = torch.cat([front[:, :-1], fr_lo, front[:, -1:]], 1)
        bad_c = torch.cat([bad_c[:, :-1], bad_lo, bad_c[:, -1:]], 1)
    # handedness: on non-planar frames the best projective camera (either side) is unique; if the
    # points are behind it (with det M > 0), the map is a mirror image of a perspective view
    s_any = score_any[:, :-1]
    best_any = s_any.argmin(1)
    front_best = front[:, :-1].gather(1, best_any[:, None]).squeeze(1)
    mirrored = ~planar & torch.isfinite(s_any.gather(1, best_any[:, None]).squeeze(1)) & (front_best < 0.5)
    if not robust_init:  # one least-squares DLT is no reliable judge of the handedness with outliers
        mirrored &= False
    if mirrored.any():
        bad = torch.nonzero(mirrored).flatten().tolist()
        raise GeometryError(
            f"frame(s) {bad[:10]} look like a mirror image of a perspective view: the points are behind the best "
            "fitting camera. The axes are probably left-handed: flip the sign of y (or x), or of z if it points "
            "backward. Expected OpenCV axes: x right, y down, z forward (depth > 0 in front)."
        )
    best = score.argmin(1)
    if not torch.isfinite(score.gather(1, best[:, None])).all():
        bad = torch.nonzero(~torch.isfinite(score.gather(1, best[:, None]).squeeze(1))).flatten().tolist()
        raise GeometryError(
            f"no camera with the points in front of it explains frame(s) {bad[:10]}. The map may be mirrored "
            "(left-handed axes: flip the sign of y or x), use z pointing backward (flip z), or not be a "
            "perspective point map at all."
        )
    Pb = Pall[torch.arange(F, device=dev), best]
    Kh, Rcw = _rq3(Pb[:, :, :3])
    Kh = Kh / Kh[:, 2:3, 2:3]
    tcw = torch.linalg.solve(Kh, Pb[:, :, 3:4]).squeeze(-1)
    # P was normalised so that ||M[2]|| = 1 with det > 0, hence Rcw is a proper rotation
    f_init = torch.sqrt(Kh[:, 0, 0].abs() * Kh[:, 1, 1].abs())
    if kap_fixed is not None or shared_intrinsics:
        # with one K for all frames (median of the frames' estimates, or the given one), choose
        # every frame's pose again among all its hypotheses, each projected on that K: a frame
        # whose own focal is weakly determined then still gets a consistent start
        if kap_fixed is not None:
            kk = kap_fixed
        else:
            fm = torch.nanmedian(f_init)
            kk = torch.stack([1 / fm, 1 / fm, torch.zeros_like(fm), torch.zeros_like(fm)]).expand(F, 4)
        Kinv = torch.zeros(F, 3, 3, dtype=_F64, device=dev)
        Kinv[:, 0, 0], Kinv[:, 1, 1], Kinv[:, 0, 2], Kinv[:, 1, 2], Kinv[:, 2, 2] = kk[:, 0], kk[:, 1], -kk[:, 2], -kk[:, 3], 1
        A = Kinv[:, None] @ Pall  # ~ lambda [R | t]
        U, Sv, Vh = torch.linalg.svd(A[..., :3])
        Rc = U @ Vh
        lam = Sv.mean(-1).clamp_min(1e-300)
        tc = A[..., 3] / lam[..., None]
        Kc = torch.linalg.inv(Kinv)[:, None]
        Pc = Kc @ torch.cat([Rc, tc[..., None]], -1)
        ok = ~bad_c & (torch.linalg.det(Rc) > 0)
        Pc = torch.where(ok[..., None, None], Pc, torch.zeros_like(Pc))
        sc_c, _, _ = score_all(Pc, torch.ones_like(fall) / kk[:, :1].sqrt() / kk[:, 1:2].sqrt(), ~ok, False)
        bc = sc_c.argmin(1)
        if bool(torch.isfinite(sc_c.gather(1, bc[:, None])).all()):
            Rcw = Rc[torch.arange(F, device=dev), bc]
            tcw = tc[torch.arange(F, device=dev), bc]
    timings["init"] = time.perf_counter() - t0
    _callback(callback, 1, total_steps)

    # ---- LM + IRLS on the sample ----------------------------------------------------------
    t0 = time.perf_counter()
    if kap_fixed is not None:
        kap = kap_fixed.clone()
        Tm = torch.zeros(4, 0, dtype=_F64, device=dev)
    else:
        if shared_intrinsics:
            fb = torch.nanmedian(f_init).reshape(1).expand(F)
        else:
            fb = f_init
        kap = torch.stack([1 / fb, 1 / fb, torch.zeros_like(fb), torch.zeros_like(fb)], -1)
        cols = []
        if square_pixels:
            cols.append([1.0, 1.0, 0.0, 0.0])
        else:
            cols += [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
        if not centered_principal_point:
            cols += [[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
        Tm = torch.tensor(cols, dtype=_F64, device=dev).T
    rho = float(sig.mean())
    reject = None if (robust == "none" or outlier_threshold is None) else float(outlier_threshold)

    def fac_noise(noise_scale):
        """E[w r^2] / E[r^2] of the robust weights for Gaussian residuals, per frame."""
        if robust == "none":
            return torch.ones_like(noise_scale)
        if huber_delta is None:
            return torch.full_like(noise_scale, _weighted_noise_factor(robust, None, reject))
        return torch.tensor([_weighted_noise_factor(robust, round(float(huber_delta / max(float(ns), 1e-300)), 3), reject)
                             for ns in noise_scale.cpu()], dtype=_F64, device=dev)

    def make_problem(momf, noise_scale, correct=True):
        """Exact weighted LS problem from moments; noise_scale [F] (world units) for the bias term."""
        Gx, Gy = _G_blocks(momf)
        nbar = momf[:, 0, 3, 3].mean().clamp_min(1e-300)
        ncorr = None
        if correct and noise_bias_correction and kap_fixed is None:
            ncorr = fac_noise(noise_scale) * noise_scale**2 / nbar
        P_ = _Problem(Gx=Gx, Gy=Gy, cf=sig**2 / nbar, mu=mu, sig=sig, T=Tm, shared=shared_intrinsics,
                      fixed_K=kap_fixed is not None, smooth=float(temporal_smoothness), rho=rho,
                      ncorr=ncorr, m33=momf[:, :, 3, 3])
        if ncorr is not None:
            # safeguard: the correction (a concave quadratic in the intrinsics) must stay well below
            # the data curvature, or a poor noise estimate could make the cost unbounded
            Hdat = _intrinsics_curvature(Rcw, tcw, kap, P_)  # [F,4] diagonal, per frame
            _, _, chess = _noise_correction(kap, P_)
            cd = chess.diagonal(dim1=-2, dim2=-1)
            ratio = torch.where(cd > 0, Hdat / cd.clamp_min(1e-300), torch.full_like(cd, float("inf"))).amin(-1)
            P_.ncorr = ncorr * torch.clamp(0.5 * ratio, max=1.0)
        return P_

    def param_change(Ra, ta, ka, Rb, tb, kb):
        """Largest change of rotation (chordal), camera centre (/ frame scale) and focal (relative)."""
        dR = torch.linalg.matrix_norm(Ra - Rb).max().item()
        ca = -torch.einsum("fba,fb->fa", Ra, ta)
        cb = -torch.einsum("fba,fb->fa", Rb, tb)
        dc = (ca - cb).norm(dim=-1).max().item()
        dk = ((ka - kb).abs() / kb[:, :2].abs().amax(-1, keepdim=True)).max().item()
        return max(dR, dc, dk)

    lm_total = 0
    passes = {}

    def run_level(name, pts_l, valid_l, uh_l, vh_l, max_passes, tol, dtype, rob, rej, first_weights=None,
                  max_std_step=0.0):
        """IRLS at one resolution: pass over the pixel grid, then LM on the moments, until converged."""
        nonlocal Rcw, tcw, kap, lm_total
        n_l = pts_l.shape[2] * pts_l.shape[3]
        chunk_f = max(1, int(chunk_pixels) // max(n_l, 1))
        count = 0
        std_hist = []
        for it in range(max_passes):
            w_override = first_weights if it == 0 else None
            mom, gsum, scale = _grid_pass(pts_l, valid_l, uh_l, vh_l, mu, sig, Rcw, tcw, kap, robust=rob,
                                          delta=huber_delta, reject=rej, dtype=dtype, chunk_frames=chunk_f,
                                          weights=w_override)
            Pm = make_problem(mom, scale, correct=name != "sample")
            Pm.bcorr = _gradient_correction(Rcw, tcw, kap, Pm, gsum)
            last_problem[0] = Pm
            last_noise[0] = scale
            R0_, t0_, k0_ = Rcw, tcw, kap
            Rcw, tcw, kap, n, maha, ndof = _lm(Rcw, tcw, kap, Pm, max_iter=20, tol=1e-14)
            lm_total += n
            count += 1
            chg = param_change(Rcw, tcw, kap, R0_, t0_, k0_)
            # the step in standard deviations per parameter: Cov = sigma^2 / Nbar * H^-1
            nbar = float(mom[:, 0, 3, 3].mean())
            s2 = float((scale**2).mean())
            std_step = math.sqrt(maha * nbar / max(s2 * ndof, 1e-300)) if s2 > 0 else float("inf")
            done = chg < tol or std_step < max_std_step or rob == "none"
            last_change[0] = chg
            std_hist.append(std_step)
            if done and (it >= 1 or first_weights is None):
                break
        passes[name] = count
        if len(std_hist) >= 2 and math.isfinite(std_hist[-2]) and std_hist[-2] > 0:
            rates.append(std_hist[-1] / std_hist[-2])
        return std_hist[-1] if std_hist else float("inf")

    def check_intrinsics(kap_):
        bx_, by_ = kap_[:, 0], kap_[:, 1]
        if not torch.isfinite(kap_).all() or (bx_ <= 0).any() or (by_ <= 0).any():
            raise GeometryError(
                "the fitted focal length is not positive/finite: the map does not look like a perspective view "
                "(a mirrored map, or an affine/orthographic one such as the XYZ initialisation plane). Check the "
                "axis convention (x right, y down, z forward) or pass a known K."
            )
        fmax = float((s_pix / kap_[:, :2]).max())
        if fmax > 100 * max(H, W):
            raise GeometryError(
                f"the fitted focal length ({fmax:.3g} px) is unbounded: the map is (nearly) an affine image of the "
                "pixel grid (orthographic, a plane facing the camera, or the XYZ initialisation plane), so the focal "
                "length is unobservable. Pass a known K, or check the decoded XYZ."
            )

    def check_observability(noise_scale):
        """Can the data fix the intrinsics?  Evaluated on the sample grid in float64 at the current
        cameras, with the Schur complement S of the intrinsics (the poses marginalised):

        * S / H_kk ~ 0: no information (a plane facing the camera, an orthographic map);
        * standard error ``sigma^2 / N * S^-1`` above 5 % of the focal length;
        * the noise bias of the focal (what ``noise_bias_correction`` removes, ``S^-1`` times the
          gradient of the expected noise term) above 10 %: the correction itself would then be
          too uncertain (a nearly fronto-parallel plane, or very noisy points).

        Returns (smallest S / H_kk, relative standard error, relative noise bias); 1.0, 0, 0 with a
        fixed K.
        """
        if kap_fixed is not None or Tm.shape[1] == 0:
            return 1.0, 0.0, 0.0
        mom_, _, _ = _grid_pass(q0_s, vs_grid, uh_grid, vh_grid, mu, sig, Rcw, tcw, kap, robust=robust_s,
                                delta=huber_delta, reject=reject_s, dtype=_F64, chunk_frames=F)
        # profile-likelihood test: force the focal 30 % lower / 40 % higher, re-fit the poses, and
        # compare the cost increase (in chi-square units over all pixels) with what noise allows
        P0 = make_problem(mom_, noise_scale, correct=False)
        R0_, t0_, k0_, *_ = _lm(Rcw, tcw, kap, P0, max_iter=30, tol=1e-14)
        c0 = float(_total_cost(R0_, t0_, k0_, P0))
        Pfix = dataclasses.replace(P0, fixed_K=True, T=torch.zeros(4, 0, dtype=_F64, device=dev))
        n_px = float(valid.reshape(F, -1).sum(1).to(_F64).mean())
        s2_floor = float(((1e-6 * sig) ** 2).mean())
        s2 = max(float((noise_scale**2).mean()), s2_floor)
        dchi2 = float("inf")
        for factor in (0.7, 1.4):
            kf = k0_.clone()
            kf[:, :2] = kf[:, :2] / factor
            Rf, tf_, kf2, *_ = _lm(R0_, t0_, kf, Pfix, max_iter=40, tol=1e-14)
            dchi2 = min(dchi2, (float(_total_cost(Rf, tf_, kf2, Pfix)) - c0) * n_px / s2)
        if dchi2 < 100:
            raise GeometryError(
                "the focal length (intrinsics) cannot be determined from these points: a focal length 30-40 % "
                "different fits them about as well (the map behaves like a plane facing the camera or an "
                "orthographic view). Pass a known K (fit_cameras(..., K=...)), or use frames with depth variation."
            )
        P_ = make_problem(mom_, noise_scale)
        Hn, _, _ = _normal_equations(Rcw, tcw, kap, P_)
        n6 = 6 * F
        Hpp, Hpk, Hkk = Hn[:n6, :n6], Hn[:n6, n6:], Hn[n6:, n6:]
        S = Hkk - Hpk.T @ torch.linalg.solve(Hpp + 1e-12 * Hpp.diagonal().mean() * torch.eye(n6, dtype=_F64, device=dev), Hpk)
        ratio = float((S.diagonal() / Hkk.diagonal().clamp_min(1e-300)).min())
        rel_std = rel_bias = 0.0
        beta = float(kap[:, :2].abs().mean())
        if ratio > 1e-9:
            Sinv = torch.linalg.inv(S)
            n_px = float(valid.reshape(F, -1).sum(1).to(_F64).mean())
            var = float((noise_scale**2).mean()) / n_px * Sinv.diagonal().clamp_min(0)
            rel_std = float(var.sqrt().max()) / beta
            P_.ncorr = fac_noise(noise_scale) * noise_scale**2 / float(P_.sig[0] ** 2 / P_.cf[0])
            _, cgrad, _ = _noise_correction(kap, P_)
            g_free = (cgrad @ Tm).sum(0) if shared_intrinsics else (cgrad @ Tm).reshape(-1)
            rel_bias = float((Sinv @ g_free).abs().max()) / beta
        if not ratio > 1e-9 or rel_std > 0.05 or rel_bias > 0.10:
            if not ratio > 1e-9:
                detail = ""
            elif rel_std > 0.05:
                detail = f" (standard error {rel_std:.0%} of the focal length)"
            else:
                detail = f" (the point noise biases it by about {rel_bias:.0%})"
            raise GeometryError(
                f"the focal length (intrinsics) cannot be determined reliably from these points{detail}: the map "
                "behaves like a plane facing the camera or an orthographic view, where many focal lengths fit about "
                "equally well. Pass a known K (fit_cameras(..., K=...)), or use frames with depth variation."
            )
        return ratio, rel_std, rel_bias

    def cameras(R_, t_, k_):
        """(K [F,3,3], cam_to_world [F,4,4]) in pixels / world units, float64."""
        bx_, by_, gx_, gy_ = k_.unbind(-1)
        K_ = torch.zeros(F, 3, 3, dtype=_F64, device=dev)
        K_[:, 0, 0], K_[:, 1, 1] = s_pix / bx_, s_pix / by_
        K_[:, 0, 2], K_[:, 1, 2] = c0x + s_pix * gx_ / bx_, c0y + s_pix * gy_ / by_
        K_[:, 2, 2] = 1.0
        T_ = torch.zeros(F, 4, 4, dtype=_F64, device=dev)
        T_[:, :3, :3] = R_.transpose(1, 2)
        T_[:, :3, 3] = mu - sig[:, None] * torch.einsum("fba,fb->fa", R_, t_)
        T_[:, 3, 3] = 1.0
        return K_, T_

    last_change = [float("inf")]
    last_problem = [None]
    last_noise = [None]
    rates = []  # observed contraction of the IRLS steps (std units), per level
    all_valid = bool(valid.all())
    # level 0: the initialisation sample grid (float64); the first pass uses the pre-filter weights.
    # Its robust weighting is the requested one, Huber when "none" is asked for: the start must
    # survive outliers either way ("none" applies from the next level on).
    robust_s = robust if robust != "none" else "huber"
    reject_s = None if outlier_threshold is None else float(outlier_threshold)
    Hs, Ws = len(si), len(sj)
    q0_s = _centred_soa(ps.reshape(F, Hs, Ws, 3), mu, vs.reshape(F, Hs, Ws), _F64)
    vs_grid, uh_grid, vh_grid = vs.reshape(F, Hs, Ws), (sj.to(_F64) - c0x) / s_pix, (si.to(_F64) - c0y) / s_pix
    run_level("sample", q0_s, vs_grid, uh_grid, vh_grid,
              8, 1e-6, _F64, robust_s, reject_s, first_weights=wk.reshape(F, Hs, Ws), max_std_step=0.3)
    timings["sample_fit"] = time.perf_counter() - t0
    _callback(callback, 2, total_steps)

    # the full grid, with invalid pixels replaced by finite values (their weight is 0)
    t0 = time.perf_counter()
    work = torch.float32  # the passes run in float32 (the outputs are float32); sums are float64
    valid_full = None if all_valid else valid
    q0 = _centred_soa(points, mu, valid_full, work)
    uh_f = (torch.arange(W, device=dev, dtype=_F64) - c0x) / s_pix
    vh_f = (torch.arange(H, device=dev, dtype=_F64) - c0y) / s_pix

    # level 1 (large images only): every st-th pixel
    N = H * W
    st_mid = int(round(math.sqrt(N / 32768)))
    if 2 <= st_mid < stride:
        pm = q0[:, :, ::st_mid, ::st_mid].contiguous()
        vm = None if all_valid else valid[:, ::st_mid, ::st_mid].contiguous()
        run_level("mid", pm, vm, uh_f[::st_mid], vh_f[::st_mid], 6, 1e-6, work, robust, reject, max_std_step=0.3)
    timings["mid_fit"] = time.perf_counter() - t0
    _callback(callback, 3, total_steps)

    # level 2: every pixel, in passes that also write the outputs; the last pass's cameras are
    # returned (consistent with its outputs) once the LM step it implies is negligible
    t0 = time.perf_counter()
    check_intrinsics(kap)
    out = {
        "depth": torch.empty(F, H, W, dtype=torch.float32, device=dev),
        "residual": torch.empty(F, H, W, dtype=torch.float32, device=dev),
        "confidence": torch.empty(F, H, W, dtype=torch.float32, device=dev),
        "points": torch.empty(F, N, 3, dtype=torch.float32, device=dev),
        "behind": torch.zeros(F, dtype=_F64, device=dev),
        "median": torch.zeros(F, dtype=_F64, device=dev),
        "rms": torch.zeros(F, dtype=_F64, device=dev),
    }
    chunk_f = max(1, int(chunk_pixels) // N)
    n_full = 0

    def output_pass(with_moments):
        _, c2w_ = cameras(Rcw, tcw, kap)
        out["c2w"] = c2w_
        return _grid_pass(q0, valid_full, uh_f, vh_f, mu, sig, Rcw, tcw, kap, robust=robust, delta=huber_delta,
                          reject=reject, dtype=work, chunk_frames=chunk_f, out=out, moments=with_moments)

    observability, focal_rel_std, focal_noise_bias = check_observability(last_noise[0])
    rate = min(max(rates[-1] if rates else 0.3, 0.05), 0.9)
    if last_change[0] < 1e-6:
        # the coarser level converged to rounding level (clean data): just write the outputs
        _, _, noise = output_pass(False)
    else:
        # one moments pass; if the IRLS contraction seen on the coarser levels predicts that the
        # remaining step is below 0.3 standard deviations, write the outputs at the new cameras;
        # otherwise iterate passes that write the outputs and verify convergence
        s1 = run_level("full", q0, valid_full, uh_f, vh_f, 1, 1e-6, work, robust, reject)
        n_full = 1
        _callback(callback, 4, total_steps)
        check_intrinsics(kap)
        if last_change[0] < 1e-6 or rate * s1 < 0.3 or int(iterations) <= 1:
            _, _, noise = output_pass(False)
        else:
            while True:
                mom, gsum, noise = output_pass(True)
                n_full += 1
                _callback(callback, 3 + n_full, total_steps)
                if n_full >= int(iterations):
                    break
                Pm = make_problem(mom, noise)
                Pm.bcorr = _gradient_correction(Rcw, tcw, kap, Pm, gsum)
                R2, t2, k2, n, maha, ndof = _lm(Rcw, tcw, kap, Pm, max_iter=20, tol=1e-14)
                lm_total += n
                chg = param_change(R2, t2, k2, Rcw, tcw, kap)
                nbar = float(mom[:, 0, 3, 3].mean())
                s2 = float((noise**2).mean())
                std_step = math.sqrt(maha * nbar / max(s2 * ndof, 1e-300)) if s2 > 0 else float("inf")
                if chg < 1e-6 or std_step < 0.3:
                    break
                Rcw, tcw, kap = R2, t2, k2
                check_intrinsics(kap)
    Kout, c2w = cameras(Rcw, tcw, kap)
    passes["full"] = n_full
    timings["full_fit"] = time.perf_counter() - t0
    behind, med_res, rms = out["behind"], out["median"], out["rms"]
    if (behind > 0.5).any():
        bad = torch.nonzero(behind > 0.5).flatten().tolist()
        raise GeometryError(
            f"most points of frame(s) {bad[:10]} end up behind the fitted camera. The map may be mirrored (flip the "
            "sign of x or y) or have z pointing backward."
        )
    if (med_res > 0.1 * sig).any():
        bad = torch.nonzero(med_res > 0.1 * sig).flatten().tolist()
        raise GeometryError(
            f"no pinhole camera explains frame(s) {bad[:10]}: the median residual is "
            f"{float((med_res / sig).max()) * 100:.1f} % of the scene scale. The points may be degenerate (e.g. all on "
            "a plane through the camera), mostly outliers, or not a perspective point map of this image grid."
        )
    timings["total"] = time.perf_counter() - t_start
    _callback(callback, total_steps, total_steps)

    info = {
        "method": "moment-LM/IRLS",
        "iterations": passes.get("full", 0),
        "passes": passes,
        "lm_iterations": lm_total,
        "rms_residual": rms.to(torch.float32).cpu(),
        "median_residual": med_res.to(torch.float32).cpu(),
        "noise_scale": noise.to(torch.float32).cpu(),
        "scale": sig.to(torch.float32).cpu(),
        "behind_fraction": behind.to(torch.float32).cpu(),
        "planar_frames": torch.nonzero(planar).flatten().tolist(),
        "intrinsics_observability": observability,
        "focal_rel_std": focal_rel_std,
        "focal_noise_bias": focal_noise_bias,
        "init_hypothesis": best.cpu().tolist(),
        "timings": timings,
        "options": dict(shared_intrinsics=shared_intrinsics, square_pixels=square_pixels,
                        centered_principal_point=centered_principal_point, robust=robust, huber_delta=huber_delta,
                        temporal_smoothness=temporal_smoothness, robust_init=robust_init, fixed_K=K is not None),
    }
    result = CameraFit(
        K=Kout.to(torch.float32),
        cam_to_world=c2w.to(torch.float32),
        depth=out["depth"],
        confidence=out["confidence"],
        residual=out["residual"],
        points=out["points"].reshape(F, H, W, 3),
        info=info,
    )
    return result


# --------------------------------------------------------------------------------------------
# the official baseline
# --------------------------------------------------------------------------------------------


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """6D rotation representation (Zhou et al. 2019) [...,6] -> [...,3,3], rows b1, b2, b3.

    Gram-Schmidt on the two 3-vectors with ``max(norm, 1e-12)`` in the divisions, the rows of the
    result being b1, b2 and b3 = b1 x b2, as in the common implementation the 4DNeX code uses
    (4dnex.md section 8).  With x = [1,0,0,1,0,0] (the official "identity") b2 is zero: degenerate.
    """
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = b2 / b2.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b3 = torch.linalg.cross(b1, b2)
    return torch.stack([b1, b2, b3], dim=-2)


def official_registration(
    points: torch.Tensor,
    iterations: int = 1500,
    lr: float = 5e-3,
    callback: Optional[Callable[[int, int], object]] = None,
) -> CameraFit:
    """The official 4DNeX post-optimisation, reimplemented as the baseline (4dnex.md section 8).

    Faithful to the description: parameters are a per-pixel depth ``d`` [F,N] initialised to
    ``||p||``, one shared (fx, fy, cx, cy) initialised to (1.2 W, 1.2 H, W/2, H/2), per-frame 6D
    rotations initialised to [1,0,0,1,0,0] (degenerate), per-frame translations initialised to 0;
    model ``X = R (max(d, 1e-4) K^-1 [u, v, 1]^T) + t`` at integer pixel coordinates; plain MSE over
    all frames, pixels and axes; Adam with lr 5e-3 for every parameter, full batch.  Runs on the
    device of ``points`` (the original is CUDA only).

    Args:
        points: [F,H,W,3] (or [H,W,3]) prepared points (see :func:`prepare_4dnex_points`).
        iterations: Adam steps (1500 in the official code).
        lr: Adam learning rate (5e-3).
        callback: ``callback(step, total)`` every 10 steps; raise or return False to cancel.

    Returns:
        :class:`CameraFit`; ``info`` has "losses" (every 100 steps), "seconds",
        "seconds_per_iteration", "seconds_per_iteration_steady" (from the third iteration on) and
        "iterations".  confidence is all ones (the official code has none).

    Raises:
        InputError: bad shapes; GeometryError: NaN/inf in the points or a non-finite loss;
        CancelledError: cancelled.
    """
    points, single = _as_points(points)
    if not torch.isfinite(points).all():
        raise GeometryError("points contain NaN/inf; the official registration has no mask. Clean the map first.")
    F, H, W, _ = points.shape
    N = H * W
    dev = points.device
    p = points.reshape(F, N, 3).to(torch.float32)
    with torch.no_grad():
        d = p.norm(dim=-1).clone()
    d.requires_grad_(True)
    fx = torch.tensor(1.2 * W, device=dev, requires_grad=True)
    fy = torch.tensor(1.2 * H, device=dev, requires_grad=True)
    cx = torch.tensor(W / 2, device=dev, requires_grad=True)
    cy = torch.tensor(H / 2, device=dev, requires_grad=True)
    rot6d = torch.eye(3, device=dev)[:, :2].reshape(-1)[None].repeat(F, 1).requires_grad_(True)  # [1,0,0,1,0,0]
    tr = torch.zeros(F, 3, device=dev, requires_grad=True)
    opt = torch.optim.Adam([d, fx, fy, cx, cy, rot6d, tr], lr=lr)
    uu = torch.arange(W, device=dev, dtype=torch.float32)[None, :].expand(H, W).reshape(-1)
    vv = torch.arange(H, device=dev, dtype=torch.float32)[:, None].expand(H, W).reshape(-1)
    losses = []
    t0 = time.perf_counter()

    def model():
        R = rotation_6d_to_matrix(rot6d)
        dirs = torch.stack([(uu - cx) / fx, (vv - cy) / fy, torch.ones_like(uu)], -1)  # K^-1 [u,v,1]
        Xc = d.clamp_min(1e-4)[..., None] * dirs[None]
        return torch.einsum("fab,fnb->fna", R, Xc) + tr[:, None, :]

    t_warm = None
    for it in range(int(iterations)):
        if it == 2:
            t_warm = time.perf_counter()  # steady state starts after two iterations (allocations)
        opt.zero_grad(set_to_none=True)
        loss = ((model() - p) ** 2).mean()
        loss.backward()
        opt.step()
        if it % 100 == 0 or it == iterations - 1:
            lv = float(loss.detach())
            losses.append((it, lv))
            if not math.isfinite(lv):
                raise GeometryError(f"the official registration diverged (loss {lv}) at step {it}.")
        if callback is not None and (it % 10 == 0 or it == iterations - 1):
            _callback(callback, it + 1, int(iterations))
    t_end = time.perf_counter()
    elapsed = t_end - t0
    steady = (t_end - t_warm) / (int(iterations) - 2) if t_warm is not None else elapsed / max(int(iterations), 1)
    with torch.no_grad():
        X = model()
        R = rotation_6d_to_matrix(rot6d)
        K = torch.zeros(F, 3, 3, device=dev)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, cx, cy, 1.0
        c2w = torch.zeros(F, 4, 4, device=dev)
        c2w[:, :3, :3] = R
        c2w[:, :3, 3] = tr
        c2w[:, 3, 3] = 1
        res = (X - p).norm(dim=-1)
    return CameraFit(
        K=K,
        cam_to_world=c2w,
        depth=d.detach().clamp_min(1e-4).reshape(F, H, W),
        confidence=torch.ones(F, H, W, device=dev),
        residual=res.reshape(F, H, W),
        points=X.reshape(F, H, W, 3),
        info={
            "method": "official-adam",
            "iterations": int(iterations),
            "losses": losses,
            "seconds": elapsed,
            "seconds_per_iteration": elapsed / max(int(iterations), 1),
            "seconds_per_iteration_steady": steady,
        },
    )
