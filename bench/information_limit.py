"""The information limit (Cramer-Rao bound) of the focal length on a generated scene.

Independent of the solver: the residual is written out here (point-to-ray distance in world
units, the maximum-likelihood residual for isotropic Gaussian point noise with a free depth per
pixel) and differentiated by central finite differences at the generator's ground truth.  The
Fisher information ``J^T J / sigma^2`` of every frame's pose (6) and the shared intrinsics
(log f, cx, cy), with the poses eliminated frame by frame (Schur complement), gives the smallest
standard error any unbiased estimator of the focal can reach on that scene's pixels: with the
principal point fitted, and with it known (given at its true value).

Used by ``bench/bench_registration.py``; the 0.5 % noise target (focal error < 0.1 % on every
scene) is compared with these numbers there.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def _skew(w):
    o = torch.zeros_like(w[..., 0])
    x, y, z = w.unbind(-1)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*w.shape[:-1], 3, 3)


def _residual(P, R, C, f, cx, cy, u, v):
    """Point-to-ray residual [F,N,3] of world points P [F,N,3] for cam-to-world R [F,3,3],
    centres C [F,3], focal f, principal point (cx, cy) and pixels u, v [N]."""
    X = torch.einsum("fba,fnb->fna", R, P - C[:, None])  # camera coordinates
    m = torch.stack([(u - cx) / f, (v - cy) / f, torch.ones_like(u)], -1)  # [N,3]
    a = (X * m).sum(-1, keepdim=True) / (m * m).sum(-1, keepdim=True)
    return X - a * m


def focal_crlb(clean_points: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor, noise: float,
               stride: int = 1) -> tuple[float, float]:
    """Relative standard errors of the focal (fitted principal point, known principal point).

    clean_points [F,H,W,3], K [F,3,3] (one shared K), cam_to_world [F,4,4]: a scene's ground
    truth; ``noise`` the std per coordinate of the point noise (same units); ``stride`` thins the
    pixel grid (1 = every pixel, as the solver uses at 60x90).
    """
    F, H, W, _ = clean_points.shape
    ii, jj = torch.meshgrid(torch.arange(0, H, stride), torch.arange(0, W, stride), indexing="ij")
    u, v = jj.reshape(-1).to(F64), ii.reshape(-1).to(F64)
    P = clean_points[:, ii.reshape(-1), jj.reshape(-1)].to(F64)
    R0, C0 = cam_to_world[:, :3, :3].to(F64), cam_to_world[:, :3, 3].to(F64)
    f0, cx0, cy0 = float(K[0, 0, 0]), float(K[0, 0, 2]), float(K[0, 1, 2])
    eps = 1e-5

    def res(dpose, dk):  # dpose [F,6] (rotation vector on the right of R, centre), dk [3]
        R = R0 @ torch.linalg.matrix_exp(_skew(dpose[:, :3]))
        return _residual(P, R, C0 + dpose[:, 3:], f0 * math.exp(float(dk[0])), cx0 + float(dk[1]),
                         cy0 + float(dk[2]), u, v).reshape(F, -1)

    z6, z3 = torch.zeros(F, 6, dtype=F64), torch.zeros(3, dtype=F64)
    Jp = []
    for k in range(6):
        d = z6.clone()
        d[:, k] = eps
        Jp.append((res(d, z3) - res(-d, z3)) / (2 * eps))
    Jp = torch.stack(Jp, -1)  # [F,M,6] (each frame's residual depends on its own pose only)
    Jk = []
    for k in range(3):
        d = z3.clone()
        d[k] = eps
        Jk.append((res(z6, d) - res(z6, -d)) / (2 * eps))
    Jk = torch.stack(Jk, -1)  # [F,M,3]
    Hpp, Hpk, Hkk = Jp.transpose(1, 2) @ Jp, Jp.transpose(1, 2) @ Jk, (Jk.transpose(1, 2) @ Jk).sum(0)
    S = Hkk - (Hpk.transpose(1, 2) @ torch.linalg.solve(Hpp, Hpk)).sum(0)  # [3,3], poses eliminated
    s2 = noise**2
    fitted = math.sqrt(float(torch.linalg.inv(S)[0, 0]) * s2)
    known = math.sqrt(s2 / float(S[0, 0]))
    return fitted, known


def prob_within(bound: float, std: float) -> float:
    """P(|e| < bound) for e ~ N(0, std^2): the chance an efficient estimator meets the bound."""
    return math.erf(bound / (std * math.sqrt(2)))
