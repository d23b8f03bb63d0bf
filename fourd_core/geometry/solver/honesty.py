"""Level 4c: honesty.  When a fit is returned with low confidence, and when the solver raises.

A fit whose focal or rotations are not determined to well within the success bounds (focal 2 %,
rotation 1 deg), or whose residuals are far above the noise read off the map itself (a model that
does not explain the data, e.g. a wrong local minimum), is returned with a low confidence and a
warning naming the reason (:func:`judge`).  A focal that is not determined at all (another focal
30-40 % away fits about as well, or its standard error is above 5 %), most points behind the
fitted camera, or a median residual far above both the map's noise and 10 % of the scene raise
:class:`~fourd_core.errors.GeometryError` (:func:`judge`, :func:`check_outputs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import GeometryError
from . import robust as rb
from .data import F64, Sample, local_noise
from .observability import Uncertainty, focal_profile, uncertainty
from .refine import residual_norms

#: standard errors above these make the fit "low confidence" (the success bounds are 2 % and 1 deg)
FOCAL_STD_WARN = 0.006
ROTATION_STD_WARN = 0.3
#: a focal standard error above this raises (the focal is not determined)
FOCAL_STD_RAISE = 0.05
#: loss increase (chi-square units) below which a focal 30 % lower or 40 % higher fits "as well"
PROFILE_DCHI2_RAISE = 100.0
#: noise scale of the fit over the noise read off the map (median over frames) above this: the
#: model does not explain the map
MISFIT_WARN = 2.0
#: noise floor (normalised units) of the model-selection tests: clean maps differ by rounding only
BIC_SCALE_FLOOR = 1e-6


@dataclass
class Verdict:
    """What :func:`judge` found: standard errors, the reasons for a low confidence (empty: high),
    misfit (fit noise over map noise, median over frames), the fraction of fine-level points with
    weight > 0.5, and the noise read off the map [F] (world units)."""

    uncertainty: Uncertainty
    reasons: list
    misfit: float
    inlier_fraction: float
    noise_map: torch.Tensor


def judge(points, valid, coarse: Sample, sig, coarse_problem, fine_fit, pp_free_fit, fine: Sample, *,
          robust_c: str, reject_c, reasons: list, selection: dict) -> Verdict:
    """Standard errors of the final fit and the honesty checks (see the module docstring).

    points [F,H,W,3], valid [F,H,W]: the maps; ``coarse`` / ``fine`` the sub-grids; sig [F] the
    frame spreads; ``coarse_problem`` the coarse-level problem of the chosen model; ``fine_fit`` =
    (problem, state, weights, noise scale) of the fine level; ``pp_free_fit``: the coarse fit with
    a free principal point when the centred one was chosen (its uncertainty is still accounted
    for), else None; ``robust_c``, ``reject_c`` the coarse level's robust loss and rejection;
    ``reasons``: reasons found before (kept first); ``selection``: the model-selection record
    (a note is added when the principal point is not determined at all).

    Raises:
        GeometryError: the focal length is not determined (profile test or standard error).
    """
    Pf, S, w, scale = fine_fit
    Pc = coarse_problem
    unc = uncertainty(Pf, S, w, scale)
    if pp_free_fit is not None:
        # centred by default, but the data leave the principal point open: judge the focal and
        # rotations with its uncertainty included (coarse level, scaled to the fine sample size)
        # (when the principal point is not determined at all, the centred one is an assumption)
        u2 = uncertainty(*pp_free_fit)
        shrink = math.sqrt(float(coarse.valid.sum()) / float(fine.valid.sum()))
        if bool(torch.isfinite(u2.focal_rel).all()) and bool(torch.isfinite(u2.rotation_deg).all()):
            unc.focal_rel = torch.maximum(unc.focal_rel, u2.focal_rel * shrink)
            unc.rotation_deg = torch.maximum(unc.rotation_deg, u2.rotation_deg * shrink)
        else:
            selection["fitted_principal_point"]["note"] = "not determined by the data: assumed at the image centre"
    reasons = list(reasons)
    noise_map_n = local_noise(points, valid, coarse.ii, coarse.jj) / sig  # normalised units
    if not Pf.model.fixed:
        # a focal 30 % lower or 40 % higher must fit clearly worse (profile test, coarse level)
        ref = scale.clamp_min(BIC_SCALE_FLOOR)
        w_c = rb.weights(residual_norms(Pc, S), Pc.valid, ref, robust_c, None, reject_c)
        if focal_profile(Pc, S, w_c, ref) < PROFILE_DCHI2_RAISE:
            raise GeometryError(
                "the focal length (intrinsics) cannot be determined from these points: a focal length 30-40 % different "
                "fits them about as well (the map behaves like a plane facing the camera or an orthographic view). "
                "Pass a known K (fit_cameras(..., K=...)), or use frames with depth variation."
            )
        fr = unc.focal_rel
        if not bool(torch.isfinite(fr).all()) or float(fr.max()) > FOCAL_STD_RAISE:
            worst = float(fr.max()) if bool(torch.isfinite(fr).all()) else float("inf")
            raise GeometryError(
                "the focal length (intrinsics) cannot be determined reliably from these points "
                f"(standard error {worst:.0%}): the map behaves like a plane facing the camera or an orthographic "
                "view, where many focal lengths fit about equally well. Pass a known K (fit_cameras(..., K=...)), "
                "or use frames with depth variation."
            )
        if float(fr.max()) > FOCAL_STD_WARN:
            reasons.append(f"the focal length is uncertain (standard error {float(fr.max()):.2%})")
    rs = unc.rotation_deg
    if not bool(torch.isfinite(rs).all()) or float(rs.max()) > ROTATION_STD_WARN:
        reasons.append(f"rotations are uncertain (standard error up to {float(rs.max()):.2f} deg)")
    noise_map = noise_map_n * sig
    noise_fit = scale * sig
    misfit = float(torch.median(noise_fit / torch.maximum(noise_map, 1e-5 * sig)))
    if misfit > MISFIT_WARN and float(torch.median(noise_fit / sig)) > 1e-4:
        reasons.append(f"the residuals are {misfit:.1f}x the noise of the map itself (the camera model does not "
                       "explain the points: a wrong solution, or intrinsics that change in a way not modelled)")
    inlier = float((w > 0.5).to(F64).sum() / Pf.valid.sum().clamp_min(1))
    return Verdict(unc, reasons, misfit, inlier, noise_map)


def check_outputs(behind: torch.Tensor, med_res: torch.Tensor, sig: torch.Tensor, noise_map: torch.Tensor) -> None:
    """Raise GeometryError when most points of a frame are behind its camera (``behind`` [F]
    fractions) or when a frame's median residual ``med_res`` [F] exceeds 10 % of its spread
    ``sig`` [F] and 3 times the median the map's own noise ``noise_map`` [F] would give (world
    units)."""
    if (behind > 0.5).any():
        bad = torch.nonzero(behind > 0.5).flatten().tolist()
        raise GeometryError(
            f"most points of frame(s) {bad[:10]} end up behind the fitted camera. The map may be mirrored (flip the "
            "sign of x or y) or have z pointing backward."
        )
    unexplained = (med_res > 0.1 * sig) & (med_res > 3 * rb.RAYLEIGH_MEDIAN * noise_map)
    if unexplained.any():
        bad = torch.nonzero(unexplained).flatten().tolist()
        raise GeometryError(
            f"no pinhole camera explains frame(s) {bad[:10]}: the median residual is "
            f"{float((med_res / sig).max()) * 100:.1f} % of the scene scale. The points may be degenerate (e.g. all on "
            "a plane through the camera), mostly outliers, or not a perspective point map of this image grid."
        )
