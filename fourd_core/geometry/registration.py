"""Point maps <-> cameras and depth (4DNeX Sec. 4.3, Eqs. 9-10): the public entry points.

* :func:`points_from_depth` unprojects depth maps (Eq. 10);
* :func:`prepare_4dnex_points` brings decoded 4DNeX XYZ into the registration convention;
* :func:`fit_cameras` (the solver, package :mod:`fourd_core.geometry.solver`) recovers K, poses
  and depth from point maps (Eq. 9).

The official post-optimisation (1500 Adam steps, official 3DTopia/4DNeX @ 1101bc6: ``pm_registration.py``) is a benchmark baseline in
:mod:`fourd_core.testing.official_registration`, not part of this production path.

Pixel convention (OpenCV): pixel (row i, column j) has its centre at (u, v) = (j, i); cameras use
OpenCV axes (x right, y down, z forward); ``K`` is in pixels; ``cam_to_world`` maps camera to
world coordinates; depth is z in the camera frame.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .solver import CameraFit, GeometryWarning, fit_cameras
from .solver.outputs import points_from_depth

__all__ = ["CameraFit", "GeometryWarning", "fit_cameras", "points_from_depth", "prepare_4dnex_points"]

_F64 = torch.float64


def prepare_4dnex_points(xyz01: torch.Tensor) -> torch.Tensor:
    """Bring decoded 4DNeX XYZ (in [0, 1]) into the registration convention.

    4DNeX decodes its XYZ video to ``p = (X_norm + 1) / 2`` in [0, 1] (official 3DTopia/4DNeX @ 1101bc6: ``inference.py``).  The
    official registration subtracts 0.5 from x and y only, so that x, y are centred on 0 and z stays
    in [0, 1], in front of a camera near the origin (official 3DTopia/4DNeX @ 1101bc6: ``inference.py``, ``pm_registration.py``).  This does the same.

    Args:
        xyz01: [F,H,W,3] or [H,W,3] floating tensor, normally in [0, 1] (values outside are kept).

    Returns:
        A new float32 (or float64 if given) tensor of the same shape: ``(x - 0.5, y - 0.5, z)``.

    Raises:
        InputError: if the last dimension is not 3 or the tensor is not floating point.
    """
    if not isinstance(xyz01, torch.Tensor) or not xyz01.is_floating_point():
        raise InputError("xyz01 must be a floating-point tensor [...,3] of decoded XYZ in [0, 1].")
    if xyz01.shape[-1] != 3:
        raise InputError(f"xyz01 must end with 3 channels (x, y, z); got shape {tuple(xyz01.shape)}.")
    out = xyz01.to(xyz01.dtype if xyz01.dtype == _F64 else torch.float32).clone()
    out[..., 0] -= 0.5
    out[..., 1] -= 0.5
    return out
