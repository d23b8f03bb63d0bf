"""Level 6: :func:`fit_cameras`, the whole solver from point maps to cameras, depth and confidence.

Reading order of the package: :mod:`.rotation` (helpers), :mod:`.data` (checks, sampling,
normalisation), :mod:`.robust` (noise scale, weights), :mod:`.model` (camera model and the
point-to-ray residual), :mod:`.init` (robust linear hypotheses), :mod:`.refine` (LM inside IRLS),
:mod:`.observability` (model selection, standard errors), :mod:`.selection` (the focal model),
:mod:`.honesty` (when to warn or raise), :mod:`.outputs` (the per-pixel pass), then this module,
whose stages :func:`fit_cameras` chains:

1. :func:`_sample`: checks; a regular sub-grid of about ``sample_pixels`` pixels per frame,
   normalised per frame;
2. robust initialisation per frame (:func:`.init.initialise`, :func:`_initial_state`);
3. :func:`_coarse_level`: IRLS on that sub-grid with the richest principal-point model that may
   be chosen, frames stuck in a wrong pose rescued from their neighbours;
4. :func:`_select_model` (unless the caller fixed the model): one focal, a smooth zoom or one per
   frame (:mod:`.selection`), then a centred or a fitted principal point, each fitted from the
   previous solution; :func:`_forced_model_reasons` tests a model the caller forced;
5. :func:`_fine_level`: IRLS with the chosen model on a sub-grid of about ``refine_pixels`` pixels
   (with ``robust="auto"``, Tukey weights when the coarse fit saw gross outliers);
6. standard errors and the honesty checks (:func:`.honesty.judge`);
7. one pass over every pixel for depth, residual and confidence (:mod:`.outputs`; the snapped
   points on demand), then :func:`.honesty.check_outputs`.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from ...errors import CancelledError, GeometryError
from . import robust as rb
from .config import SolverConfig
from .checks import check_focal, fixed_kappa, validate_options
from .data import (
    F64,
    MIN_PIXELS,
    Sample,
    check_inputs,
    check_not_collinear,
    frame_normalisation,
    grid_stride,
    neighbour_score,
    pixel_norm,
    sample_grid,
)
from .honesty import BIC_SCALE_FLOOR, check_outputs, judge
from .init import Init, initialise, propagate_poses
from .model import IntrinsicsModel, K_from_kappa
from .observability import prefer_richer, score_statistic, uncertainty, wald_statistic
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


#: a point whose second-nearest 4-neighbour is farther than this many times the frame's median
#: is treated as a gross outlier (prior weight 0)
NEIGHBOUR_FACTOR = 3.0
#: a principal point with a standard error below this (normalised units: 1 % of the half image
#: size) is "determined by the data" and estimated
PP_STD_DETERMINED = 0.01


def _callback(callback, step, total):
    if callback is not None and callback(step, total) is False:
        raise CancelledError("Camera fitting was cancelled by the caller (callback returned False).")


@dataclass
class _Fit:
    """What the stages of one fit share: the maps, their per-frame normalisation (mu [F,3],
    sig [F]), the coarse sub-grid and the options of the robust IRLS."""

    points: torch.Tensor
    valid: torch.Tensor
    mu: torch.Tensor
    sig: torch.Tensor
    coarse: Sample
    smooth: float
    huber_delta: Optional[float]
    robust_init: bool
    robust: str  # the caller's robust loss
    robust_c: str  # the coarse level's (Huber for "auto" and "none")
    reject: Optional[float]  # fine level's rejection threshold (noise scales)
    reject_c: Optional[float]  # coarse level's
    lm_total: int = 0

    @property
    def n_res(self) -> int:
        """Residual count of the model-selection tests: two per valid coarse point (the point-to-ray
        residual lies in the plane orthogonal to the ray)."""
        return int(self.coarse.valid.sum()) * 2

    def keep(self, level: Sample) -> torch.Tensor:
        """Points with at least two close 4-neighbours [F,N] bool: a surface, not an isolated gross
        outlier (such an outlier can lie near its pixel's ray by chance, but not near its
        neighbours).  All valid points without ``robust_init`` or where too few would be left."""
        if not self.robust_init:
            return level.valid
        nb = neighbour_score(self.points, self.valid, level.ii, level.jj)
        nbn = torch.where(level.valid & torch.isfinite(nb), nb, torch.nan)
        med_nb = torch.nanmedian(nbn, dim=1).values
        k = level.valid & (nb <= torch.maximum(NEIGHBOUR_FACTOR * med_nb, 1e-4 * self.sig)[:, None])
        return torch.where((k.sum(1) < MIN_PIXELS)[:, None], level.valid, k)

    def fit(self, model: IntrinsicsModel, S: State, level: Sample, max_rounds: int, robust: str,
            reject: Optional[float], prior: torch.Tensor, lm_iter: int = 4):
        """IRLS (:func:`.refine.irls`) of ``model`` on the sub-grid ``level`` from ``S`` with prior
        weights ``prior`` [F,N]; returns (problem, state, weights, noise scale [F], rounds)."""
        cf = self.sig**2 / float(level.valid.sum(1).to(F64).mean())  # world units^2 per point (see refine)
        P = Problem(level.q, level.valid, level.uh, level.vh, cf, model, self.mu, self.sig, self.smooth)
        delta = None if self.huber_delta is None else torch.full_like(self.sig, float(self.huber_delta)) / self.sig
        S, w, scale, rounds, n_lm = irls(P, S, robust=robust, delta=delta, reject=reject, max_rounds=max_rounds,
                                         first_weights=prior, scale_floor=1e-9, lm_iter=lm_iter)
        self.lm_total += n_lm
        return P, S, w, scale, rounds

    def fit_coarse(self, model: IntrinsicsModel, S: State, prior: torch.Tensor):
        """:meth:`fit` at the coarse level (up to 10 rounds): (problem, state, weights, scale)."""
        return self.fit(model, S, self.coarse, 10, self.robust_c, self.reject_c, prior)[:4]


def _sample(points, valid, has_mask: bool, sample_pixels: int):
    """Stage 1: (valid pixels per frame [F], grid stride, mu [F,3], sig [F], coarse sub-grid).

    Raises GeometryError when a frame has too few valid pixels or is constant."""
    F, H, W, _ = points.shape
    # (counting a [F,H,W] bool mask costs ~0.1 s at full size: skipped when there is none)
    n_valid = valid.reshape(F, -1).sum(1) if has_mask else torch.full((F,), H * W, device=points.device)
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
    return n_valid, stride, mu, sig, sample_grid(points, valid, stride, mu, sig)


def _initial_state(init: Init, fixed_kap: Optional[torch.Tensor], shared_intrinsics: Optional[bool]) -> State:
    """Stage 2: the initial cameras with the known K, or one focal per frame (``shared_intrinsics``
    False), else the median focal for every frame, and a centred principal point."""
    if fixed_kap is not None:
        return State(init.R, init.t, fixed_kap.clone())
    phi = init.phi if shared_intrinsics is False else torch.nanmedian(init.phi).expand(init.phi.shape[0])
    lphi = torch.log(phi)
    return State(init.R, init.t, torch.stack([lphi, lphi, torch.zeros_like(lphi), torch.zeros_like(lphi)], -1))


def _coarse_level(fx: _Fit, base: IntrinsicsModel, S: State, keep_w: torch.Tensor):
    """Stage 3: IRLS on the coarse sub-grid, then up to two rounds in which frames left in a wrong
    pose take a neighbour's rotation (:func:`.init.propagate_poses`) and the clip is refitted.
    Returns (problem, state, weights, scale, frames rescued)."""
    Pc, S, w, scale = fx.fit_coarse(base, S, keep_w)
    rescued = 0
    for _ in range(2):
        R2, t2, changed = propagate_poses(fx.coarse, keep_w, S.R, S.t, S.kap)
        if not bool(changed.any()):
            break
        rescued += int(changed.sum())
        Pc, S, w, scale = fx.fit_coarse(base, State(R2, t2, S.kap), keep_w)
    return Pc, S, w, scale, rescued


def _select_model(fx: _Fit, fit, keep_w, *, auto_focal: bool, auto_pp: bool, s_pix: float):
    """Stage 4: the focal model (:func:`.selection.select_focal`), then the principal point: estimated
    when the data determine it (small standard error) or when it is significantly off centre (Wald
    test against the BIC penalty), centred otherwise.

    ``fit`` = (problem, state, weights, scale) of the coarse level.  Returns (that tuple for the
    chosen model, the selection record, and, when the principal point was centred, the fit with
    it free: the honesty checks still account for its uncertainty)."""
    Pc, S, w, scale = fit
    selection = {}
    n_res = fx.n_res
    if auto_focal:
        Pc, S, w, scale, rec = select_focal(Pc, S, w, scale.clamp_min(BIC_SCALE_FLOOR), n_res,
                                            lambda m, S_: fx.fit_coarse(m, S_, keep_w))
        selection.update(rec)
    pp_free_fit = None
    if auto_pp:
        u0 = uncertainty(Pc, S, w, scale.clamp_min(BIC_SCALE_FLOOR))
        pp_std = float(u0.pp.max()) if bool(torch.isfinite(u0.pp).all()) else float("inf")
        pp_val, pp_cov = u0.info["pp"]
        better, ratio = prefer_richer(wald_statistic(pp_val, pp_cov), 0.0, 2, n_res)
        determined = pp_std < PP_STD_DETERMINED
        selection["fitted_principal_point"] = {"chosen": better or determined, "loss_drop_over_penalty": round(ratio, 3),
                                               "std_px": round(pp_std * s_pix, 3)}
        if not (better or determined):
            pp_free_fit = (Pc, S, w, scale)
            S = S.copy()
            S.kap[:, 2:] = 0
            Pc, S, w, scale = fx.fit_coarse(replace(Pc.model, free_pp=False), S, keep_w)
    return (Pc, S, w, scale), selection, pp_free_fit


def _forced_model_reasons(fx: _Fit, fit, *, shared_intrinsics, centered_principal_point, fixed: bool) -> list:
    """A model the caller forced is still tested (score test at its optimum, coarse level): a
    significantly better richer model is a warning (the reasons returned)."""
    Pc, S, w, scale = fit
    F = S.R.shape[0]
    n_res = fx.n_res
    reasons = []
    if not fixed and shared_intrinsics is True and F >= 3:
        reason = forced_shared_focal_reason(Pc, S, w, scale.clamp_min(BIC_SCALE_FLOOR), n_res)
        if reason:
            reasons.append(reason)
    if not fixed and centered_principal_point is True:
        c = fx.coarse
        P_fp = Problem(c.q, c.valid, c.uh, c.vh, Pc.cf, replace(Pc.model, free_pp=True), fx.mu, fx.sig, fx.smooth)
        if prefer_richer(score_statistic(P_fp, S, w, scale.clamp_min(BIC_SCALE_FLOOR)), 0.0, 2, n_res)[0]:
            reasons.append("the principal point is significantly off the image centre; use "
                           "centered_principal_point=None (automatic) or False")
    return reasons


def _fine_level(fx: _Fit, fit, fine: Sample, keep_f, iterations: int):
    """Stage 5: IRLS with the chosen model on the fine sub-grid; with ``robust="auto"``, Tukey
    weights when more than ``AUTO_GROSS_FRACTION`` of the coarse residuals are gross.
    Returns (problem, state, weights, scale, rounds, the robust loss used)."""
    Pc, S, _, scale = fit
    robust_f = fx.robust
    if fx.robust == "auto":
        gross = rb.gross_fraction(residual_norms(Pc, S), Pc.valid, scale)
        robust_f = "tukey" if gross > rb.AUTO_GROSS_FRACTION else "huber"
    out = fx.fit(Pc.model, S, fine, max(int(iterations), 1), robust_f, fx.reject, keep_f, lm_iter=2)
    return out + (robust_f,)


def fit_cameras(
    points: torch.Tensor,
    config: Optional[SolverConfig] = None,
    *,
    valid_mask: Optional[torch.Tensor] = None,
    device: Optional[str | torch.device] = None,
    callback: Optional[Callable[[int, int], object]] = None,
    K: Optional[torch.Tensor] = None,
    **options,
) -> CameraFit:
    """Recover intrinsics, poses and depth from XYZ point maps (4DNeX paper Sec. 4.3, Eqs. 9-10).

    Minimises, over K (one per clip or per frame), every frame's pose and a free depth per pixel,
    the robustly weighted squared distance between each point ``P[f,i,j]`` and its pixel's ray
    (the depth eliminated in closed form: the ray point nearest to the point), then snaps every
    point on its ray.  Replaces the official 1500-step Adam loop (official 3DTopia/4DNeX @ 1101bc6: ``pm_registration.py``; kept as a
    baseline in :mod:`fourd_core.testing.official_registration`).  See the module docstring for the stages.

    Per-frame re-centring: 4DNeX normalises every frame's map on its own (bounding-box centre,
    and a scale the VAE may jitter), so each frame may carry its own similarity (scale and
    translation).  Each frame has its own pose and is normalised by its own centre and spread,
    and frames are weighted by their own noise (chi-square units), so the fit is invariant to
    such a similarity: K and the rotations do not change, and each camera centre and depth map
    come out in that frame's own map frame, like the points.  Putting the frames in one common
    world needs cross-frame registration of the maps, which this function does not attempt.

    The options come from ``config`` (:class:`~.config.SolverConfig`, defaults there), each overridable
    by a keyword of the same name (``fit_cameras(points, shared_intrinsics=False)``).

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
    cfg = SolverConfig.of(config, **options)
    shared_intrinsics, square_pixels = cfg.shared_intrinsics, cfg.square_pixels
    centered_principal_point, robust, huber_delta = cfg.centered_principal_point, cfg.robust, cfg.huber_delta
    temporal_smoothness, iterations, outlier_threshold = cfg.temporal_smoothness, cfg.iterations, cfg.outlier_threshold
    robust_init, sample_pixels, refine_pixels = cfg.robust_init, cfg.sample_pixels, cfg.refine_pixels
    seed, chunk_pixels = cfg.seed, cfg.chunk_pixels
    validate_options(robust, huber_delta, temporal_smoothness, iterations)
    points, valid, _single = check_inputs(points, valid_mask, device)
    dev = points.device
    F, H, W, _ = points.shape
    s_pix, c0x, c0y = pixel_norm(H, W)
    total_steps = 6
    _callback(callback, 0, total_steps)
    fixed_kap = None if K is None else fixed_kappa(K, F, s_pix, c0x, c0y, dev)

    # 1-2. sample grid, normalisation, initialisation
    t0 = time.perf_counter()
    n_valid, stride, mu, sig, coarse = _sample(points, valid, valid_mask is not None, sample_pixels)
    fx = _Fit(points, valid, mu, sig, coarse, float(temporal_smoothness), huber_delta, robust_init, robust,
              robust_c=robust if robust not in ("none", "auto") else "huber",
              reject=None if (robust == "none" or outlier_threshold is None) else float(outlier_threshold),
              reject_c=float(outlier_threshold) if outlier_threshold is not None else None)
    keep = fx.keep(coarse)
    ev = check_not_collinear(coarse.q, keep.to(F64))
    init = initialise(coarse, keep, ev, robust_init=robust_init, shared_focal=shared_intrinsics is not False,
                      fixed_kap=fixed_kap, seed=seed)
    S = _initial_state(init, fixed_kap, shared_intrinsics)
    timings["init"] = time.perf_counter() - t0
    _callback(callback, 1, total_steps)

    # 3. coarse IRLS, with the richest principal-point model that may be chosen (all-planar maps
    # determine at most 8 of the 9 camera parameters: there it stays centred unless asked)
    t0 = time.perf_counter()
    auto_focal = fixed_kap is None and shared_intrinsics is None and F >= 3
    auto_pp = fixed_kap is None and centered_principal_point is None and not bool(init.planar.all())
    base = IntrinsicsModel(per_frame_focal=shared_intrinsics is False, square=bool(square_pixels),
                           free_pp=centered_principal_point is False or auto_pp, fixed=fixed_kap is not None)
    keep_w = keep.to(F64)
    Pc, S, w, scale, rescued = _coarse_level(fx, base, S, keep_w)
    check_focal(S.kap, H, W)
    timings["coarse"] = time.perf_counter() - t0
    _callback(callback, 2, total_steps)

    # 4. model selection (BIC), and the test of a model the caller forced
    t0 = time.perf_counter()
    coarse_fit, selection, pp_free_fit = _select_model(fx, (Pc, S, w, scale), keep_w, auto_focal=auto_focal,
                                                       auto_pp=auto_pp, s_pix=s_pix)
    forced_reasons = _forced_model_reasons(fx, coarse_fit, shared_intrinsics=shared_intrinsics,
                                           centered_principal_point=centered_principal_point,
                                           fixed=fixed_kap is not None)
    Pc, model = coarse_fit[0], coarse_fit[0].model
    timings["model_selection"] = time.perf_counter() - t0
    _callback(callback, 3, total_steps)

    # 5. fine level
    t0 = time.perf_counter()
    fstride = grid_stride(int(n_valid.min()), refine_pixels)
    fine = coarse if fstride == stride else sample_grid(points, valid, fstride, mu, sig)
    keep_f = keep_w if fine is coarse else fx.keep(fine).to(F64)
    Pf, S, w, scale, n_rounds, robust_f = _fine_level(fx, coarse_fit, fine, keep_f, iterations)
    check_focal(S.kap, H, W)
    timings["fine"] = time.perf_counter() - t0
    _callback(callback, 4, total_steps)

    # 6. uncertainty and honesty
    t0 = time.perf_counter()
    verdict = judge(points, valid, coarse, sig, Pc, (Pf, S, w, scale), pp_free_fit, fine, robust_c=fx.robust_c,
                    reject_c=fx.reject_c, reasons=forced_reasons, selection=selection)
    unc, reasons = verdict.uncertainty, verdict.reasons
    timings["checks"] = time.perf_counter() - t0

    # 7. outputs
    t0 = time.perf_counter()
    noise_world = scale * sig
    depth, resid, conf, behind, med_res, rms = write_outputs(points, valid, mu, sig, S.R, S.t, S.kap, noise_world,
                                                             chunk_pixels)
    timings["outputs"] = time.perf_counter() - t0
    _callback(callback, 5, total_steps)
    check_outputs(behind, med_res, sig, verdict.noise_map)
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
        "misfit": verdict.misfit,
        "robust_loss": robust_f,
        "inlier_fraction": verdict.inlier_fraction,
        "iterations": n_rounds,
        "lm_iterations": fx.lm_total,
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
