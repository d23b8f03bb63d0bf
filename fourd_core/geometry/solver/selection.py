"""Level 4b: which focal model the maps need (one focal, a smooth zoom, or one per frame).

Nested models, each tested with the score statistic at the simpler model's optimum against the
BIC penalty (:mod:`.observability`):

1. one focal for the clip (the start);
2. a smooth zoom, ``log focal`` a polynomial of degree 3 in time (3 extra parameters): a real
   zoom is smooth, and a test with few parameters detects it in noise where one focal per frame
   (F - 1 extra parameters, a penalty 16x larger at 49 frames) does not;
3. one focal per frame, tested at the optimum of the richer of 1-2 (a focal that jumps).

A richer model is fitted only when its test passes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .model import IntrinsicsModel
from .observability import prefer_richer, score_statistic
from .refine import Problem

#: degree of the smooth-zoom polynomial of the log focal
ZOOM_DEGREE = 3


def _test(P: Problem, rich: IntrinsicsModel, S, w, scale, n_res: int):
    P_r = Problem(P.q, P.valid, P.uh, P.vh, P.cf, rich, P.mu, P.sig, P.smooth)
    stat = score_statistic(P_r, S, w, scale)
    return prefer_richer(stat, 0.0, rich.n_params(P.q.shape[0]) - P.model.n_params(P.q.shape[0]), n_res)


def select_focal(P: Problem, S, w, scale, n_res: int, refit: Callable):
    """Choose the focal model from the fit ``(P, S, w, scale)`` with one focal (``P.model``).

    ``refit(model, S)`` fits a model from state S and returns ``(P, S, w, scale)``.
    Returns (P, S, w, scale) of the chosen model (``P.model``) and the selection record for ``info``.
    """
    F = P.q.shape[0]
    record = {}
    deg = min(ZOOM_DEGREE, F - 2)
    if deg >= 1:
        m_sm = replace(P.model, zoom_degree=deg)
        rich, ratio = _test(P, m_sm, S, w, scale, n_res)
        record["smooth_zoom"] = {"chosen": rich, "loss_drop_over_penalty": round(ratio, 3)}
        if rich:
            P, S, w, scale = refit(m_sm, S.copy())
    m_pf = replace(P.model, per_frame_focal=True, zoom_degree=0)
    rich, ratio = _test(P, m_pf, S, w, scale, n_res)
    record["per_frame_focal"] = {"chosen": rich, "loss_drop_over_penalty": round(ratio, 3)}
    if rich:
        P, S, w, scale = refit(m_pf, S.copy())
    return P, S, w, scale, record


def forced_shared_focal_reason(P: Problem, S, w, scale, n_res: int):
    """A warning text when one focal was forced but a smooth zoom or per-frame focal fits
    significantly better (None otherwise)."""
    F = P.q.shape[0]
    tests = [replace(P.model, per_frame_focal=True, zoom_degree=0)]
    if F >= 3:
        tests.insert(0, replace(P.model, zoom_degree=min(ZOOM_DEGREE, F - 2)))
    if any(_test(P, m, S, w, scale, n_res)[0] for m in tests):
        return ("one K does not explain the maps: the focal length changes between frames (a zoom); "
                "use shared_intrinsics=None (automatic) or False")
    return None
