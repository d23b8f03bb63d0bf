"""Level 4: what the data can tell.  Model-selection tests, uncertainty, the focal profile.

* **Model selection** (BIC, Schwarz 1978): a richer intrinsics model (fitted principal point,
  one focal per frame) is chosen when it lowers the robust loss, in chi-square units, by more than
  ``k ln n`` for k extra parameters and n residuals; otherwise the simpler one is kept.
* **Uncertainty**: the Gauss-Newton Hessian in chi-square units (weights / sigma^2), the poses
  marginalised frame by frame (Schur complement), gives the standard errors of the focal
  lengths, the principal point and every frame's rotation.
* **Profile test**: the loss increase when the focal is forced away from its fitted value and
  the poses are re-fitted (:func:`focal_profile`).

What the solver does with these numbers (warn or raise) is in :mod:`.honesty`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .data import F64
from .refine import Problem, State, arrow_blocks, frame_blocks, schur_complement


def prefer_richer(loss_simple: float, loss_rich: float, extra_params: int, n_residuals: int) -> tuple[bool, float]:
    """BIC test: (choose the richer model?, loss decrease in units of the penalty)."""
    pen = extra_params * math.log(max(n_residuals, 2))
    return (loss_simple - loss_rich) > pen, (loss_simple - loss_rich) / pen


def score_statistic(P_rich: Problem, S: State, w: torch.Tensor, scale: torch.Tensor) -> float:
    """Lagrange-multiplier (score) statistic of a richer model at the simpler model's optimum.

    ``P_rich`` is the problem with the richer intrinsics model, ``S`` the state fitted with the
    simpler one (its extra parameters at their nested values).  In chi-square units (weights w /
    sigma^2) the Gauss-Newton step from S predicts a loss decrease ``g^T H^-1 g``: what fitting the
    richer model would gain, without fitting it.  (Rao 1948; the usual test for nested models.)
    """
    wc = w / (P_rich.cf[:, None] * scale[:, None] ** 2)
    Hf, gf = frame_blocks(P_rich, S, wc)
    Hpp, Hpk, Hkk, gp, gk = arrow_blocks(P_rich, Hf, gf)
    eye6 = torch.eye(6, dtype=F64, device=Hf.device)
    Hpp = Hpp + 1e-12 * Hpp.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * eye6
    Y, Sk, rk = schur_complement(Hpp, Hpk, Hkk, gp, gk)
    k = Hkk.shape[0]
    stat = float(rk @ torch.linalg.lstsq(Sk, rk[:, None]).solution[:, 0]) + float((gp[..., None, :] @ Y[..., k:]).sum())
    return max(stat, 0.0) if math.isfinite(stat) else float("inf")


def focal_profile(P: Problem, S: State, w: torch.Tensor, scale: torch.Tensor, factors=(0.7, 1.4)) -> float:
    """Smallest loss increase (chi-square units) when the focal is forced to ``factor`` times its
    fitted value and only the poses are re-fitted (a profile-likelihood test).  Small: another
    focal explains the points as well (a plane facing the camera, an orthographic map)."""
    from .model import IntrinsicsModel
    from .refine import cost, levenberg_marquardt

    Pfix = Problem(P.q, P.valid, P.uh, P.vh, P.cf, IntrinsicsModel(fixed=True), P.mu, P.sig, P.smooth)
    wc = w / (P.cf[:, None] * scale[:, None] ** 2)  # cost() multiplies by cf: chi-square units
    c0 = float(cost(Pfix, S, wc))
    best = float("inf")
    for fac in factors:
        S2 = S.copy()
        S2.kap[:, :2] += math.log(fac)
        # wc makes the cost chi-square units: 0.1 is plenty against the threshold of 100
        S2, _, _, _ = levenberg_marquardt(Pfix, S2, wc, max_iter=15, abs_tol=0.1)
        best = min(best, float(cost(Pfix, S2, wc)) - c0)
    return best


def wald_statistic(values: torch.Tensor, cov: torch.Tensor) -> float:
    """``v^T C^-1 v``: how far (chi-square units) estimated parameters are from the nested value 0."""
    try:
        return float(values @ torch.linalg.solve(cov, values))
    except RuntimeError:
        return 0.0


@dataclass
class Uncertainty:
    """Standard errors: focal [F] (relative), principal point [F,2] (normalised units),
    rotation [F] (degrees); nan where not estimated (fixed)."""

    focal_rel: torch.Tensor
    pp: torch.Tensor
    rotation_deg: torch.Tensor
    info: dict = field(default_factory=dict)


def uncertainty(P: Problem, S: State, w: torch.Tensor, scale: torch.Tensor) -> Uncertainty:
    """Standard errors of the intrinsics and rotations (see the module docstring).

    ``w`` [F,N] IRLS weights, ``scale`` [F] noise scale (normalised units) of the fit.
    """
    F = S.R.shape[0]
    wc = w / (P.cf[:, None] * scale[:, None] ** 2)  # frame_blocks multiplies by cf
    Hf, _ = frame_blocks(P, S, wc)
    Hpp, Hpk, Hkk, _, _ = arrow_blocks(P, Hf, torch.zeros(F, 10, dtype=F64, device=Hf.device))
    eye6 = torch.eye(6, dtype=F64, device=Hf.device)
    Hpp = Hpp + 1e-12 * Hpp.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * eye6
    Hpp_inv = torch.linalg.inv(Hpp)
    k = Hkk.shape[0]
    nan = torch.full((F,), float("nan"), dtype=F64, device=Hf.device)
    if k:
        Y, Sk, _ = schur_complement(Hpp, Hpk, Hkk, torch.zeros(F, 6, dtype=F64, device=Hf.device),
                                    torch.zeros(k, dtype=F64, device=Hf.device))
        Y = Y[..., :k]  # [F,6,k] = Hpp^-1 Hpk
        ok = bool(torch.isfinite(Sk).all()) and float(torch.linalg.eigvalsh(Sk).min()) > 1e-12 * float(Hkk.diagonal().max())
        if ok:
            Ck = torch.linalg.inv(Sk)
            Ck = 0.5 * (Ck + Ck.T)
        else:
            Ck = torch.full((k, k), float("inf"), dtype=F64, device=Hf.device)
        Af = P.A  # [F,4,k]
        Ckf = Af @ Ck @ Af.transpose(1, 2)  # [F,4,4]
        focal = torch.sqrt(0.5 * (Ckf[:, 0, 0] + Ckf[:, 1, 1]).clamp_min(0))
        pp = torch.sqrt(torch.stack([Ckf[:, 2, 2], Ckf[:, 3, 3]], -1).clamp_min(0))
        if not P.model.free_pp:
            pp = torch.full((F, 2), float("nan"), dtype=F64, device=Hf.device)
        Cp = Hpp_inv + Y @ Ck @ Y.transpose(1, 2) if ok else Hpp_inv + float("inf")
    else:
        focal, pp, Cp = nan, torch.stack([nan, nan], -1), Hpp_inv
    rot = torch.rad2deg(torch.sqrt(Cp[:, :3, :3].diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0)))
    info = {}
    if k and P.model.free_pp:
        info["pp"] = (S.kap[0, 2:].clone(), Ckf[0, 2:, 2:].clone())
    return Uncertainty(focal_rel=focal, pp=pp, rotation_deg=rot, info=info)
