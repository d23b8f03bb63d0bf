"""Level 2: the camera model and its residual.

Camera of frame f (world-to-camera in normalised frame coordinates q): ``X = R_f q + t_f``.
Intrinsics per frame, ``kappa_f = (log phi_x, log phi_y, p_x, p_y)`` in normalised pixel units
(``phi = focal / s``, ``p = (c - image centre) / s``), so the ray of pixel (uh, vh) is
``m = ((uh - p_x) / phi_x, (vh - p_y) / phi_y, 1)``.

Residual (paper Eq. 9 with the free per-pixel depth eliminated): the distance from X to the ray,
``r = X - (X.m / m.m) m`` (a 3-vector orthogonal to m).  It is the maximum-likelihood residual
for isotropic point noise; unlike the distance at equal depth (``(x - m_x z, y - m_y z)``), its
expected squared norm does not depend on the intrinsics, so noise does not bias the focal length
(the gradient of ``E|r|^2`` in the intrinsics vanishes at the truth).

Which intrinsics are free is an :class:`IntrinsicsModel`: one focal, a smooth zoom (the log focal
a low-degree polynomial of time: a few parameters, so a zoom is detected and fitted even in heavy
noise, where one focal per frame costs too many parameters to pass a model test), or one focal per
frame; square pixels or not; principal point at the image centre or fitted.  The free parameters ``k``
map to every frame by ``kappa_f = kappa0_f + A_f k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import F64


@dataclass(frozen=True)
class IntrinsicsModel:
    """Which intrinsics are free.  ``fixed`` = all given (a known K).  ``zoom_degree`` d > 0 (with
    ``per_frame_focal`` False): ``log focal_f = a_0 + sum_k a_k L_k(t_f)``, L_k the Legendre
    polynomials of degree 1..d and t_f the frame time mapped to [-1, 1]."""

    per_frame_focal: bool = False
    square: bool = True
    free_pp: bool = False
    fixed: bool = False
    zoom_degree: int = 0

    def name(self) -> str:
        if self.fixed:
            return "known K"
        focal = ("per-frame focal" if self.per_frame_focal else
                 f"per-frame focal (smooth zoom, degree {self.zoom_degree})" if self.zoom_degree else "shared focal")
        return (focal
                + ("" if self.square else " (fx != fy)")
                + (", fitted principal point" if self.free_pp else ", centred principal point"))

    def tie(self, F: int, device=None) -> torch.Tensor:
        """A [F,4,k]: how the k free parameters move each frame's (log phi_x, log phi_y, p_x, p_y)."""
        cols = []  # each column: [F,4]
        if not self.fixed:
            if self.per_frame_focal:
                sels = list(torch.eye(F, dtype=F64, device=device)[:, :, None])
            else:
                sels = [legendre(F, k, device)[:, None] for k in range(self.zoom_degree + 1)]
            for sel in sels:
                if self.square:
                    cols.append(sel * torch.tensor([1.0, 1.0, 0, 0], dtype=F64, device=device))
                else:
                    cols.append(sel * torch.tensor([1.0, 0, 0, 0], dtype=F64, device=device))
                    cols.append(sel * torch.tensor([0, 1.0, 0, 0], dtype=F64, device=device))
            if self.free_pp:
                one = torch.ones(F, 1, dtype=F64, device=device)
                cols.append(one * torch.tensor([0, 0, 1.0, 0], dtype=F64, device=device))
                cols.append(one * torch.tensor([0, 0, 0, 1.0], dtype=F64, device=device))
        if not cols:
            return torch.zeros(F, 4, 0, dtype=F64, device=device)
        return torch.stack(cols, -1)

    def n_params(self, F: int) -> int:
        if self.fixed:
            return 0
        nf = F if self.per_frame_focal else 1 + self.zoom_degree
        return nf * (1 if self.square else 2) + (2 if self.free_pp else 0)


def legendre(F: int, k: int, device=None) -> torch.Tensor:
    """Legendre polynomial of degree k (0-3) at the frame times mapped to [-1, 1]: [F] float64."""
    t = torch.linspace(-1, 1, F, dtype=F64, device=device)
    return [torch.ones_like(t), t, (3 * t * t - 1) / 2, (5 * t**3 - 3 * t) / 2][k]


def rays(kap: torch.Tensor, uh: torch.Tensor, vh: torch.Tensor):
    """Ray components (x_n [F,N], y_n [F,N]) of pixels (uh, vh) [N] for intrinsics kap [F,4]."""
    ix, iy = torch.exp(-kap[:, 0:1]), torch.exp(-kap[:, 1:2])
    return (uh[None] - kap[:, 2:3]) * ix, (vh[None] - kap[:, 3:4]) * iy


def _camera_points(q, R, t):
    """X = R q + t as three [F,N] arrays (structure of arrays: cheap elementwise maths)."""
    X = torch.baddbmm(t[:, :, None], R, q.transpose(1, 2))  # [F,3,N]
    return X[:, 0], X[:, 1], X[:, 2]


def residuals(q, R, t, kap, uh, vh):
    """Point-to-ray residual components (rx, ry, rz), each [F,N], and the ray depth a [F,N]
    (camera z of the ray point nearest to X).  q [F,N,3]; R [F,3,3]; t [F,3]; kap [F,4]."""
    x, y, z = _camera_points(q, R, t)
    xn, yn = rays(kap, uh, vh)
    mm = 1 + xn * xn + yn * yn
    a = (x * xn + y * yn + z) / mm
    return (x - a * xn, y - a * yn, z - a), a


def jacobian(q, R, t, kap, uh, vh, sw=None):
    """Residuals r [F,3N] and their Jacobian J [F,10,3N] (residual components stacked as
    (rx, ry, rz) blocks of N), parameters (rotation increment w applied on the left of R,
    translation increment, log phi_x, log phi_y, p_x, p_y).

    With P = I - m m^T / m.m:  dr/dw_k = P (e_k x X), dr/dtau = P,
    dr/dm = -a I - m (X - 2 a m)^T / m.m, and dm_x/dlog phi_x = -m_x, dm_x/dp_x = -1/phi_x.

    ``sw`` [F,N] (optional, >= 0): square roots of the point weights; r and J are returned
    multiplied by them (so ``J J^T`` and ``J r`` are the weighted normal equations).  r, a and
    every row but dr/dtau are linear in X, so scaling X by ``sw`` scales them: the weighting costs
    three multiplications per point instead of a pass over J.
    """
    x, y, z = _camera_points(q, R, t)
    if sw is not None:
        x, y, z = x * sw, y * sw, z * sw
    xn, yn = rays(kap, uh, vh)
    mm = 1 + xn * xn + yn * yn
    a = (x * xn + y * yn + z) / mm
    F, N = x.shape
    r = torch.stack([x - a * xn, y - a * yn, z - a], 1)  # [F,3,N], in the input dtype
    J = x.new_empty(F, 10, 3, N)

    def proj(k, vx, vy, vz):  # J[:, k] = P v = v - m (m.v) / mm
        s = (xn * vx + yn * vy + vz) / mm
        J[:, k, 0] = vx - xn * s
        J[:, k, 1] = vy - yn * s
        J[:, k, 2] = vz - s

    o = torch.zeros_like(x)
    proj(0, o, -z, y)  # e_0 x X
    proj(1, z, o, -x)  # e_1 x X
    proj(2, -y, x, o)  # e_2 x X
    ixm, iym, im = xn / mm, yn / mm, 1 / mm
    J[:, 3, 0], J[:, 3, 1], J[:, 3, 2] = 1 - xn * ixm, -yn * ixm, -ixm
    J[:, 4, 0], J[:, 4, 1], J[:, 4, 2] = -xn * iym, 1 - yn * iym, -iym
    J[:, 5, 0], J[:, 5, 1], J[:, 5, 2] = -ixm, -iym, 1 - im
    if sw is not None:
        J[:, 3:6].mul_(sw[:, None, None])
    gx = (x - 2 * a * xn) * im
    gy = (y - 2 * a * yn) * im
    dxn = (-a - xn * gx, -yn * gx, -gx)  # dr/dx_n
    dyn = (-xn * gy, -a - yn * gy, -gy)  # dr/dy_n
    ix, iy = torch.exp(-kap[:, 0:1]), torch.exp(-kap[:, 1:2])
    for c in range(3):
        J[:, 6, c] = -xn * dxn[c]
        J[:, 7, c] = -yn * dyn[c]
        J[:, 8, c] = -ix * dxn[c]
        J[:, 9, c] = -iy * dyn[c]
    return r.reshape(F, 3 * N), J.reshape(F, 10, 3 * N)


def kappa_from_K(K: torch.Tensor, s: float, c0x: float, c0y: float) -> torch.Tensor:
    """[F,4] normalised intrinsics from pixel K [F,3,3] (zero skew)."""
    return torch.stack([torch.log(K[:, 0, 0] / s), torch.log(K[:, 1, 1] / s), (K[:, 0, 2] - c0x) / s,
                        (K[:, 1, 2] - c0y) / s], -1)


def K_from_kappa(kap: torch.Tensor, s: float, c0x: float, c0y: float) -> torch.Tensor:
    """Pixel K [F,3,3] (float64) from normalised intrinsics [F,4]."""
    F = kap.shape[0]
    K = torch.zeros(F, 3, 3, dtype=F64, device=kap.device)
    K[:, 0, 0], K[:, 1, 1] = s * torch.exp(kap[:, 0]), s * torch.exp(kap[:, 1])
    K[:, 0, 2], K[:, 1, 2] = c0x + s * kap[:, 2], c0y + s * kap[:, 3]
    K[:, 2, 2] = 1.0
    return K
