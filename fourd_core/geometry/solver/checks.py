"""Checks of :func:`~.fit.fit_cameras`' options and of a fitted focal length (used by :mod:`.fit`)."""

from __future__ import annotations

import math

import torch

from ...errors import GeometryError, InputError
from . import robust as rb
from .data import F64
from .model import kappa_from_K


def validate_options(robust, huber_delta, temporal_smoothness, iterations):
    """Raise InputError on a bad robust loss, threshold, smoothness weight or iteration count."""
    if robust not in rb.ROBUST:
        raise InputError(f"robust must be one of {rb.ROBUST}; got {robust!r}.")
    if huber_delta is not None and not (math.isfinite(huber_delta) and huber_delta > 0):
        raise InputError(f"huber_delta must be a positive finite number (world units) or None; got {huber_delta}.")
    if not (math.isfinite(temporal_smoothness) and temporal_smoothness >= 0):
        raise InputError(f"temporal_smoothness must be >= 0; got {temporal_smoothness}.")
    if int(iterations) < 1:
        raise InputError(f"iterations must be >= 1; got {iterations}.")


def fixed_kappa(K, F, s, c0x, c0y, dev):
    """A known K ([3,3] or [F,3,3], zero skew) as normalised intrinsics [F,4]; InputError if bad."""
    Kt = torch.as_tensor(K, device=dev).to(F64)
    if Kt.shape[-2:] != (3, 3) or Kt.dim() not in (2, 3) or (Kt.dim() == 3 and Kt.shape[0] not in (1, F)):
        raise InputError(f"K must be [3,3] or [F,3,3] with F={F}; got {tuple(Kt.shape)}.")
    Kt = Kt.expand(F, 3, 3)
    if not torch.isfinite(Kt).all() or (Kt[:, 0, 0] <= 0).any() or (Kt[:, 1, 1] <= 0).any():
        raise InputError("K must be finite with positive focal lengths.")
    if (Kt[:, 0, 1].abs() > 1e-9 * Kt[:, 0, 0]).any():
        raise InputError("K with skew is not supported; set K[0,1] = 0.")
    return kappa_from_K(Kt, s, c0x, c0y)


def check_focal(kap, H, W):
    """GeometryError when the fitted focal [F,4 kappa] is not finite or unbounded (affine map)."""
    if not torch.isfinite(kap).all():
        raise GeometryError(
            "the fitted focal length is not finite: the map does not look like a perspective view (a mirrored map, or "
            "an affine/orthographic one such as the XYZ initialisation plane). Check the axis convention "
            "(x right, y down, z forward) or pass a known K."
        )
    fmax = float(torch.exp(kap[:, :2]).max()) * max(H, W) / 2
    if fmax > 100 * max(H, W):
        raise GeometryError(
            f"the fitted focal length ({fmax:.3g} px) is unbounded: the map is (nearly) an affine image of the pixel "
            "grid (orthographic, a plane facing the camera, or the XYZ initialisation plane), so the focal length is "
            "unobservable. Pass a known K, or check the decoded XYZ."
        )
