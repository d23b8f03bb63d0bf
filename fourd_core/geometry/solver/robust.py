"""Level 1: robust statistics.  Noise scale from residuals, IRLS weights of the robust M-estimators.

Residuals here are point-to-ray distances ``|r|`` (see :mod:`.model`): for isotropic Gaussian
point noise of std sigma per coordinate, ``r`` is the noise projected on the plane orthogonal to
the ray, so ``|r|`` is Rayleigh distributed with scale sigma whatever the camera (median
``sqrt(2 ln 2) sigma``).  Weights follow the usual M-estimators (Huber, Cauchy, Tukey; Hartley &
Zisserman, Multiple View Geometry, sec. A6.8) with the standard 95 %-efficiency tuning constants.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

RAYLEIGH_MEDIAN = math.sqrt(2 * math.log(2))  # median of |n| for n ~ N(0, I_2): 1.1774
TUNING = {"huber": 2.0, "cauchy": 2.385, "tukey": 4.685}
ROBUST = ("auto", "huber", "cauchy", "tukey", "none")
#: "auto": Huber (convex: a safe start), then Tukey (redescending: gross outliers get weight 0, so
#: they do not bias the cameras) at the fine level when more than this fraction of the residuals
#: are gross (beyond 4 noise scales: 0.03 % of Gaussian noise)
AUTO_GROSS_FRACTION = 0.01
AUTO_GROSS_SCALES = 4.0


def gross_fraction(r: torch.Tensor, valid: torch.Tensor, scale: torch.Tensor) -> float:
    """Fraction of valid residual norms r [F,N] beyond ``AUTO_GROSS_SCALES`` noise scales [F]."""
    gross = (r > AUTO_GROSS_SCALES * scale[:, None]) & valid
    return float(gross.sum()) / max(int(valid.sum()), 1)


def noise_scale(r: torch.Tensor, valid: torch.Tensor, floor: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-frame noise std per coordinate [F] from residual norms r [F,N] (median / 1.1774)."""
    rr = torch.where(valid, r, torch.nan)
    if rr.shape[1] > 200_000:
        rr = rr[:, :: rr.shape[1] // 100_000]
    s = torch.nanmedian(rr, dim=1).values / RAYLEIGH_MEDIAN
    return torch.maximum(s, torch.as_tensor(floor, dtype=s.dtype, device=s.device))


def weights(r: torch.Tensor, valid: torch.Tensor, scale: torch.Tensor, robust: str,
            delta: Optional[torch.Tensor] = None, reject: Optional[float] = None) -> torch.Tensor:
    """IRLS weights in [0, 1] for residual norms r [F,N], noise scales [F].

    ``delta`` [F] overrides the threshold (default ``TUNING[robust] * scale``); residuals beyond
    ``reject * scale`` get weight 0 (gross outliers).
    """
    vf = valid.to(r.dtype)
    if robust == "none":
        return vf
    c = (TUNING[robust] * scale if delta is None else delta)[:, None]
    x = r / c
    if robust == "huber":
        w = torch.where(x <= 1, torch.ones_like(x), 1 / x.clamp_min(1e-300))
    elif robust == "cauchy":
        w = 1 / (1 + x * x)
    else:  # tukey
        w = (1 - x * x).clamp_min(0) ** 2
    if reject is not None:
        w = torch.where(r <= reject * scale[:, None], w, torch.zeros_like(w))
    return w * vf
