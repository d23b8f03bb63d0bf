"""Rotation helpers shared by the solver, the synthetic generators and the benchmarks.

One home for the exponential map (Rodrigues' formula), the cross-product matrix, the projection
of a 3x3 matrix on SO(3), the RQ decomposition of a camera matrix and the geodesic angle between
rotations.  All functions are batched over leading dimensions and keep the input dtype.
"""

from __future__ import annotations

import math

import torch

__all__ = ["skew", "exp_so3", "project_to_so3", "rq3", "rotation_angle_deg"]


def skew(w: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices [...,3,3] of vectors [...,3]: ``skew(w) @ x == cross(w, x)``."""
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*w.shape[:-1], 3, 3)


def exp_so3(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [...,3,3] from rotation vectors [...,3] (radians; Rodrigues' formula).

    ``exp([w]x) = I + sin(t)/t [w]x + (1 - cos t)/t^2 [w]x^2`` with ``t = |w|``; a Taylor series
    below t = 1e-6 keeps it exact in float64 near the identity.
    """
    t2 = (w * w).sum(-1)[..., None, None]
    t = t2.sqrt()
    small = t2 < 1e-12
    a = torch.where(small, 1 - t2 / 6, torch.sin(t) / t.clamp_min(1e-30))
    b = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(t)) / t2.clamp_min(1e-30))
    S = skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a * S + b * (S @ S)


def project_to_so3(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation [...,3,3] (Frobenius norm) to matrices M [...,3,3], via the SVD."""
    U, _, Vh = torch.linalg.svd(M)
    d = torch.linalg.det(U @ Vh)
    D = torch.ones_like(M[..., 0])
    D[..., 2] = torch.sign(d).where(d != 0, torch.ones_like(d))
    return U @ torch.diag_embed(D) @ Vh


def rq3(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RQ decomposition ``M = K R`` of [...,3,3]: K upper triangular with a positive diagonal,
    R orthogonal (det R = sign det M).  Hartley & Zisserman, Multiple View Geometry, sec. A4.1.1."""
    flip = torch.flip(torch.eye(3, dtype=M.dtype, device=M.device), dims=[0])
    Q, Rr = torch.linalg.qr((flip @ M).transpose(-1, -2))
    K = flip @ Rr.transpose(-1, -2) @ flip
    R = flip @ Q.transpose(-1, -2)
    dg = K.diagonal(dim1=-2, dim2=-1)
    D = torch.diag_embed(torch.where(dg < 0, -torch.ones_like(dg), torch.ones_like(dg)))
    return K @ D, D @ R


def rotation_angle_deg(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in degrees between rotation matrices [...,3,3] (float64 result).

    Uses ``||Ra - Rb||_F = 2 sqrt(2) sin(angle / 2)``, accurate for small angles (unlike the
    arccosine of the trace).
    """
    Ra, Rb = Ra.to(torch.float64), Rb.to(torch.float64)
    chord = torch.linalg.matrix_norm(Ra - Rb) / (2 * math.sqrt(2))
    return torch.rad2deg(2 * torch.asin(chord.clamp(0.0, 1.0)))
