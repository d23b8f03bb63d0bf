"""Level 0: the data.  Input checks, pixel sampling, per-frame normalisation, local noise.

Pixel convention (OpenCV): pixel (row i, column j) has its centre at (u, v) = (j, i); the image
centre is ((W - 1) / 2, (H - 1) / 2).  The solver works in *normalised pixel coordinates*
``uh = (u - (W-1)/2) / s``, ``vh = (v - (H-1)/2) / s`` with ``s = max(H, W) / 2`` and in
*normalised frame coordinates* ``q = (p - mu_f) / sig_f`` (a robust centre and spread per frame),
so every number it handles is of order one whatever the image size and the units of the map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import GeometryError, InputError

F64 = torch.float64
MIN_PIXELS = 16


def as_points(points, name="points") -> tuple[torch.Tensor, bool]:
    """Validate a point map; returns ([F,H,W,3] tensor, whether it was a single [H,W,3] frame)."""
    if not isinstance(points, torch.Tensor):
        try:
            points = torch.as_tensor(points)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{name} must be a tensor or array of shape [F,H,W,3]; got {type(points).__name__}.") from exc
    if not points.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor (world coordinates); got dtype {points.dtype}.")
    single = points.dim() == 3
    if single:
        points = points[None]
    if points.dim() != 4 or points.shape[-1] != 3:
        raise InputError(
            f"{name} must have shape [F,H,W,3] (or [H,W,3] for one frame); got {tuple(points.shape)}. "
            "Reshape flat [F,H*W,3] maps to [F,H,W,3] first."
        )
    F, H, W, _ = points.shape
    if F < 1 or H < 2 or W < 2:
        raise InputError(f"{name} needs at least one frame of at least 2x2 pixels; got {tuple(points.shape)}.")
    return points, single


def check_inputs(points, valid_mask, device):
    """Points [F,H,W,3] on ``device``, a bool valid mask [F,H,W], and the single-frame flag.

    Raises InputError on bad shapes and GeometryError on NaN/inf at valid pixels.
    """
    points, single = as_points(points)
    if device is not None:
        points = points.to(device)
    F, H, W, _ = points.shape
    if valid_mask is None:
        valid = torch.ones(F, H, W, dtype=torch.bool, device=points.device)
    else:
        vm = torch.as_tensor(valid_mask, device=points.device)
        if vm.dim() == 2:
            vm = vm[None].expand(F, H, W)
        if tuple(vm.shape) != (F, H, W):
            raise InputError(f"valid_mask must be [F,H,W] or [H,W] matching points {tuple(points.shape)}; got {tuple(vm.shape)}.")
        valid = vm.to(torch.bool) if vm.dtype == torch.bool else vm > 0.5
    # fast path: NaN/inf propagate through the sum
    if valid_mask is None and bool(torch.isfinite(points.sum(dtype=F64 if points.dtype == F64 else torch.float32))):
        return points, valid, single
    finite = torch.isfinite(points).all(-1)
    bad = valid & ~finite
    if bad.any():
        frames = torch.nonzero(bad.flatten(1).any(1)).flatten().tolist()
        n_nan = int((torch.isnan(points).any(-1) & valid).sum())
        raise GeometryError(
            f"points contain non-finite values at {int(bad.sum())} valid pixels ({n_nan} NaN, {int(bad.sum()) - n_nan} inf) "
            f"in frame(s) {frames[:10]}{'...' if len(frames) > 10 else ''}. Clean the point map, or pass "
            "valid_mask=torch.isfinite(points).all(-1) to exclude those pixels."
        )
    return points, valid, single


def pixel_norm(H: int, W: int) -> tuple[float, float, float]:
    """(s, c0x, c0y): the normalisation of pixel coordinates (see the module docstring)."""
    return max(H, W) / 2.0, (W - 1) / 2.0, (H - 1) / 2.0


@dataclass
class Sample:
    """Points of a regular pixel sub-grid, in normalised coordinates (float64).

    q [F,N,3] normalised points (0 at invalid pixels); valid [F,N] bool; uh, vh [N] normalised
    pixel coordinates; ii, jj [N] pixel rows / columns; shape (h, w) of the sub-grid.
    """

    q: torch.Tensor
    valid: torch.Tensor
    uh: torch.Tensor
    vh: torch.Tensor
    ii: torch.Tensor
    jj: torch.Tensor
    shape: tuple


def grid_stride(n_valid_min: int, target: int) -> int:
    """Stride of a regular sub-grid holding about ``target`` of ``n_valid_min`` pixels."""
    return max(1, int(math.ceil(math.sqrt(max(n_valid_min, 1) / max(int(target), 16)) - 1e-9)))


def sample_grid(points, valid, stride: int, mu=None, sig=None) -> Sample:
    """The sub-grid of every ``stride``-th pixel (offset stride // 2), normalised by mu [F,3], sig [F]."""
    F, H, W, _ = points.shape
    dev = points.device
    s, c0x, c0y = pixel_norm(H, W)
    si = torch.arange(stride // 2, H, stride, device=dev)
    sj = torch.arange(stride // 2, W, stride, device=dev)
    ii = si[:, None].expand(len(si), len(sj)).reshape(-1)
    jj = sj[None, :].expand(len(si), len(sj)).reshape(-1)
    p = points[:, si][:, :, sj].reshape(F, -1, 3).to(F64)
    v = valid[:, si][:, :, sj].reshape(F, -1)
    if mu is not None:
        p = (p - mu[:, None]) / sig[:, None, None]
    p = torch.where(v[..., None], p, torch.zeros_like(p))
    return Sample(q=p, valid=v, uh=(jj.to(F64) - c0x) / s, vh=(ii.to(F64) - c0y) / s, ii=ii, jj=jj,
                  shape=(len(si), len(sj)))


def frame_normalisation(p: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust centre mu [F,3] (median) and spread sig [F] (median distance) of sampled points.

    Raises GeometryError for constant frames.
    """
    pn = torch.where(v[..., None], p, torch.nan)
    mu = torch.nanmedian(pn, dim=1).values
    dist = torch.where(v, (p - mu[:, None]).norm(dim=-1), torch.nan)
    sig = torch.nanmedian(dist, dim=1).values
    mag = mu.norm(dim=-1).clamp_min(1e-30)
    bad = ~(torch.isfinite(sig) & (sig > 1e-7 * mag) & (sig > 0))
    if bad.any():
        raise GeometryError(
            f"frame(s) {torch.nonzero(bad).flatten().tolist()[:10]} are constant (all points at the same place), so no "
            "camera can be fitted. Check that the XYZ decoding produced a real point map (not a blank or saturated frame)."
        )
    return mu, sig


def check_not_collinear(q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues [F,3] (ascending) of the weighted point covariance; raises if a frame is a line."""
    ws = w.sum(1).clamp_min(1e-300)
    m = (w[..., None] * q).sum(1) / ws[:, None]
    qc = q - m[:, None]
    C = torch.einsum("fn,fna,fnb->fab", w, qc, qc) / ws[:, None, None]
    ev = torch.linalg.eigvalsh(C)
    line = ev[:, 1] < 1e-10 * ev[:, 2]
    if line.any():
        raise GeometryError(
            f"the points of frame(s) {torch.nonzero(line).flatten().tolist()[:10]} lie on a line; a camera cannot be "
            "recovered from them. Check the point map (it should be a surface seen by the camera)."
        )
    return ev


def neighbour_score(points, valid, ii, jj) -> torch.Tensor:
    """Local outlier score [F,S] of sampled pixels: the 2nd smallest distance to their 4 neighbours.

    A surface point has close neighbours; an isolated gross outlier has none.  inf where fewer
    than two valid neighbours.
    """
    F, H, W, _ = points.shape
    offs = torch.tensor([(-1, 0), (1, 0), (0, -1), (0, 1)], device=points.device)
    ni = ii[:, None] + offs[None, :, 0]
    nj = jj[:, None] + offs[None, :, 1]
    inside = (ni >= 0) & (ni < H) & (nj >= 0) & (nj < W)
    flat = (ni.clamp(0, H - 1) * W + nj.clamp(0, W - 1)).reshape(-1)
    pf = points.reshape(F, H * W, 3)
    centre = pf.index_select(1, ii * W + jj)
    nb = pf.index_select(1, flat).reshape(F, -1, 4, 3)
    d = (nb - centre[:, :, None]).norm(dim=-1).to(F64)
    ok = valid.reshape(F, H * W).index_select(1, flat).reshape(F, -1, 4) & inside[None] & torch.isfinite(d)
    d = torch.where(ok, d, torch.full_like(d, float("inf")))
    return torch.kthvalue(d, 2, dim=-1).values


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value (1-based) along the last dimension: ``torch.kthvalue(x, k, -1).values``.

    x: [..., n] floating tensor; k in 1..n.  Returns [...] in the dtype and on the device of x.
    On the CPU (without grad) through numpy's introselect (``np.partition``), about 7x faster than
    ``torch.kthvalue`` on the [F, hypotheses, points] arrays the initialisation scores (torch 2.13,
    one thread); elsewhere ``torch.kthvalue``.  NaN counts as the largest value in both.

    Raises:
        ValueError (numpy) / IndexError or RuntimeError (torch): k outside 1..n.
    """
    if x.device.type != "cpu" or x.requires_grad:
        return torch.kthvalue(x, k, dim=-1).values
    import numpy as np

    a = np.partition(x.detach().contiguous().numpy(), k - 1, axis=-1)[..., k - 1]
    return torch.from_numpy(np.ascontiguousarray(a))


# 10 % quantile of a chi distribution with 3 degrees of freedom (|n| for n ~ N(0, I_3))
_CHI3_Q10 = 0.7645


def local_noise(points, valid, ii, jj) -> torch.Tensor:
    """Noise std per coordinate [F] read off the map itself, without any camera.

    The second difference ``p[i, j-1] - 2 p[i, j] + p[i, j+1]`` (and the same along columns) of a
    smooth surface is mostly noise, of covariance 6 sigma^2 I; its norm follows a scaled chi(3)
    distribution.  The 10 % quantile is used (robust to 30 % outliers, which spoil two thirds of
    the triplets) and the smaller of the two directions.  An upper bound of the noise when the
    surface is curved at the pixel scale.
    """
    F, H, W, _ = points.shape
    pf = points.reshape(F, H * W, 3)
    vf = valid.reshape(F, H * W)
    out = []
    for di, dj in ((0, 1), (1, 0)):
        ok = (ii - di >= 0) & (ii + di < H) & (jj - dj >= 0) & (jj + dj < W)
        i0, j0 = ii[ok], jj[ok]
        a = (i0 - di) * W + (j0 - dj)
        b = i0 * W + j0
        c = (i0 + di) * W + (j0 + dj)
        d2 = (pf[:, a] - 2 * pf[:, b] + pf[:, c]).to(F64).norm(dim=-1)
        vv = vf[:, a] & vf[:, b] & vf[:, c]
        d2 = torch.where(vv, d2, torch.nan)
        out.append(torch.nanquantile(d2, 0.1, dim=1) / (_CHI3_Q10 * math.sqrt(6.0)))
    return torch.minimum(out[0], out[1])
