"""Point maps <-> cameras and depth (4DNeX Sec. 4.3, Eqs. 9-10): the public entry points.

* :func:`points_from_depth` unprojects depth maps (Eq. 10);
* :func:`prepare_4dnex_points` brings decoded 4DNeX XYZ into the registration convention;
* :func:`fit_cameras` (the solver, package :mod:`fourd_core.geometry.solver`) recovers K, poses
  and depth from point maps (Eq. 9).

The official post-optimisation (1500 Adam steps, 4dnex.md section 8) is a benchmark baseline in
:mod:`fourd_core.geometry.baselines`, not part of this production path.

Pixel convention (OpenCV): pixel (row i, column j) has its centre at (u, v) = (j, i); cameras use
OpenCV axes (x right, y down, z forward); ``K`` is in pixels; ``cam_to_world`` maps camera to
world coordinates; depth is z in the camera frame.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .solver import CameraFit, GeometryWarning, fit_cameras

__all__ = ["CameraFit", "GeometryWarning", "fit_cameras", "points_from_depth", "prepare_4dnex_points"]

_F64 = torch.float64


def points_from_depth(depth: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    """Unproject depth maps into world points (paper Eq. 10: ``X = R (d K^-1 [u, v, 1]^T) + t``).

    Args:
        depth: [F,H,W] (or [H,W]) z-depth in the camera frame, world units.
        K: [F,3,3] or [3,3] pinhole intrinsics in pixels (skew allowed).
        cam_to_world: [F,4,4] or [4,4] OpenCV camera-to-world poses.

    Returns:
        [F,H,W,3] world points (or [H,W,3] when ``depth`` is [H,W]), in the dtype of ``depth``
        (float32 at least); pixel (i, j) is taken at (u, v) = (j, i) (OpenCV, integer centres).

    Raises:
        InputError: on shapes that do not match or a non-floating ``depth``.
    """
    if not isinstance(depth, torch.Tensor) or not depth.is_floating_point():
        raise InputError("depth must be a floating-point tensor [F,H,W] or [H,W].")
    single = depth.dim() == 2
    d = depth[None] if single else depth
    if d.dim() != 3:
        raise InputError(f"depth must be [F,H,W] or [H,W]; got {tuple(depth.shape)}.")
    F, H, W = d.shape
    K = torch.as_tensor(K, device=d.device)
    T = torch.as_tensor(cam_to_world, device=d.device)
    if K.shape[-2:] != (3, 3) or T.shape[-2:] != (4, 4):
        raise InputError(f"K must be [...,3,3] and cam_to_world [...,4,4]; got {tuple(K.shape)} and {tuple(T.shape)}.")
    K = K.expand(F, 3, 3) if K.dim() == 2 else K
    T = T.expand(F, 4, 4) if T.dim() == 2 else T
    if K.shape[0] != F or T.shape[0] != F:
        raise InputError(f"K and cam_to_world need {F} frames (or one); got {K.shape[0]} and {T.shape[0]}.")
    out_dtype = d.dtype if d.dtype == _F64 else torch.float32
    Kinv = torch.linalg.inv(K.to(_F64))
    jj = torch.arange(W, dtype=_F64, device=d.device)
    ii = torch.arange(H, dtype=_F64, device=d.device)
    pix = torch.stack([jj[None, :].expand(H, W), ii[:, None].expand(H, W), torch.ones(H, W, dtype=_F64, device=d.device)], -1)
    rays = torch.einsum("fab,hwb->fhwa", Kinv, pix)  # z component 1 (K's last row is [0,0,1])
    rays = rays / rays[..., 2:3]
    Xc = rays * d.to(_F64)[..., None]
    Tw = T.to(_F64)
    X = torch.einsum("fab,fhwb->fhwa", Tw[:, :3, :3], Xc) + Tw[:, None, None, :3, 3]
    X = X.to(out_dtype)
    return X[0] if single else X


def prepare_4dnex_points(xyz01: torch.Tensor) -> torch.Tensor:
    """Bring decoded 4DNeX XYZ (in [0, 1]) into the registration convention.

    4DNeX decodes its XYZ video to ``p = (X_norm + 1) / 2`` in [0, 1] (4dnex.md section 7).  The
    official registration subtracts 0.5 from x and y only, so that x, y are centred on 0 and z stays
    in [0, 1], in front of a camera near the origin (4dnex.md sections 7-8).  This does the same.

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
