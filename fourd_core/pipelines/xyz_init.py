"""XYZ initialisation and the XYZ latent normalisation of 4DNeX.

4DNeX (Sec. 4.2, Eq. 6; official code: official 3DTopia/4DNeX @ 1101bc6: ``inference.py``, ``wan_dataset.py``) conditions
the XYZ half of the first frame on a fixed "sloped plane" and trains the XYZ latents with one extra
scalar normalisation on top of the VAE's per-channel one.

Conventions: point maps are channels-last ``[..., H, W, 3]`` float tensors; in VAE input space
values lie in ``[-1, 1]``; decoded 4DNeX point maps lie in ``[0, 1]`` (``x / 2 + 0.5``).
"""

from __future__ import annotations

import torch

from ..errors import InputError

#: Scalar XYZ latent statistics of 4DNeX (paper Sec. 4.2; official code constants, 3DTopia/4DNeX @ 1101bc6: ``wan_dataset.py``, ``inference.py``).
XYZ_LATENT_MEAN = -0.13
XYZ_LATENT_STD = 1.70


def sloped_plane(height: int, width: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The 4DNeX first-frame XYZ initialisation, in VAE input space.

    For row ``i`` (0 at the top) and column ``j``::

        X = 2 j / (W - 1) - 1,   Y = 2 i / (H - 1) - 1,   Z = 1 - 2 i / (H - 1) = -Y

    i.e. a plane tilted about the x axis, far at the top and near at the bottom. The released LoRA
    was trained with ``Z = -Y`` (the official code; a third-party transcription of the paper's
    Eq. 6 has ``Z = +Y``, which the weights do not match). See the official 3DTopia/4DNeX @ 1101bc6 ``inference.py``

    Args:
        height, width: pixel size of one modality (e.g. 480, 720); both >= 2.
    Returns:
        ``[H, W, 3]`` tensor in ``[-1, 1]``.
    Raises:
        InputError: if ``height`` or ``width`` is below 2.
    """
    if height < 2 or width < 2:
        raise InputError(f"sloped_plane needs height and width >= 2, got {height}x{width}.")
    i = torch.arange(height, dtype=torch.float64, device=device)
    j = torch.arange(width, dtype=torch.float64, device=device)
    x = (2 * j / (width - 1) - 1).view(1, width).expand(height, width)
    y = (2 * i / (height - 1) - 1).view(height, 1).expand(height, width)
    return torch.stack([x, y, -y], dim=-1).to(dtype)


def xyz_from_depth(depth: torch.Tensor, *, fov_deg: float = 60.0, percentile: float = 0.02) -> torch.Tensor:
    """A first-frame XYZ condition built from a user depth map, normalised like the 4DNeX training data.

    The depth is back-projected with a pinhole camera of horizontal field of view ``fov_deg``
    (OpenCV axes, principal point at the centre), then normalised the way ``build_wan_dataset.py``
    normalises training point maps (official 3DTopia/4DNeX @ 1101bc6: ``build_wan_dataset.py``, ``wan_dataset.py``): per-axis clipping to the
    ``[percentile, 1 - percentile]`` quantiles, removal of the bounding-box centre, division by the
    largest half-extent, giving values in ``[-1, 1]`` (VAE input space).

    Args:
        depth: ``[H, W]`` float tensor, positive z-depth in any unit (larger = farther). A
            disparity-like map (larger = nearer) must be inverted by the caller.
        fov_deg: assumed horizontal field of view in degrees, in (1, 179).
        percentile: quantile clipped at each end, in [0, 0.5).
    Returns:
        ``[H, W, 3]`` float32 tensor in ``[-1, 1]``.
    Raises:
        InputError: for a non-2D, non-finite, non-positive or constant depth map, or bad fov.
    """
    if depth.ndim != 2:
        raise InputError(f"xyz_from_depth expects a [H, W] depth map, got shape {tuple(depth.shape)}.")
    if not 1.0 < fov_deg < 179.0:
        raise InputError(f"fov_deg must be in (1, 179) degrees, got {fov_deg}.")
    d = depth.to(torch.float64)
    if not torch.isfinite(d).all():
        raise InputError("The depth map contains NaN or inf values; fill or mask them before using it as XYZ init.")
    if (d <= 0).any():
        raise InputError("The depth map must be strictly positive z-depth (larger = farther). "
                         "If it is a disparity or inverse-depth map, invert it first.")
    if float(d.max() - d.min()) <= 1e-8 * float(d.abs().max()):
        raise InputError("The depth map is constant; it carries no geometry. Use the sloped plane instead.")
    h, w = d.shape
    f = (w / 2) / torch.tan(torch.deg2rad(torch.tensor(fov_deg / 2, dtype=torch.float64)))
    u = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    v = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    x = u.view(1, w) / f * d
    y = v.view(h, 1) / f * d
    pts = torch.stack([x, y, d], dim=-1).reshape(-1, 3)
    lo = torch.quantile(pts, percentile, dim=0)
    hi = torch.quantile(pts, 1 - percentile, dim=0)
    pts = torch.maximum(torch.minimum(pts, hi), lo)
    mn, mx = pts.min(0).values, pts.max(0).values
    centre = (mn + mx) / 2
    scale = ((mx - mn) / 2).max().clamp_min(1e-12)
    return ((pts - centre) / scale).reshape(h, w, 3).clamp(-1, 1).to(torch.float32)


def normalize_xyz_latents(latents: torch.Tensor) -> torch.Tensor:
    """Modality normalisation of VAE-normalised XYZ latents: ``(z - mu) / sigma`` (4DNeX Sec. 4.2).

    Args:
        latents: any-shape tensor already normalised with the VAE's per-channel statistics.
    Returns:
        tensor of the same shape and dtype.
    """
    return (latents - XYZ_LATENT_MEAN) / XYZ_LATENT_STD


def denormalize_xyz_latents(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_xyz_latents`: ``z * sigma + mu`` (official 3DTopia/4DNeX @ 1101bc6: ``wan_dataset.py``, ``inference.py``).

    Applied to the XYZ half of generated latents *before* the VAE's own de-normalisation.
    """
    return latents * XYZ_LATENT_STD + XYZ_LATENT_MEAN
