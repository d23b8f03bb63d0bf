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

    def __post_init__(self):
        self.A = self.model.tie(self.q.shape[0], self.q.device)
        self.cf0 = self.cf
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
    r = residual_norms(P, S)
    c = (P.cf[:, None] * w * r * r).sum()
    if P.smooth > 0 and S.R.shape[0] >= 3:
        s, _ = _smooth_terms(P, S)
        c = c + P.smooth * ((_second_diff(S.R.shape[0], S.R.device) @ s) ** 2).sum()
    return c


def frame_blocks(P: Problem, S: State, w: torch.Tensor):
    """Per-frame Gauss-Newton blocks H_f [F,10,10], g_f [F,10] (w: [F,N] weights, cf included)."""
    Hs, gs = [], []
    for a in range(0, P.q.shape[0], P.chunk):
        b = a + P.chunk
        # float64: near-degenerate maps (planes) leave weak directions that float32 would lose
        r, J = jacobian(P.q[a:b], S.R[a:b], S.t[a:b], S.kap[a:b], P.uh, P.vh)
        Jw = J * (w[a:b] * P.cf[a:b, None]).repeat(1, 3)[:, None, :]
        Hs.append(Jw @ J.transpose(1, 2))
        gs.append((Jw @ r[..., None])[..., 0])
    return torch.cat(Hs), torch.cat(gs)


def arrow_blocks(P: Problem, Hf: torch.Tensor, gf: torch.Tensor):
    """(Hpp [F,6,6], Hpk [F,6,k], Hkk [k,k], gp [F,6], gk [k]) of the stacked system."""
    A = P.A
    Hpk = Hf[:, :6, 6:] @ A
    Hkk = (A.transpose(1, 2) @ Hf[:, 6:, 6:] @ A).sum(0)
    gk = (A.transpose(1, 2) @ gf[:, 6:, None]).sum(0)[:, 0]
    return Hf[:, :6, :6], Hpk, Hkk, gf[:, :6], gk


def _solve_schur(Hpp, Hpk, Hkk, gp, gk, lam):
    """Damped step (Marquardt) of the arrow system by eliminating the poses frame by frame."""
    eye6 = torch.eye(6, dtype=F64, device=Hpp.device)
    Dp = Hpp + lam * torch.diag_embed(Hpp.diagonal(dim1=-2, dim2=-1).clamp_min(1e-12)) + 1e-15 * eye6
    k = Hkk.shape[0]
    if k == 0:
        dp = torch.linalg.solve(Dp, -gp[..., None])[..., 0]
        return dp, gk.new_zeros(0)
    Dk = Hkk + lam * torch.diag(Hkk.diagonal().clamp_min(1e-12))
    Y = torch.linalg.solve(Dp, torch.cat([Hpk, gp[..., None]], -1))  # [F,6,k+1]
    S = Dk - (Hpk.transpose(1, 2) @ Y[..., :k]).sum(0)
    rhs = -gk + (Hpk.transpose(1, 2) @ Y[..., k:]).sum(0)[:, 0]
    dk = torch.linalg.solve(S, rhs)
    dp = -Y[..., k] - (Y[..., :k] @ dk[:, None])[..., 0]
    return dp, dk


def _solve_dense(P: Problem, S: State, Hpp, Hpk, Hkk, gp, gk, lam):
    """Damped step with the smoothness term (couples neighbouring poses)."""
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
    if P.smooth > 0 and F >= 3:
        s, B = _smooth_terms(P, S)
        D = _second_diff(F, dev)
        Bfull = torch.zeros(F, 12, 6 * F, dtype=F64, device=dev)
        for f in range(F):
            Bfull[f, :, 6 * f:6 * f + 6] = B[f]
        Jd = torch.einsum("gf,fan->gan", D, Bfull).reshape(-1, 6 * F)
        rd = (D @ s).reshape(-1)
        H[:6 * F, :6 * F] += P.smooth * Jd.T @ Jd
        g[:6 * F] += P.smooth * Jd.T @ rd
    d = H.diagonal().clamp_min(1e-12)
    delta = torch.linalg.solve(H + lam * torch.diag(d) + 1e-15 * torch.eye(n, dtype=F64, device=dev), -g)
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


def levenberg_marquardt(P: Problem, S: State, w: torch.Tensor, max_iter: int = 20, tol: float = 1e-12):
    """Minimise the cost at fixed weights w [F,N]; returns (state, iterations, converged)."""
    lam = 1e-4
    c0 = cost(P, S, w)
    it = 0
    converged = False
    for it in range(1, max_iter + 1):
        Hf, gf = frame_blocks(P, S, w)
        blocks = arrow_blocks(P, Hf, gf)
        accepted = False
        for _ in range(10):
            if P.smooth > 0 and S.R.shape[0] >= 3:
                dp, dk = _solve_dense(P, S, *blocks, lam)
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
        if not accepted:
            converged = True  # no decrease possible: at a minimum (to rounding)
            break
        rel = float((c0 - c2) / c0.clamp_min(1e-300))
        S, c0 = S2, c2
        lam = max(lam / 10, 1e-9)
        if rel < tol or float(dp.abs().max()) < 1e-12:
            converged = True
            break
    return S, it, converged


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
         max_rounds: int = 8, tol: float = 1e-5, first_weights: Optional[torch.Tensor] = None,  # prior weights [F,N]
        
         scale_floor: float = 1e-9, lm_iter: int = 4):
    """Iteratively re-weighted LM.  Returns (state, weights [F,N], noise scale [F] (normalised
    units), rounds, LM iterations)."""
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
        S2, n, conv = levenberg_marquardt(P, S, w, max_iter=lm_iter if rounds < max_rounds else 2 * lm_iter)
        lm_total += n
        chg = param_change(S2, S)
        S = S2
        if (chg < tol and conv) or robust == "none":
            break
    r = residual_norms(P, S)
    scale = rb.noise_scale(r, P.valid, scale_floor)
    w = rb.weights(r, P.valid, scale, robust, delta, reject)
    if first_weights is not None:
        w = w * first_weights
    return S, w, scale, rounds, lm_total
