"""Level 3: refinement.  Levenberg-Marquardt on the point-to-ray residuals, inside IRLS.

The cost at fixed weights is ``sum_f c_f sum_i w_fi |r_fi|^2`` plus an optional temporal
smoothness term.  ``c_f = sig_f^2 / n * (s / s_f)^2``: world units per pixel, times the inverse
noise variance of the frame (its noise scale ``s_f`` in world units, re-estimated every IRLS
round, over the median ``s`` of the frames).  So every frame counts by its information
(chi-square units: maximum likelihood when the noise differs between frames, e.g. later frames
of a video model), and the fit is invariant to a per-frame similarity (scale and translation) of
the maps, the per-frame re-centring of 4DNeX output.  The normal equations have an arrow
structure: a 6x6 block per frame (its pose) and a small dense block for the free intrinsics;
without smoothness the poses are eliminated frame by frame (Schur complement), so a step costs
O(F) (plus O(k^3) for k free intrinsics).  With smoothness the system is solved densely.

IRLS (Hartley & Zisserman sec. A6.8): residuals -> per-frame noise scale -> weights -> LM at
fixed weights -> repeat until the cameras stop moving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from . import robust as rb
from .data import F64
from .model import IntrinsicsModel, jacobian, residuals
from .rotation import exp_so3, skew


#: a change of the loss below this many chi-square units is "no change" (a parameter move of
#: about a tenth of its standard error)
CHI2_TOL = 0.01


@dataclass
class State:
    """Cameras in normalised coordinates: R [F,3,3], t [F,3] (world-to-camera), kap [F,4]."""

    R: torch.Tensor
    t: torch.Tensor
    kap: torch.Tensor

    def copy(self) -> "State":
        return State(self.R.clone(), self.t.clone(), self.kap.clone())


@dataclass
class Problem:
    """A weighted least-squares problem on sampled points (everything float64).

    q [F,N,3], valid [F,N], uh/vh [N]; cf [F] cost factors; model; smoothness weight and the
    frame normalisation (mu [F,3], sig [F]) it needs to express camera centres in world units.
    Derived: A [F,4,k] (the model's tie of its parameters to each frame's intrinsics), cf0, and
    D [F-2,F] (second differences in time; None without smoothness).
    """

    q: torch.Tensor
    valid: torch.Tensor
    uh: torch.Tensor
    vh: torch.Tensor
    cf: torch.Tensor
    model: IntrinsicsModel
    mu: torch.Tensor
    sig: torch.Tensor
    smooth: float = 0.0
    chunk: int = 0  # frames per Jacobian chunk; 0: as many as fit in ~0.6 M floats (a few MB: cache-sized)
    A: torch.Tensor = field(init=False)
    cf0: torch.Tensor = field(init=False)  # cf without the per-frame noise factor

    D: Optional[torch.Tensor] = field(init=False)  # [F-2,F] second differences (smoothness only)

    def __post_init__(self):
        F = self.q.shape[0]
        self.A = self.model.tie(F, self.q.device)
        self.cf0 = self.cf
        self.D = _second_diff(F, self.q.device) if self.smooth > 0 and F >= 3 else None
        if self.chunk <= 0:
            # the Jacobian of a chunk stays in the L2 cache and its buffers are reused by the
            # allocator (large ones are fresh pages every call): ~1.7x faster than one big chunk
            self.chunk = max(1, 600_000 // (30 * self.q.shape[1]))


def residual_norms(P: Problem, S: State) -> torch.Tensor:
    """|r| [F,N] in normalised units (0 at invalid points)."""
    out = []
    for a in range(0, P.q.shape[0], P.chunk):
        b = a + P.chunk
        (rx, ry, rz), _ = residuals(P.q[a:b], S.R[a:b], S.t[a:b], S.kap[a:b], P.uh, P.vh)
        out.append(torch.sqrt(rx * rx + ry * ry + rz * rz))
    return torch.where(P.valid, torch.cat(out), torch.zeros_like(P.valid, dtype=F64))


def _smooth_terms(P: Problem, S: State):
    """Stacked smoothness state s_f = [rho vec(R_f), c_f] [F,12] and its Jacobian [F,12,6]."""
    F = S.R.shape[0]
    rho = float(P.sig.mean())
    c = P.mu - P.sig[:, None] * torch.einsum("fba,fb->fa", S.R, S.t)
    s = torch.cat([rho * S.R.reshape(F, 9), c], -1)
    G = skew(torch.eye(3, dtype=F64, device=S.R.device))  # G[k] = [e_k]_x
    dR = torch.einsum("kab,fbc->fkac", G, S.R).reshape(F, 3, 9).transpose(1, 2) * rho
    B = S.R.new_zeros(F, 12, 6)
    B[:, :9, :3] = dR
    B[:, 9:, 3:] = -P.sig[:, None, None] * S.R.transpose(1, 2)
    return s, B


def _second_diff(F, device):
    D = torch.zeros(F - 2, F, dtype=F64, device=device)
    i = torch.arange(F - 2, device=device)
    D[i, i], D[i, i + 1], D[i, i + 2] = 1.0, -2.0, 1.0
    return D


def cost(P: Problem, S: State, w: torch.Tensor) -> torch.Tensor:
    """The weighted least-squares objective (0-d float64): ``sum_f cf_f sum_n w_fn |r_fn|^2`` over
    point-to-ray residuals ``r`` [F,N] (normalised units, :func:`residual_norms`) with IRLS weights
    ``w`` [F,N], plus ``P.smooth`` times the squared second differences of the poses over time."""
    return cost_from_norms(P, S, w, residual_norms(P, S))


def cost_from_norms(P: Problem, S: State, w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """:func:`cost` from already computed residual norms ``r`` [F,N] of the state ``S``."""
    c = (P.cf[:, None] * w * r * r).sum()
    if P.D is not None:
        s, _ = _smooth_terms(P, S)
        c = c + P.smooth * ((P.D @ s) ** 2).sum()
    return c


def frame_blocks(P: Problem, S: State, w: torch.Tensor):
    """Per-frame Gauss-Newton blocks H_f [F,10,10], g_f [F,10] (w: [F,N] weights, cf included)."""
    Hs, gs = [], []
    for a in range(0, P.q.shape[0], P.chunk):
        b = a + P.chunk
        # float64: near-degenerate maps (planes) leave weak directions that float32 would lose
        sw = torch.sqrt(w[a:b] * P.cf[a:b, None])
        r, J = jacobian(P.q[a:b], S.R[a:b], S.t[a:b], S.kap[a:b], P.uh, P.vh, sw)  # both times sqrt(w cf)
        Hs.append(J @ J.transpose(1, 2))
        gs.append((J @ r[..., None])[..., 0])
    return torch.cat(Hs), torch.cat(gs)


def arrow_blocks(P: Problem, Hf: torch.Tensor, gf: torch.Tensor):
    """(Hpp [F,6,6], Hpk [F,6,k], Hkk [k,k], gp [F,6], gk [k]) of the stacked system."""
    A = P.A
    Hpk = Hf[:, :6, 6:] @ A
    Hkk = (A.transpose(1, 2) @ Hf[:, 6:, 6:] @ A).sum(0)
    gk = (A.transpose(1, 2) @ gf[:, 6:, None]).sum(0)[:, 0]
    return Hf[:, :6, :6], Hpk, Hkk, gf[:, :6], gk


def schur_complement(Hpp, Hpk, Hkk, gp, gk):
    """Eliminate the poses from the arrow system ``[[Hpp, Hpk], [Hpk^T, Hkk]] [dp; dk] = -[gp; gk]``
    frame by frame.  Hpp [F,6,6], Hpk [F,6,k], Hkk [k,k], gp [F,6], gk [k].

    Returns ``Y`` [F,6,k+1] (``Hpp^-1 [Hpk, gp]``), the reduced matrix ``Sk = Hkk - sum_f Hpk^T
    Hpp^-1 Hpk`` [k,k] and gradient ``rk = gk - sum_f Hpk^T Hpp^-1 gp`` [k] (float64).  Then
    ``dk = -Sk^-1 rk`` and ``dp = -Y[..., k] - Y[..., :k] dk``.  (Triggs et al., Bundle Adjustment
    - A Modern Synthesis, sec. 6.1.)
    """
    k = Hkk.shape[0]
    Y = torch.linalg.solve(Hpp, torch.cat([Hpk, gp[..., None]], -1))
    HpkT = Hpk.transpose(1, 2)
    Sk = Hkk - (HpkT @ Y[..., :k]).sum(0)
    rk = gk - (HpkT @ Y[..., k:]).sum(0)[:, 0]
    return Y, Sk, rk


def _solve_schur(Hpp, Hpk, Hkk, gp, gk, lam):
    """Damped step (Marquardt) of the arrow system by eliminating the poses frame by frame."""
    eye6 = torch.eye(6, dtype=F64, device=Hpp.device)
    Dp = Hpp + lam * torch.diag_embed(Hpp.diagonal(dim1=-2, dim2=-1).clamp_min(1e-12)) + 1e-15 * eye6
    k = Hkk.shape[0]
    if k == 0:
        dp = torch.linalg.solve(Dp, -gp[..., None])[..., 0]
        return dp, gk.new_zeros(0)
    Dk = Hkk + lam * torch.diag(Hkk.diagonal().clamp_min(1e-12))
    Y, Sk, rk = schur_complement(Dp, Hpk, Dk, gp, gk)
    dk = torch.linalg.solve(Sk, -rk)
    dp = -Y[..., k] - (Y[..., :k] @ dk[:, None])[..., 0]
    return dp, dk


def _dense_system(P: Problem, S: State, Hpp, Hpk, Hkk, gp, gk):
    """The full (undamped) normal equations H [n,n], g [n] (n = 6F + k) with the smoothness term,
    which couples neighbouring poses."""
    F, k = Hpp.shape[0], Hkk.shape[0]
    n = 6 * F + k
    dev = Hpp.device
    H = torch.zeros(n, n, dtype=F64, device=dev)
    g = torch.zeros(n, dtype=F64, device=dev)
    pidx = 6 * torch.arange(F, device=dev)[:, None] + torch.arange(6, device=dev)[None]
    H[pidx[:, :, None], pidx[:, None, :]] = Hpp
    g[pidx] = gp
    if k:
        kk = 6 * F + torch.arange(k, device=dev)
        H[pidx.reshape(-1)[:, None], kk[None]] = Hpk.reshape(6 * F, k)
        H[kk[:, None], pidx.reshape(-1)[None]] = Hpk.reshape(6 * F, k).T
        H[kk[:, None], kk[None]] = Hkk
        g[kk] = gk
    if P.D is not None:
        s, B = _smooth_terms(P, S)
        Bfull = torch.zeros(F, 12, 6 * F, dtype=F64, device=dev)
        for f in range(F):
            Bfull[f, :, 6 * f:6 * f + 6] = B[f]
        Jd = torch.einsum("gf,fan->gan", P.D, Bfull).reshape(-1, 6 * F)
        rd = (P.D @ s).reshape(-1)
        H[:6 * F, :6 * F] += P.smooth * Jd.T @ Jd
        g[:6 * F] += P.smooth * Jd.T @ rd
    return H, g


def _solve_dense(H, g, F, lam):
    """Damped step (Marquardt) of the dense system from :func:`_dense_system`."""
    d = H.diagonal().clamp_min(1e-12)
    n = H.shape[0]
    delta = torch.linalg.solve(H + lam * torch.diag(d) + 1e-15 * torch.eye(n, dtype=F64, device=H.device), -g)
    return delta[:6 * F].reshape(F, 6), delta[6 * F:]


def apply_step(P: Problem, S: State, dp: torch.Tensor, dk: torch.Tensor) -> State:
    """A new state after one LM step: poses ``dp`` [F,6] (rotation increment applied on the left,
    radians; translation increment, normalised units) and intrinsics ``dk`` [k] (the model's
    parameters, :class:`~.model.IntrinsicsModel`), float64. ``S`` is left unchanged."""
    E = exp_so3(dp[:, :3])
    R = E @ S.R
    t = torch.einsum("fab,fb->fa", E, S.t) + dp[:, 3:]
    kap = S.kap + (P.A @ dk[:, None])[..., 0] if dk.numel() else S.kap
    return State(R, t, kap)


def levenberg_marquardt(P: Problem, S: State, w: torch.Tensor, max_iter: int = 20, tol: float = 1e-12,
                        abs_tol: float = 0.0, c0: Optional[torch.Tensor] = None):
    """Minimise the cost at fixed weights w [F,N]; returns (state, iterations, converged, cost
    decrease).  ``c0``: the cost of ``S`` if already known.

    Stops when no step lowers the cost, after ``max_iter`` iterations, when an iteration lowers
    the cost by less than ``tol`` relative or moves no parameter by 1e-12, or when an undamped
    step (damping at most 1e-4, accepted at the first try) lowers it by less than ``abs_tol`` (cost units; :func:`irls` passes a hundredth of a
    chi-square unit: near the minimum Gauss-Newton converges quadratically, so the decrease
    still possible is far smaller, a parameter change of a few hundredths of a standard error).
    """
    lam = 1e-4
    c0 = cost(P, S, w) if c0 is None else c0
    c_first = float(c0)
    it = 0
    converged = False
    for it in range(1, max_iter + 1):
        Hf, gf = frame_blocks(P, S, w)
        blocks = arrow_blocks(P, Hf, gf)
        dense = _dense_system(P, S, *blocks) if P.D is not None else None  # once, then damped per try
        accepted = False
        for tries in range(10):
            if dense is not None:
                dp, dk = _solve_dense(*dense, S.R.shape[0], lam)
            else:
                dp, dk = _solve_schur(*blocks, lam)
            if not (torch.isfinite(dp).all() and torch.isfinite(dk).all()):
                lam *= 10
                continue
            S2 = apply_step(P, S, dp, dk)
            c2 = cost(P, S2, w)
            if torch.isfinite(c2) and c2 <= c0:
                accepted = True
                break
            lam *= 10
        undamped = tries == 0 and lam <= 1e-4  # a (nearly) Gauss-Newton step, accepted at once
        if not accepted:
            converged = True  # no decrease possible: at a minimum (to rounding)
            break
        dec = float(c0 - c2)
        rel = dec / max(float(c0), 1e-300)
        S, c0 = S2, c2
        lam = max(lam / 10, 1e-9)
        if rel < tol or float(dp.abs().max()) < 1e-12 or (undamped and dec < abs_tol):
            converged = True
            break
    return S, it, converged, c_first - float(c0)


def set_frame_factors(P: Problem, scale: torch.Tensor) -> None:
    """``P.cf = cf0 * (s / s_f)^2`` for noise scales ``scale`` [F] (normalised units): each frame
    weighted by its inverse noise variance (see the module docstring)."""
    noise = scale * P.sig
    P.cf = P.cf0 * (torch.median(noise) / noise) ** 2


def param_change(Sa: State, Sb: State) -> float:
    """Largest change of rotation (chordal), camera centre and log focal / principal point."""
    dR = float(torch.linalg.matrix_norm(Sa.R - Sb.R).max())
    ca = -torch.einsum("fba,fb->fa", Sa.R, Sa.t)
    cb = -torch.einsum("fba,fb->fa", Sb.R, Sb.t)
    return max(dR, float((ca - cb).norm(dim=-1).max()), float((Sa.kap - Sb.kap).abs().max()))


def irls(P: Problem, S: State, *, robust: str, delta: Optional[torch.Tensor], reject: Optional[float],
         max_rounds: int = 8, tol: float = 1e-5, first_weights: Optional[torch.Tensor] = None,
         scale_floor: float = 1e-9, lm_iter: int = 4):
    """Iteratively re-weighted LM.  Returns (state, weights [F,N], noise scale [F] (normalised
    units), rounds, LM iterations).

    ``first_weights`` [F,N]: prior weights multiplied into every round's (the neighbour test).
    A round ends when LM converges (:func:`levenberg_marquardt`, to ``CHI2_TOL`` chi-square
    units); the loop ends, once LM has converged, when the cameras moved by less than ``tol``
    (normalised units) or the round lowered the loss by less than ``CHI2_TOL`` chi-square units
    (the new weights changed nothing that matters); else after ``max_rounds``, or at once for
    ``robust="none"``.
    """
    lm_total = 0
    w = None
    scale = None
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        r = residual_norms(P, S)
        scale = rb.noise_scale(r, P.valid, scale_floor)
        set_frame_factors(P, scale)
        w = rb.weights(r, P.valid, scale, robust, delta, reject)
        if first_weights is not None:  # prior weights (the neighbour test), every round
            w = w * first_weights
        # cost per chi-square unit: cf_f scale_f^2 is the same for every frame (set_frame_factors)
        chi2_unit = float((P.cf * scale**2).mean())
        S2, n, conv, dec = levenberg_marquardt(P, S, w, max_iter=lm_iter if rounds < max_rounds else 2 * lm_iter,
                                               abs_tol=CHI2_TOL * chi2_unit, c0=cost_from_norms(P, S, w, r))
        lm_total += n
        chg = param_change(S2, S)
        small = conv and dec < CHI2_TOL * chi2_unit
        S = S2
        if (chg < tol and conv) or small or robust == "none":
            break
    r = residual_norms(P, S)
    scale = rb.noise_scale(r, P.valid, scale_floor)
    w = rb.weights(r, P.valid, scale, robust, delta, reject)
    if first_weights is not None:
        w = w * first_weights
    return S, w, scale, rounds, lm_total
