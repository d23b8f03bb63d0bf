"""Level 6: :func:`fit_cameras`, the whole solver from point maps to cameras, depth and confidence.

Reading order of the package: :mod:`.rotation` (helpers), :mod:`.data` (checks, sampling,
normalisation), :mod:`.robust` (noise scale, weights), :mod:`.model` (camera model and the
point-to-ray residual), :mod:`.init` (robust linear hypotheses), :mod:`.refine` (LM inside IRLS),
:mod:`.observability` (model selection, standard errors), :mod:`.outputs` (the per-pixel pass),
then this module, which chains them:

1. checks; a regular sub-grid of about ``sample_pixels`` pixels per frame, normalised per frame;
2. robust initialisation per frame (:mod:`.init`);
3. coarse level: IRLS on that sub-grid with one focal and a centred principal point;
4. model selection (unless the caller fixed the model): one focal, a smooth zoom or one per
   frame (:mod:`.selection`), then a centred or a fitted principal point (BIC), each fitted from
   the previous solution;
5. fine level: IRLS with the chosen model on a sub-grid of about ``refine_pixels`` pixels
   (with ``robust="auto"``, Tukey weights when the coarse fit saw gross outliers);
6. standard errors and the honesty checks (:mod:`.observability`);
7. one pass over every pixel for depth, residual and confidence (the snapped points on demand).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from ...errors import CancelledError, GeometryError
from . import robust as rb
from .data import (
    F64,
    MIN_PIXELS,
    check_inputs,
    check_not_collinear,
    frame_normalisation,
    grid_stride,
    local_noise,
    neighbour_score,
    pixel_norm,
    sample_grid,
)
from .checks import check_focal, fixed_kappa, validate_options
from .init import initialise, propagate_poses
from .model import IntrinsicsModel, K_from_kappa
from .observability import (
    focal_profile,
    prefer_richer,
    score_statistic,
    uncertainty,
    wald_statistic,
)
from .outputs import points_from_depth, write_outputs
from .refine import Problem, State, irls, residual_norms
from .selection import forced_shared_focal_reason, select_focal


class GeometryWarning(UserWarning):
    """The cameras were recovered but are not reliable (low confidence); the message says why."""


@dataclass
class CameraFit:
    """Result of :func:`fit_cameras` (all float32, one device).

    K:            [F,3,3] intrinsics in pixels (a per-frame copy even when shared).
    cam_to_world: [F,4,4] OpenCV camera-to-world (x right, y down, z forward).
    depth:        [F,H,W] z in the camera frame (not ray length), world units.  Always > 0.
    confidence:   [F,H,W] in [0, 1]; 0 at invalid pixels and points behind the camera.
    residual:     [F,H,W] distance of each input point to its fitted ray point, world units.
    info:         dict: the chosen intrinsics model, standard errors, "confidence" ("high" or
                  "low"), "warnings", residual statistics, timings (see :func:`fit_cameras`).

    :attr:`points` ([F,H,W,3] re-projected, ray-snapped world points) is computed from depth, K
    and cam_to_world on first access and then kept: the pipeline does not need it (a scene stores
    depth and cameras), and at 49x480x720 it is 200 MB and a fifth of the fit's time.
    """

    K: torch.Tensor
    cam_to_world: torch.Tensor
    depth: torch.Tensor
    confidence: torch.Tensor
    residual: torch.Tensor
    info: dict = field(default_factory=dict)

    @functools.cached_property
    def points(self) -> torch.Tensor:
        """[F,H,W,3] world points ``R (depth K^-1 [u,v,1]) + t`` (float32, paper Eq. 10)."""
        return points_from_depth(self.depth, self.K, self.cam_to_world)


#: standard errors above these make the fit "low confidence" (the success bounds are 2 % and 1 deg)
FOCAL_STD_WARN = 0.006
ROTATION_STD_WARN = 0.3
#: a focal standard error above this raises (the focal is not determined)
FOCAL_STD_RAISE = 0.05
#: noise scale of the fit over the noise read off the map (median over frames) above this: the
#: model does not explain the map
MISFIT_WARN = 2.0
#: noise floor (normalised units) of the model-selection tests: clean maps differ by rounding only
BIC_SCALE_FLOOR = 1e-6
#: a point whose second-nearest 4-neighbour is farther than this many times the frame's median
#: is treated as a gross outlier (prior weight 0)
NEIGHBOUR_FACTOR = 3.0
#: a principal point with a standard error below this (normalised units: 1 % of the half image
#: size) is "determined by the data" and estimated
PP_STD_DETERMINED = 0.01


def _callback(callback, step, total):
    if callback is not None and callback(step, total) is False:
        raise CancelledError("Camera fitting was cancelled by the caller (callback returned False).")


def fit_cameras(
    points: torch.Tensor,
    *,
    valid_mask: Optional[torch.Tensor] = None,
    shared_intrinsics: Optional[bool] = None,
    square_pixels: bool = True,
    centered_principal_point: Optional[bool] = None,
    robust: str = "auto",
    huber_delta: Optional[float] = None,
    temporal_smoothness: float = 0.0,
    iterations: int = 2,
    outlier_threshold: Optional[float] = 5.0,
    noise_bias_correction: bool = True,
    device: Optional[str | torch.device] = None,
    callback: Optional[Callable[[int, int], object]] = None,
    K: Optional[torch.Tensor] = None,
    robust_init: bool = True,
    sample_pixels: int = 1500,
    refine_pixels: int = 6000,
    seed: int = 0,
    chunk_pixels: int = 400_000,
) -> CameraFit:
    """Recover intrinsics, poses and depth from XYZ point maps (4DNeX paper Sec. 4.3, Eqs. 9-10).

    Minimises, over K (one per clip or per frame), every frame's pose and a free depth per pixel,
    the robustly weighted squared distance between each point ``P[f,i,j]`` and its pixel's ray
    (the depth eliminated in closed form: the ray point nearest to the point), then snaps every
    point on its ray.  Replaces the official 1500-step Adam loop (4dnex.md section 8; kept as a
    baseline in :mod:`fourd_core.geometry.baselines`).  See the package docstring for the stages.

    Per-frame re-centring: 4DNeX normalises every frame's map on its own (bounding-box centre,
    and a scale the VAE may jitter), so each frame may carry its own similarity (scale and
    translation).  Each frame has its own pose and is normalised by its own centre and spread,
    and frames are weighted by their own noise (chi-square units), so the fit is invariant to
    such a similarity: K and the rotations do not change, and each camera centre and depth map
    come out in that frame's own map frame, like the points.  Putting the frames in one common
    world needs cross-frame registration of the maps, which this function does not attempt.

    Args:
        points: [F,H,W,3] (or [H,W,3]) world points, float16/32/64, any units.  4DNeX output goes
            through :func:`~fourd_core.geometry.registration.prepare_4dnex_points` first.  Pixel
            (i, j) is at (u, v) = (j, i).
        valid_mask: optional bool [F,H,W] or [H,W]; False pixels are ignored (and may hold NaN).
        shared_intrinsics: True: one K for all frames; False: one focal per frame (zoom; the
            principal point stays shared); None (default): chosen from the data (BIC), reported in
            ``info["intrinsics_model"]``.
        square_pixels: fx = fy.
        centered_principal_point: True: (cx, cy) = ((W-1)/2, (H-1)/2); False: fitted; None
            (default): fitted when the data determine it (BIC), centred otherwise.
        robust: "auto" (default: Huber, then Tukey at the fine level when more than 1 % of the
            residuals are gross outliers; reported in ``info["robust_loss"]``), "huber", "cauchy",
            "tukey" (IRLS weights) or "none" (plain least squares after a robust start).
        huber_delta: robust threshold in world units; default 2.0 (Huber), 2.385 (Cauchy) or 4.685
            (Tukey) times the per-frame noise scale estimated from the median residual.
        temporal_smoothness: weight lambda >= 0 of ``sum_f ||c_{f-1} - 2c_f + c_{f+1}||^2 + rho^2
            ||R_{f-1} - 2R_f + R_{f+1}||_F^2`` (world camera centres c, world-to-camera rotations
            R, rho the mean frame scale), against a data term that is the per-frame weighted sum of
            squared residuals (world units) over the number of pixels.  0 (default): frames are
            independent (4DNeX maps are re-centred per frame, so only use it for maps in one world
            frame).
        iterations: IRLS rounds at the fine level (>= 1).
        outlier_threshold: residuals above this many noise scales get weight 0; None keeps the
            pure robust function.  With ``robust="none"`` it still rejects gross outliers at the
            coarse (robust start) level and is ignored at the fine level.
        noise_bias_correction: accepted for compatibility; the point-to-ray residual needs none
            (noise does not bias it; see :mod:`.model`).
        device: where to compute; default the device of ``points``.
        callback: ``callback(step, total)`` after each stage; raise (or return False, which raises
            :class:`CancelledError`) to cancel.
        K: optional known intrinsics [3,3] or [F,3,3] (zero skew); then only the poses are fitted.
        robust_init: robust hypotheses (pre-filter, least median of squares); False: one
            least-squares DLT per frame.
        sample_pixels: pixels per frame of the initialisation / model-selection grid.
        refine_pixels: pixels per frame of the fine level (all of them on small maps).
        seed: seed of the hypothesis sampling (deterministic for a given seed).
        chunk_pixels: pixels processed at once in the output pass (bounds memory).

    Returns:
        :class:`CameraFit` (float32, always batched).  ``info`` has "intrinsics_model",
        "model_selection" (the BIC tests), "confidence" ("high"/"low"), "warnings",
        "focal_rel_std" [F], "principal_point_std_px" [F,2], "rotation_std_deg" [F],
        "misfit" (fit noise over map noise), per-frame "rms_residual", "median_residual",
        "noise_scale" (world units), "scale", "behind_fraction", "planar_frames",
        "lm_iterations", "timings" and the options.

    Raises:
        InputError: bad shapes, dtypes or options.
        GeometryError: NaN/inf at valid pixels, too few valid pixels, constant, collinear or
            mirrored maps, a focal length that the data do not determine (plane facing the camera,
            orthographic map), or a fit whose median residual exceeds 10 % of the scene scale.
        CancelledError: the callback asked to stop.

    Warns:
        GeometryWarning: the fit is returned with ``info["confidence"] == "low"``: the focal or
        rotations are not determined to within the success bounds, or the residuals are far above
        the noise of the map (the reason is named).
    """
    t_start = time.perf_counter()
    timings = {}
    validate_options(robust, huber_delta, temporal_smoothness, iterations)
    points, valid, _single = check_inputs(points, valid_mask, device)
    dev = points.device
    F, H, W, _ = points.shape
    s_pix, c0x, c0y = pixel_norm(H, W)
    total_steps = 6
    _callback(callback, 0, total_steps)
    fixed_kap = None if K is None else fixed_kappa(K, F, s_pix, c0x, c0y, dev)

    # ---- 1. sample grid, normalisation -----------------------------------------------------
    t0 = time.perf_counter()
    # (counting a [F,H,W] bool mask costs ~0.1 s at full size: skipped when there is none)
    n_valid = torch.full((F,), H * W, device=dev) if valid_mask is None else valid.reshape(F, -1).sum(1)
    stride = grid_stride(int(n_valid.min()), sample_pixels)
    raw = sample_grid(points, valid, stride)
    nv = raw.valid.sum(1)
    if (nv < MIN_PIXELS).any():
        bad = torch.nonzero(nv < MIN_PIXELS).flatten().tolist()
        raise GeometryError(
            f"too few valid pixels in frame(s) {bad[:10]} (at most {int(n_valid[bad].max())} in the frame, "
            f"{int(nv[bad].min())} on the sampling grid; at least {MIN_PIXELS} on a ~{sample_pixels}-pixel grid are "
            "needed). Check valid_mask, or drop those frames."
        )
    mu, sig = frame_normalisation(raw.q, raw.valid)
    coarse = sample_grid(points, valid, stride, mu, sig)
    def neighbour_keep(level):
        """Points with at least two close 4-neighbours: a surface, not an isolated gross outlier
        (such an outlier can lie near its pixel's ray by chance, but not near its neighbours)."""
        if not robust_init:
            return level.valid
        nb = neighbour_score(points, valid, level.ii, level.jj)
        nbn = torch.where(level.valid & torch.isfinite(nb), nb, torch.nan)
        med_nb = torch.nanmedian(nbn, dim=1).values
        k = level.valid & (nb <= torch.maximum(NEIGHBOUR_FACTOR * med_nb, 1e-4 * sig)[:, None])
        return torch.where((k.sum(1) < MIN_PIXELS)[:, None], level.valid, k)

    keep = neighbour_keep(coarse)
    ev = check_not_collinear(coarse.q, keep.to(F64))

    # ---- 2. initialisation ---------------------------------------------------------------
    init = initialise(coarse, keep, ev, robust_init=robust_init, shared_focal=shared_intrinsics is not False,
                      fixed_kap=fixed_kap, seed=seed)
    if fixed_kap is not None:
        kap0 = fixed_kap.clone()
    else:
        phi = init.phi if shared_intrinsics is False else torch.nanmedian(init.phi).expand(F)
        lphi = torch.log(phi)
        kap0 = torch.stack([lphi, lphi, torch.zeros_like(lphi), torch.zeros_like(lphi)], -1)
    S = State(init.R, init.t, kap0)
    timings["init"] = time.perf_counter() - t0
    _callback(callback, 1, total_steps)

    # ---- 3. coarse IRLS --------------------------------------------------------------------
    t0 = time.perf_counter()
    reject = None if (robust == "none" or outlier_threshold is None) else float(outlier_threshold)
    robust_c = robust if robust not in ("none", "auto") else "huber"
    reject_c = float(outlier_threshold) if outlier_threshold is not None else None
    n_pix = float(coarse.valid.sum(1).to(F64).mean())
    cf = sig**2 / n_pix

    def delta_for(level_sig):
        return None if huber_delta is None else torch.full_like(level_sig, float(huber_delta)) / level_sig

    def fit_model(model, S_, level, max_rounds, rob, rej, first_weights=None, lm_iter=4):
        P_ = Problem(level.q, level.valid, level.uh, level.vh, cf * (n_pix / float(level.valid.sum(1).to(F64).mean())),
                     model, mu, sig, float(temporal_smoothness))
        out = irls(P_, S_, robust=rob, delta=delta_for(sig), reject=rej, max_rounds=max_rounds,
                   first_weights=first_weights, scale_floor=1e-9, lm_iter=lm_iter)
        return (P_,) + out

    lm_total = 0
    auto_focal = fixed_kap is None and shared_intrinsics is None and F >= 3
    # a plane determines at most 8 of the 9 camera parameters with a free principal point: on
    # all-planar maps it stays centred unless asked
    all_planar = bool(init.planar.all())
    auto_pp = fixed_kap is None and centered_principal_point is None and not all_planar
    # the coarse fit starts with the richest principal-point model that may be chosen
    base = IntrinsicsModel(per_frame_focal=shared_intrinsics is False, square=bool(square_pixels),
                           free_pp=centered_principal_point is False or auto_pp, fixed=fixed_kap is not None)
    keep_w = keep.to(F64)
    Pc, S, w, scale, _, n_lm = fit_model(base, S, coarse, 10, robust_c, reject_c, keep_w)
    lm_total += n_lm
    rescued = 0
    for _ in range(2):  # frames left in a wrong pose get a neighbour's rotation, then refit
        R2, t2, changed = propagate_poses(coarse, keep_w, S.R, S.t, S.kap)
        if not bool(changed.any()):
            break
        rescued += int(changed.sum())
        Pc, S, w, scale, _, n_lm = fit_model(base, State(R2, t2, S.kap), coarse, 10, robust_c, reject_c, keep_w)
        lm_total += n_lm
    check_focal(S.kap, H, W)
    timings["coarse"] = time.perf_counter() - t0
    _callback(callback, 2, total_steps)

    # ---- 4. model selection (BIC) ----------------------------------------------------------
    t0 = time.perf_counter()
    model = base
    selection = {}
    n_res = int(coarse.valid.sum()) * 2
    if auto_focal:
        def refit(m, S_):
            return tuple(fit_model(m, S_, coarse, 10, robust_c, reject_c, keep_w)[i] for i in (0, 1, 2, 3, 5))

        Pc, S, w, scale, model, n1, rec = select_focal(Pc, S, w, scale.clamp_min(BIC_SCALE_FLOOR), n_res, refit)
        lm_total += n1
        selection.update(rec)
    pp_unc = None
    if auto_pp:
        # the principal point is estimated when the data determine it (small standard error) or
        # when it is significantly off centre (Wald test against the BIC penalty); centred otherwise
        u0 = uncertainty(Pc, S, w, scale.clamp_min(BIC_SCALE_FLOOR))
        pp_std = float(u0.pp.max()) if bool(torch.isfinite(u0.pp).all()) else float("inf")
        pp_val, pp_cov = u0.info["pp"]
        better, ratio = prefer_richer(wald_statistic(pp_val, pp_cov), 0.0, 2, n_res)
        determined = pp_std < PP_STD_DETERMINED
        selection["fitted_principal_point"] = {"chosen": better or determined, "loss_drop_over_penalty": round(ratio, 3),
                                               "std_px": round(pp_std * s_pix, 3)}
        if not (better or determined):
            pp_unc = (Pc, S, w, scale)  # the honesty checks still account for the unknown principal point
            model = replace(model, free_pp=False)
            S = S.copy()
            S.kap[:, 2:] = 0
            Pc, S, w, scale, _, n2 = fit_model(model, S, coarse, 10, robust_c, reject_c, keep_w)
            lm_total += n2
    # a model the caller forced is still tested: a significantly better richer model is a warning
    forced_reasons = []
    if fixed_kap is None and shared_intrinsics is True and F >= 3:
        reason = forced_shared_focal_reason(Pc, S, w, scale.clamp_min(BIC_SCALE_FLOOR), n_res)
        if reason:
            forced_reasons.append(reason)
    if fixed_kap is None and centered_principal_point is True:
        m_fp = replace(model, free_pp=True)
        P_fp = Problem(coarse.q, coarse.valid, coarse.uh, coarse.vh, Pc.cf, m_fp, mu, sig, float(temporal_smoothness))
        stat = score_statistic(P_fp, S, w, scale.clamp_min(BIC_SCALE_FLOOR))
        if prefer_richer(stat, 0.0, 2, n_res)[0]:
            forced_reasons.append("the principal point is significantly off the image centre; use "
                                  "centered_principal_point=None (automatic) or False")
    timings["model_selection"] = time.perf_counter() - t0
    _callback(callback, 3, total_steps)

    # ---- 5. fine level -------------------------------------------------------------------
    t0 = time.perf_counter()
    fstride = grid_stride(int(n_valid.min()), refine_pixels)
    fine = coarse if fstride == stride else sample_grid(points, valid, fstride, mu, sig)
    keep_f = keep_w if fine is coarse else neighbour_keep(fine).to(F64)
    robust_f = robust
    if robust == "auto":
        gross = rb.gross_fraction(residual_norms(Pc, S), Pc.valid, scale)
        robust_f = "tukey" if gross > rb.AUTO_GROSS_FRACTION else "huber"
    Pf, S, w, scale, n_rounds, n_lm = fit_model(model, S, fine, max(int(iterations), 1), robust_f, reject, keep_f,
                                                lm_iter=2)
    lm_total += n_lm
    check_focal(S.kap, H, W)
    timings["fine"] = time.perf_counter() - t0
    _callback(callback, 4, total_steps)

    # ---- 6. uncertainty and honesty ----------------------------------------------------------
    t0 = time.perf_counter()
    unc = uncertainty(Pf, S, w, scale)
    if pp_unc is not None:
        # centred by default, but the data leave the principal point open: judge the focal and
        # rotations with its uncertainty included (coarse level, scaled to the fine sample size)
        # (when the principal point is not determined at all, the centred one is an assumption)
        u2 = uncertainty(*pp_unc)
        shrink = math.sqrt(float(coarse.valid.sum()) / float(fine.valid.sum()))
        if bool(torch.isfinite(u2.focal_rel).all()) and bool(torch.isfinite(u2.rotation_deg).all()):
            unc.focal_rel = torch.maximum(unc.focal_rel, u2.focal_rel * shrink)
            unc.rotation_deg = torch.maximum(unc.rotation_deg, u2.rotation_deg * shrink)
        else:
            selection["fitted_principal_point"]["note"] = "not determined by the data: assumed at the image centre"
    reasons = list(forced_reasons)
    noise_map_n = local_noise(points, valid, coarse.ii, coarse.jj) / sig  # normalised units
    if not model.fixed:
        # a focal 30 % lower or 40 % higher must fit clearly worse (profile test, coarse level)
        ref = scale.clamp_min(BIC_SCALE_FLOOR)
        w_c = rb.weights(residual_norms(Pc, S), Pc.valid, ref, robust_c, None, reject_c)
        dchi2 = focal_profile(Pc, S, w_c, ref)
        if dchi2 < 100:
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
    timings["checks"] = time.perf_counter() - t0

    # ---- 7. outputs ----------------------------------------------------------------------
    t0 = time.perf_counter()
    noise_world = scale * sig
    depth, resid, conf, behind, med_res, rms = write_outputs(points, valid, mu, sig, S.R, S.t, S.kap, noise_world,
                                                             chunk_pixels)
    timings["outputs"] = time.perf_counter() - t0
    _callback(callback, 5, total_steps)
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
    Kout = K_from_kappa(S.kap, s_pix, c0x, c0y)
    c2w = torch.zeros(F, 4, 4, dtype=F64, device=dev)
    c2w[:, :3, :3] = S.R.transpose(1, 2)
    c2w[:, :3, 3] = mu - sig[:, None] * torch.einsum("fba,fb->fa", S.R, S.t)
    c2w[:, 3, 3] = 1.0
    confidence = "low" if reasons else "high"
    if reasons:
        warnings.warn("Camera recovery has low confidence: " + "; ".join(reasons) + ".", GeometryWarning, stacklevel=2)
    timings["total"] = time.perf_counter() - t_start
    _callback(callback, total_steps, total_steps)
    info = {
        "method": "point-to-ray LM/IRLS",
        "intrinsics_model": model.name(),
        "model_selection": selection,
        "confidence": confidence,
        "warnings": reasons,
        "focal_rel_std": unc.focal_rel.to(torch.float32).cpu(),
        "principal_point_std_px": (unc.pp * s_pix).to(torch.float32).cpu(),
        "rotation_std_deg": unc.rotation_deg.to(torch.float32).cpu(),
        "misfit": misfit,
        "robust_loss": robust_f,
        "inlier_fraction": inlier,
        "iterations": n_rounds,
        "lm_iterations": lm_total,
        "rms_residual": rms.to(torch.float32).cpu(),
        "median_residual": med_res.to(torch.float32).cpu(),
        "noise_scale": noise_world.to(torch.float32).cpu(),
        "scale": sig.to(torch.float32).cpu(),
        "behind_fraction": behind.to(torch.float32).cpu(),
        "planar_frames": torch.nonzero(init.planar).flatten().tolist(),
        "rescued_frames": rescued,
        "init_hypothesis": init.best.cpu().tolist(),
        "sample_strides": (stride, fstride),
        "timings": timings,
        "options": dict(shared_intrinsics=shared_intrinsics, square_pixels=square_pixels,
                        centered_principal_point=centered_principal_point, robust=robust, huber_delta=huber_delta,
                        temporal_smoothness=temporal_smoothness, robust_init=robust_init, fixed_K=K is not None),
    }
    return CameraFit(K=Kout.to(torch.float32), cam_to_world=c2w.to(torch.float32), depth=depth, confidence=conf,
                     residual=resid, info=info)
