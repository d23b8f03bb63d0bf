"""Level 2: initialisation.  A camera per frame from robust linear hypotheses.

Per frame, on a sub-sample of about 4096 pixels (normalised coordinates, see :mod:`.data`):

1. a neighbour-distance pre-filter drops isolated gross outliers (surface points have close
   neighbours);
2. hypotheses: one weighted DLT (linear resection, 12 unknowns; Hartley & Zisserman sec. 7.1) on
   all kept points and 64 DLTs from random 8-point subsets;
3. least median of squares: each hypothesis is scored by its median residual; the best ones are
   re-fitted on their inliers (a local optimisation step, as in LO-RANSAC);
4. near-planar frames (where the DLT is degenerate) also get a homography-based camera
   (square pixels, centred principal point; Zhang's constraints on the image of the absolute conic);
5. the best camera is split into K, R, t (RQ decomposition); with one focal for the clip, every
   frame's pose is then chosen again among its hypotheses projected on the median focal, so a
   frame whose own focal is weakly determined still starts consistently.

A map whose best camera has the points behind it is a mirror image (left-handed axes): that
raises :class:`GeometryError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ...errors import GeometryError
from .data import F64, Sample, kth_smallest
from .rotation import project_to_so3, rq3


def dlt(q: torch.Tensor, w: torch.Tensor, uh: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """Weighted DLT: projective cameras P [...,3,4] (unit norm) minimising the algebraic error
    ``sum w (|P0 q~ - uh P2 q~|^2 + |P1 q~ - vh P2 q~|^2)``.  q [...,N,3]; w, uh, vh [...,N]."""
    qt = torch.cat([q, torch.ones_like(q[..., :1])], -1)
    z = torch.zeros_like(qt)
    rx = torch.cat([qt, z, -uh[..., None] * qt], -1)
    ry = torch.cat([z, qt, -vh[..., None] * qt], -1)
    M = torch.einsum("...n,...na,...nb->...ab", w, rx, rx) + torch.einsum("...n,...na,...nb->...ab", w, ry, ry)
    _, V = torch.linalg.eigh(0.5 * (M + M.transpose(-1, -2)))
    return V[..., 0].reshape(*M.shape[:-2], 3, 4)


def normalise_P(P: torch.Tensor):
    """Sign and scale so that det(M) > 0 and ||M[2]|| = 1 (then P[2] q~ is the camera depth).

    Returns P and the geometric-mean focal sqrt(det M) (normalised units; NaN if det <= 0)."""
    Mm = P[..., :3]
    det = torch.linalg.det(Mm)
    sgn = torch.where(det < 0, -torch.ones_like(det), torch.ones_like(det))
    n2 = Mm[..., 2, :].norm(dim=-1).clamp_min(1e-300)
    P = P * (sgn / n2)[..., None, None]
    det = det.abs() / n2**3
    f = torch.where(det > 0, det.sqrt(), torch.full_like(det, float("nan")))
    return P, f


def score(P, f, q, uh, vh):
    """Median residual of cameras P [F,C,3,4] on points q [F,S,3]: (points behind counted as
    infinite, side ignored, fraction in front), each [F,C]."""
    qt = torch.cat([q, torch.ones_like(q[..., :1])], -1)
    pr = torch.einsum("fcab,fsb->fcas", P, qt)
    z = pr[..., 2, :]
    ex = (pr[..., 0, :] - uh[:, None] * z) / f[..., None]
    ey = (pr[..., 1, :] - vh[:, None] * z) / f[..., None]
    r = torch.sqrt(ex * ex + ey * ey)
    front = z > 0
    k = (r.shape[-1] + 1) // 2
    med_front = kth_smallest(torch.where(front, r, torch.full_like(r, float("inf"))), k)
    return med_front, kth_smallest(r, k), front.to(r.dtype).mean(-1)


def homography_camera(q, uh, vh, w):
    """Camera hypotheses P [F,3,4] for planar frames from a homography (square pixels, centred
    principal point); NaN where the focal is unobservable (plane facing the camera)."""
    F = q.shape[0]
    ws = w.sum(1).clamp_min(1e-300)
    mu = (w[..., None] * q).sum(1) / ws[:, None]
    qc = q - mu[:, None]
    C = torch.einsum("fn,fna,fnb->fab", w, qc, qc) / ws[:, None, None]
    _, E = torch.linalg.eigh(C)
    E = torch.stack([E[..., 2], E[..., 1], torch.linalg.cross(E[..., 2], E[..., 1])], -1)  # [e1 e2 n]
    ab = torch.einsum("fna,fak->fnk", qc, E[..., :2])
    s = ab.norm(dim=-1).median(dim=1).values.clamp_min(1e-300)
    ab = ab / s[:, None, None]
    # homography DLT (9 unknowns) from the plane coordinates (a, b, 1)
    at = torch.cat([ab, torch.ones_like(ab[..., :1])], -1)
    z = torch.zeros_like(at)
    rx = torch.cat([at, z, -uh.expand_as(w)[..., None] * at], -1)
    ry = torch.cat([z, at, -vh.expand_as(w)[..., None] * at], -1)
    M = torch.einsum("fn,fna,fnb->fab", w, rx, rx) + torch.einsum("fn,fna,fnb->fab", w, ry, ry)
    _, V = torch.linalg.eigh(0.5 * (M + M.transpose(-1, -2)))
    Hm = V[..., 0].reshape(F, 3, 3)
    h1, h2 = Hm[..., 0], Hm[..., 1]
    # orthonormal r1, r2 with K = diag(f, f, 1): two linear equations in f^2
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
    lam = lam * torch.where(B[:, 2, 2] < 0, -torch.ones_like(lam), torch.ones_like(lam))
    r1, r2, tt = lam[:, None] * B[..., 0], lam[:, None] * B[..., 1], lam[:, None] * B[..., 2]
    Rp = project_to_so3(torch.stack([r1, r2, torch.linalg.cross(r1, r2)], -1))
    Rcw = Rp @ E.transpose(1, 2)
    tcw = s[:, None] * tt - torch.einsum("fab,fb->fa", Rcw, mu)
    Kh = torch.diag_embed(torch.stack([f, f, torch.ones_like(f)], -1))
    P = Kh @ torch.cat([Rcw, tcw[..., None]], -1)
    return torch.where(ok[:, None, None], P, torch.full_like(P, float("nan")))


@dataclass
class Init:
    """Initial cameras: R [F,3,3], t [F,3] (normalised coordinates), focal phi [F] (normalised
    units, per frame), planar [F] bool, the chosen hypothesis index [F]."""

    R: torch.Tensor
    t: torch.Tensor
    phi: torch.Tensor
    planar: torch.Tensor
    best: torch.Tensor


def initialise(s: Sample, keep: torch.Tensor, ev: torch.Tensor, *, robust_init: bool, shared_focal: bool,
               fixed_kap: Optional[torch.Tensor], seed: int) -> Init:
    """Initial cameras from the sample ``s`` with pre-filter mask ``keep`` [F,N] (see the module
    docstring).  ``ev`` [F,3]: eigenvalues of the point covariance (planarity)."""
    q, uh, vh = s.q, s.uh[None].expand_as(keep), s.vh[None].expand_as(keep)
    F = q.shape[0]
    dev = q.device
    wk = keep.to(F64)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    cands = [dlt(q, wk, uh, vh)[:, None]]
    if robust_init:
        n_hyp, k_pts = 64, 8
        replace = bool((keep.sum(1) < n_hyp * k_pts).any())
        idx = torch.multinomial(wk.cpu() + 1e-12, n_hyp * k_pts, replacement=replace, generator=gen).to(dev)
        idx = idx.reshape(F, n_hyp, k_pts)
        qh = torch.gather(q, 1, idx.reshape(F, -1, 1).expand(-1, -1, 3)).reshape(F, n_hyp, k_pts, 3)
        uhh = torch.gather(uh, 1, idx.reshape(F, -1)).reshape(F, n_hyp, k_pts)
        vhh = torch.gather(vh, 1, idx.reshape(F, -1)).reshape(F, n_hyp, k_pts)
        cands.append(dlt(qh, torch.ones_like(uhh), uhh, vhh))
    near_planar = ev[:, 0] < 0.1**2 * ev[:, 2]
    planar = ev[:, 0] < 0.05**2 * ev[:, 2]
    Ph = torch.full((F, 3, 4), float("nan"), dtype=F64, device=dev)
    if bool(near_planar.any()):
        sel = torch.nonzero(near_planar).flatten()
        Ph[sel] = homography_camera(q[sel], s.uh, s.vh, wk[sel])
    Pall, fall = normalise_P(torch.cat(cands, 1))
    # scoring subset: 384 kept points per frame
    n_sc = 384
    sidx = torch.multinomial(wk.cpu() + 1e-12, n_sc, replacement=bool((keep.sum(1) < n_sc).any()), generator=gen).to(dev)
    q_sc = torch.gather(q, 1, sidx[..., None].expand(-1, -1, 3))
    u_sc, v_sc = torch.gather(uh, 1, sidx), torch.gather(vh, 1, sidx)

    def scored(P_, f_):
        bad = ~torch.isfinite(P_).all(-1).all(-1) | ~torch.isfinite(f_)
        P_ = torch.where(bad[..., None, None], torch.zeros_like(P_), P_)
        f_ = torch.where(bad, torch.ones_like(f_), f_)
        sf, sa, fr = score(P_, f_, q_sc, u_sc, v_sc)
        inf = torch.full_like(sf, float("inf"))
        return P_, f_, torch.where(bad | torch.isnan(sf), inf, sf), torch.where(bad | torch.isnan(sa), inf, sa), fr, bad

    Pall, fall, sc_f, sc_a, front, bad = scored(Pall, fall)
    if robust_init:
        # local optimisation: re-fit on the inliers of the best hypotheses (either side)
        qt = torch.cat([q, torch.ones_like(q[..., :1])], -1)
        lo = []
        for sel in (sc_f.argmin(1), sc_a.argmin(1)):
            Pb = Pall[torch.arange(F, device=dev), sel]
            for _ in range(2):
                pr = torch.einsum("fab,fsb->fas", Pb, qt)
                r = torch.sqrt((pr[:, 0] - uh * pr[:, 2]) ** 2 + (pr[:, 1] - vh * pr[:, 2]) ** 2)
                r = torch.where(keep, r, torch.nan)
                inl = keep & (r <= 2.5 * torch.nanmedian(r, dim=1).values[:, None])
                Pb = dlt(q, inl.to(F64), uh, vh)
            lo.append(Pb[:, None])
        P_lo, f_lo = normalise_P(torch.cat(lo, 1))
        P_lo, f_lo, s_lo, sa_lo, fr_lo, bad_lo = scored(P_lo, f_lo)
        Pall, fall = torch.cat([Pall, P_lo], 1), torch.cat([fall, f_lo], 1)
        sc_f, sc_a = torch.cat([sc_f, s_lo], 1), torch.cat([sc_a, sa_lo], 1)
        front, bad = torch.cat([front, fr_lo], 1), torch.cat([bad, bad_lo], 1)
    # handedness: on non-planar frames the best projective camera (either side) is unique
    best_any = sc_a.argmin(1)
    fb = front.gather(1, best_any[:, None])[:, 0]
    mirrored = ~planar & torch.isfinite(sc_a.gather(1, best_any[:, None])[:, 0]) & (fb < 0.5)
    # a mirrored map is mirrored in every frame; a few frames of very noisy maps can look so by chance
    if robust_init and float(mirrored.to(F64).mean()) > 0.5:
        raise GeometryError(
            f"frame(s) {torch.nonzero(mirrored).flatten().tolist()[:10]} look like a mirror image of a perspective "
            "view: the points are behind the best fitting camera. The axes are probably left-handed: flip the sign of "
            "y (or x), or of z if it points backward. Expected OpenCV axes: x right, y down, z forward (depth > 0)."
        )
    # homography candidates (kept apart: they are only valid for square pixels and a centred point)
    Ph, fh = normalise_P(Ph[:, None])
    Ph, fh, sh, _, _, badh = scored(Ph, fh)
    Pall, fall, sc_f, bad = torch.cat([Pall, Ph], 1), torch.cat([fall, fh], 1), torch.cat([sc_f, sh], 1), torch.cat([bad, badh], 1)
    best = sc_f.argmin(1)
    # on a plane the DLT is degenerate (a family of cameras fits it): prefer the homography camera
    use_h = planar & torch.isfinite(sc_f[:, -1])
    best = torch.where(use_h, torch.full_like(best, sc_f.shape[1] - 1), best)
    if not torch.isfinite(sc_f.gather(1, best[:, None])).all():
        badf = torch.nonzero(~torch.isfinite(sc_f.gather(1, best[:, None])[:, 0])).flatten().tolist()
        raise GeometryError(
            f"no camera with the points in front of it explains frame(s) {badf[:10]}. The map may be mirrored "
            "(left-handed axes: flip the sign of y or x), use z pointing backward (flip z), or not be a "
            "perspective point map at all."
        )
    Pb = Pall[torch.arange(F, device=dev), best]
    Kh, R = rq3(Pb[:, :, :3])
    Kh = Kh / Kh[:, 2:3, 2:3]
    t = torch.linalg.solve(Kh, Pb[:, :, 3:4])[..., 0]
    phi = torch.sqrt(Kh[:, 0, 0].abs() * Kh[:, 1, 1].abs())
    if fixed_kap is not None or shared_focal:
        # one focal (and centred principal point) for the clip, or the known K: every frame's pose
        # again among its hypotheses, projected on that K
        if fixed_kap is not None:
            kk = fixed_kap
        else:
            fm = torch.nanmedian(phi)
            kk = torch.stack([torch.log(fm), torch.log(fm), torch.zeros_like(fm), torch.zeros_like(fm)]).expand(F, 4)
        Kinv = torch.zeros(F, 3, 3, dtype=F64, device=dev)
        ix, iy = torch.exp(-kk[:, 0]), torch.exp(-kk[:, 1])
        Kinv[:, 0, 0], Kinv[:, 1, 1], Kinv[:, 0, 2], Kinv[:, 1, 2], Kinv[:, 2, 2] = ix, iy, -kk[:, 2] * ix, -kk[:, 3] * iy, 1
        Aq = Kinv[:, None] @ Pall
        U, Sv, Vh = torch.linalg.svd(Aq[..., :3])
        Rc = U @ Vh
        lam = Sv.mean(-1).clamp_min(1e-300)
        tc = Aq[..., 3] / lam[..., None]
        Kc = torch.linalg.inv(Kinv)[:, None]
        Pc = Kc @ torch.cat([Rc, tc[..., None]], -1)
        ok = ~bad & (torch.linalg.det(Rc) > 0)
        Pc = torch.where(ok[..., None, None], Pc, torch.zeros_like(Pc))
        fk = torch.exp(0.5 * (kk[:, 0] + kk[:, 1]))[:, None].expand_as(fall)
        sc_c, _, _ = score(Pc, fk, q_sc, u_sc, v_sc)
        sc_c = torch.where(ok & ~torch.isnan(sc_c), sc_c, torch.full_like(sc_c, float("inf")))
        bc = sc_c.argmin(1)
        if bool(torch.isfinite(sc_c.gather(1, bc[:, None])).all()):
            R = Rc[torch.arange(F, device=dev), bc]
            t = tc[torch.arange(F, device=dev), bc]
            best = bc
    return Init(R=R, t=t, phi=phi, planar=planar, best=best)


def _translation_for(q, w, uh, vh, R, kap):
    """Least-squares translation [F,C,3] for rotations R [F,C,3,3] at known intrinsics kap [F,4]:
    the equal-depth residual ``(x - x_n z, y - y_n z)`` of ``X = R q + t`` is linear in t."""
    xn = (uh[None] - kap[:, 2:3]) * torch.exp(-kap[:, 0:1])  # [F,N]
    yn = (vh[None] - kap[:, 3:4]) * torch.exp(-kap[:, 1:2])
    Y = torch.einsum("fcab,fnb->fcna", R, q)  # [F,C,N,3]
    o = torch.zeros_like(xn)
    ax = torch.stack([torch.ones_like(xn), o, -xn], -1)[:, None]  # [F,1,N,3]
    ay = torch.stack([o, torch.ones_like(xn), -yn], -1)[:, None]
    bx = xn[:, None] * Y[..., 2] - Y[..., 0]
    by = yn[:, None] * Y[..., 2] - Y[..., 1]
    wv = w[:, None, :, None]
    A = (wv * ax).transpose(-1, -2) @ ax.expand_as(Y) + (wv * ay).transpose(-1, -2) @ ay.expand_as(Y)
    b = ((wv * ax) * bx[..., None]).sum(-2) + ((wv * ay) * by[..., None]).sum(-2)
    eye = torch.eye(3, dtype=q.dtype, device=q.device)
    return torch.linalg.solve(A + 1e-12 * A.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None] * eye, b)


def propagate_poses(s: Sample, weights: torch.Tensor, R: torch.Tensor, t: torch.Tensor, kap: torch.Tensor,
                    radius: int = 2):
    """Rescue frames stuck in a wrong pose: try the rotations of the frames up to ``radius`` away
    (a video moves smoothly), each with its own least-squares translation, and keep, per frame,
    the candidate with the smallest median point-to-ray residual.  Returns (R, t, changed [F])."""
    from .model import residuals

    F = R.shape[0]
    dev = R.device
    offs = [0] + [o for k in range(1, radius + 1) for o in (-k, k)]
    idx = torch.stack([(torch.arange(F, device=dev) + o).clamp(0, F - 1) for o in offs], 1)  # [F,C]
    Rc = R[idx]  # [F,C,3,3]
    w = weights * s.valid
    tc = _translation_for(s.q, w, s.uh, s.vh, Rc, kap)
    tc[:, 0] = t  # the current pose as it is
    C = len(offs)
    (rx, ry, rz), _ = residuals(s.q.repeat_interleave(C, 0), Rc.reshape(F * C, 3, 3), tc.reshape(F * C, 3),
                                kap.repeat_interleave(C, 0), s.uh, s.vh)
    r = torch.sqrt(rx * rx + ry * ry + rz * rz).reshape(F, C, -1)
    r = torch.where(s.valid[:, None], r, torch.nan)
    med = torch.nanmedian(r, dim=-1).values
    med = torch.where(torch.isfinite(med), med, torch.full_like(med, float("inf")))
    best = med.argmin(1)
    better = med.gather(1, best[:, None])[:, 0] < 0.8 * med[:, 0]  # clearly better only
    best = torch.where(better, best, torch.zeros_like(best))
    ar = torch.arange(F, device=dev)
    return Rc[ar, best], tc[ar, best], better
