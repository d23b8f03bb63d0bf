"""Differentiable Gaussian-splat rasterisation: a pure-torch reference (CPU/GPU) and gsplat when present.

The forward model is the one of the 3DGS reference rasteriser (Kerbl et al. 2023, Sec. 4 and 6; the
same as gsplat's ``rasterization`` in its classic mode):

1. Project each Gaussian with the local affine (EWA) approximation: ``Sigma' = J W Sigma W^T J^T``
   with ``J`` the Jacobian of the pinhole projection at the mean (its x/z, y/z clamped to 1.3x the
   field of view, gsplat's rule), plus ``eps2d = 0.3`` px^2 on the diagonal (low-pass filter).
2. Per pixel, front to back by camera depth:
   ``alpha_i = min(0.99, o_i exp(-1/2 d^T Sigma'^-1 d))`` (skipped below 1/255),
   ``C = sum_i c_i alpha_i T_i + T_final * background``, ``T_i = prod_{j<i} (1 - alpha_j)``, stopping
   before the transmittance would fall below 1e-4.

The torch version enumerates (splat, pixel) pairs inside each splat's exact 1/255 bounding box
(``|d| <= sqrt(2 ln(255 o)) sigma`` per axis), sorts them by pixel (stable, so the depth order is kept),
and evaluates the transmittances as a segmented exclusive cumulative sum of ``log(1 - alpha)`` in
float64. Everything is autograd, so gradients are exact (checked against finite differences in the
tests). Memory is bounded by rendering horizontal bands of at most ``max_pairs`` pairs, and by capping
each projected footprint at a quarter of the image side (:func:`clip_footprint`, not in the reference).

Pixel convention: pixel (row i, column j) is centred at (u, v) = (j, i) (:mod:`fourd_core.geometry.render`);
gsplat puts centres at (j + 0.5, i + 0.5), so its ``K`` gets ``+0.5`` on ``cx, cy``.
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..registry import Registry
from .gaussians import Gaussians

__all__ = ["RASTERIZERS", "clip_footprint", "gsplat_available", "quat_to_rotmat", "rasterize_gsplat", "rasterize_torch",
           "rasterizer_names", "render_gaussians", "resolve_rasterizer"]

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
EPS2D = 0.3
#: cap on a projected splat's largest standard deviation, as a fraction of the larger image side
MAX_FOOTPRINT = 0.25


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[N, 3, 3]`` from quaternions ``[N, 4]`` (w, x, y, z), normalised here."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def gsplat_available(device) -> bool:
    """True when ``gsplat`` imports and ``device`` is a CUDA device (gsplat has no CPU path)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA extension build
        return False
    return True


def _check_camera(K, cam_to_world, height, width, device, dtype):
    K = torch.as_tensor(K, device=device, dtype=dtype)
    T = torch.as_tensor(cam_to_world, device=device, dtype=dtype)
    if K.shape != (3, 3) or T.shape != (4, 4):
        raise InputError(f"K must be [3, 3] and cam_to_world [4, 4]; got {list(K.shape)} and {list(T.shape)}.")
    if not (torch.isfinite(K).all() and torch.isfinite(T).all()):
        raise InputError("K or cam_to_world contains NaN or inf.")
    if int(height) < 1 or int(width) < 1:
        raise InputError(f"height and width must be positive; got {height}x{width}.")
    return K, T


def project(means, quats, scales, K, world_to_cam, height, width, eps2d=EPS2D):
    """EWA projection of 3D Gaussians.

    Args:
        means ``[N, 3]``, quats ``[N, 4]`` (w, x, y, z), scales ``[N, 3]`` (standard deviations),
        K ``[3, 3]``, world_to_cam ``[4, 4]``, image size.

    Returns:
        ``(means2d [N, 2] pixels, depth z [N], cov2d entries (a, b, c) [N] each: [[a, b], [b, c]])``.
    """
    R, t = world_to_cam[:3, :3], world_to_cam[:3, 3]
    p = means @ R.T + t
    x, y, z = p.unbind(-1)
    zs = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    u = fx * x / zs + K[0, 1] * y / zs + cx
    v = fy * y / zs + cy
    # Jacobian at the mean with the reference's field-of-view clamp (pixel-corner cx as gsplat uses it)
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - (cx + 0.5)) / fx + 0.3 * tan_x, (cx + 0.5) / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - (cy + 0.5)) / fy + 0.3 * tan_y, (cy + 0.5) / fy + 0.3 * tan_y
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_xn), lim_xp)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_yn), lim_yp)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / (zs * zs), zero, fy / zs, -fy * ty / (zs * zs)], -1).reshape(-1, 2, 3)
    Rq = quat_to_rotmat(quats)
    M = Rq * scales[:, None, :]  # R S
    cov3 = M @ M.transpose(1, 2)
    T = J @ R  # [N, 2, 3]
    cov2 = T @ cov3 @ T.transpose(1, 2)
    a = cov2[:, 0, 0] + eps2d
    b = cov2[:, 0, 1]
    c = cov2[:, 1, 1] + eps2d
    return torch.stack([u, v], -1), z, (a, b, c)


def clip_footprint(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, max_sigma: float):
    """Scale 2D covariances ``[[a, b], [b, c]]`` (``[N]`` each, pixels^2) so that the largest standard
    deviation is at most ``max_sigma`` pixels, keeping their shape; smaller ones are unchanged.

    Not in the 3DGS reference: a degenerate splat (near the camera plane, or seen through a
    near-180-degree camera) can otherwise cover the whole image many times over, which makes the
    enumerated (splat, pixel) pairs, the time and the memory of a fit explode. A healthy splat is far
    below the cap (a quarter of the image side by default). gsplat has no such cap.
    """
    half_diff = 0.5 * (a - c)
    lam = 0.5 * (a + c) + torch.sqrt(half_diff * half_diff + b * b)
    s = (max_sigma * max_sigma / lam.clamp_min(1e-30)).clamp(max=1.0)
    return a * s, b * s, c * s


def rasterize_torch(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                    colors: torch.Tensor, K, cam_to_world, height: int, width: int, background=None,
                    near: float = 0.01, max_pairs: int = 4_000_000, max_footprint: float = MAX_FOOTPRINT) -> dict:
    """Render Gaussians with the pure-torch differentiable rasteriser (see the module docstring).

    Args:
        means ``[N, 3]`` world, quats ``[N, 4]`` (w, x, y, z), scales ``[N, 3]`` standard deviations,
        opacities ``[N]`` in [0, 1], colors ``[N, C]`` (any C; RGB in [0, 1] usually), all one float dtype
        (float32, or float64 for gradient checks); K ``[3, 3]`` pixels; cam_to_world ``[4, 4]`` OpenCV.
        background: ``[C]`` colour of empty pixels (default 0).
        near: splats with camera depth <= near are culled.
        max_pairs: at most this many (splat, pixel) pairs per band (memory bound).
        max_footprint: projected covariances are scaled down so that no splat's largest standard
            deviation exceeds this fraction of ``max(height, width)`` (:func:`clip_footprint`).

    Returns:
        dict with ``image`` ``[H, W, C]``, ``alpha`` ``[H, W]`` (1 - final transmittance), ``depth``
        ``[H, W]`` (alpha-weighted camera z, not normalised), ``means2d`` ``[N, 2]`` (pixel
        positions; a non-leaf tensor that keeps its ``.grad`` for densification when it requires grad),
        ``radii`` ``[N]`` (half-extent of the 1/255 box in pixels, 0 = culled).

    Raises:
        InputError: bad camera or image size.
    """
    dev, dt = means.device, means.dtype
    H, W = int(height), int(width)
    K, c2w = _check_camera(K, cam_to_world, H, W, dev, dt)
    w2c = torch.linalg.inv(c2w)
    C = colors.shape[-1]
    bg = torch.zeros(C, device=dev, dtype=dt) if background is None else torch.as_tensor(background, device=dev, dtype=dt).expand(C)
    means2d, z, (a, b, c) = project(means, quats, scales, K, w2c, H, W)
    a, b, c = clip_footprint(a, b, c, max_footprint * max(H, W))
    det = a * c - b * b
    with torch.no_grad():
        ok = (z > near) & (det > 0) & (opacities * 255 > 1) & torch.isfinite(means2d).all(-1)
        ext = torch.sqrt(2 * torch.log((opacities * 255).clamp_min(1.0 + 1e-6)))
        hx, hy = ext * a.clamp_min(0).sqrt(), ext * c.clamp_min(0).sqrt()
        u, v = means2d[:, 0], means2d[:, 1]
        x0 = torch.ceil(u - hx).clamp(0, W).to(torch.int64)
        x1 = torch.floor(u + hx).clamp(-1, W - 1).to(torch.int64)
        y0 = torch.ceil(v - hy).clamp(0, H).to(torch.int64)
        y1 = torch.floor(v + hy).clamp(-1, H - 1).to(torch.int64)
        bw = (x1 - x0 + 1).clamp_min(0)
        ok &= (bw > 0) & (y1 >= y0)
        radii = torch.where(ok, torch.maximum(hx, hy), torch.zeros_like(hx))
        order = torch.argsort(torch.where(ok, z, torch.full_like(z, float("inf"))))
        order = order[ok[order]]
        total = int((bw[order] * (y1 - y0 + 1)[order]).sum())
        bands = max(1, math.ceil(total / max_pairs))
        edges = [round(k * H / bands) for k in range(bands + 1)]
    inv_det = 1.0 / det.clamp_min(1e-30)
    ca, cb, cc = c * inv_det, -b * inv_det, a * inv_det  # conic [[ca, cb], [cb, cc]]
    image = torch.zeros(H * W, C, device=dev, dtype=dt)
    depth = torch.zeros(H * W, device=dev, dtype=dt)
    log_t = torch.zeros(H * W, device=dev, dtype=torch.float64)
    for r0, r1 in zip(edges[:-1], edges[1:]):
        with torch.no_grad():
            ya, yb = y0[order].clamp_min(r0), y1[order].clamp_max(r1 - 1)
            hgt = (yb - ya + 1).clamp_min(0)
            cnt = bw[order] * hgt
            sel = cnt > 0
            g_ids, cnt, ya_s = order[sel], cnt[sel], ya[sel]
            n_pairs = int(cnt.sum())
            if n_pairs == 0:
                continue
            gid = torch.repeat_interleave(g_ids, cnt)
            starts = torch.cumsum(cnt, 0) - cnt
            local = torch.arange(n_pairs, device=dev) - torch.repeat_interleave(starts, cnt)
            wid = bw[gid]
            px = x0[gid] + local % wid
            py = torch.repeat_interleave(ya_s, cnt) + local // wid
            pix = py * W + px
            pix, perm = torch.sort(pix, stable=True)
            gid = gid[perm]
            px, py = px[perm], py[perm]
        dx = px.to(dt) - means2d[gid, 0]
        dy = py.to(dt) - means2d[gid, 1]
        power = -0.5 * (ca[gid] * dx * dx + cc[gid] * dy * dy) - cb[gid] * dx * dy
        alpha = (opacities[gid] * torch.exp(power.clamp_max(0))).clamp_max(ALPHA_MAX)
        alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
        la = torch.log1p(-alpha.to(torch.float64))
        cs = torch.cumsum(la, 0)
        excl = cs - la
        with torch.no_grad():
            first = torch.ones_like(pix, dtype=torch.bool)
            first[1:] = pix[1:] != pix[:-1]
            seg = torch.cumsum(first.to(torch.int64), 0) - 1
            start_idx = torch.nonzero(first).flatten()
        log_ti = excl - excl[start_idx][seg]
        with torch.no_grad():
            include = (log_ti + la) >= math.log(T_MIN)
        ti = torch.exp(log_ti).to(dt)
        wgt = torch.where(include, alpha * ti, torch.zeros_like(alpha))
        image = image.index_add(0, pix, wgt[:, None] * colors[gid])
        depth = depth.index_add(0, pix, wgt * z[gid])
        log_t = log_t.index_add(0, pix, torch.where(include, la, torch.zeros_like(la)))
    t_final = torch.exp(log_t).to(dt)
    image = image + t_final[:, None] * bg
    if means2d.requires_grad:
        means2d.retain_grad()                      # its .grad is what densification reads
    return {"image": image.reshape(H, W, C), "alpha": (1 - t_final).reshape(H, W), "depth": depth.reshape(H, W),
            "means2d": means2d, "radii": radii}


def rasterize_gsplat(means, quats, scales, opacities, colors, K, cam_to_world, height, width, background=None,
                     near: float = 0.01) -> dict:
    """The same forward model through ``gsplat.rasterization`` (CUDA only; classic mode, eps2d 0.3).

    Same arguments and outputs as :func:`rasterize_torch`; ``means2d`` is gsplat's ``[1, N, 2]`` (pixel-corner
    convention, +0.5 px; its ``.grad`` is what densification reads), ``depth`` gsplat's accumulated depth
    (``RGB+D``), background composited here as ``(1 - alpha) * background``.

    Raises:
        InputError: gsplat or CUDA missing.
    """
    if not gsplat_available(means.device):
        raise InputError("gsplat needs CUDA and the gsplat package (pip install gsplat); use backend='torch'.")
    import gsplat

    dev = means.device
    H, W = int(height), int(width)
    K, c2w = _check_camera(K, cam_to_world, H, W, dev, torch.float32)
    Kg = K.clone()
    Kg[0, 2] += 0.5
    Kg[1, 2] += 0.5
    C = colors.shape[-1]
    render, alphas, meta = gsplat.rasterization(
        means.float(), quats.float(), scales.float(), opacities.float(), colors.float(), torch.linalg.inv(c2w)[None],
        Kg[None], W, H, near_plane=near, render_mode="RGB+D", packed=False, eps2d=EPS2D, rasterize_mode="classic")
    m2d = meta["means2d"]
    if m2d.requires_grad:
        m2d.retain_grad()
    radii = meta["radii"][0]
    if radii.ndim == 2:  # gsplat >= 1.5: per-axis radii
        radii = radii.max(-1).values
    alpha = alphas[0, ..., 0]
    image = render[0, ..., :C]
    if background is not None:
        bg = torch.as_tensor(background, device=dev, dtype=image.dtype).expand(C)
        image = image + (1 - alpha[..., None]) * bg
    return {"image": image, "alpha": alpha, "depth": render[0, ..., C], "means2d": m2d, "radii": radii.float()}


# ----------------------------------------------------------------------------------------------
# The registry: choices of every rasteriser setting (FitConfig.backend, the CLI's --backend, the nodes)
class Rasterizer:
    """A registered rasteriser: ``available(device)`` and ``rasterize(...)`` with the arguments and outputs
    of :func:`rasterize_torch` (``means2d`` keeps its ``.grad`` for densification when it requires grad)."""

    def __init__(self, rasterize, available):
        self.rasterize, self.available = rasterize, available


RASTERIZERS: Registry[Rasterizer] = Registry("rasteriser")
RASTERIZERS.add("torch", Rasterizer(rasterize_torch, lambda device: True),
                help="pure-torch EWA rasteriser (CPU and GPU; differentiable, for small resolutions on a CPU)")
RASTERIZERS.add("gsplat", Rasterizer(rasterize_gsplat, gsplat_available),
                help="gsplat's CUDA rasteriser (pip install gsplat; CUDA only)")
AUTO = "auto"


def rasterizer_names() -> tuple[str, ...]:
    """``("auto", *registered)``: the choices of a rasteriser setting."""
    return (AUTO, *RASTERIZERS.names())


def rasterizer_help() -> str:
    """One line for help texts and tooltips: what ``auto`` picks and what each rasteriser is."""
    return "auto: gsplat on CUDA when installed, else torch; " + RASTERIZERS.describe()


def resolve_rasterizer(name: str, device) -> tuple[str, Rasterizer]:
    """``(name, rasteriser)`` for a setting: ``"auto"`` is gsplat when it is available on ``device``, else torch.

    Raises:
        InputError: an unknown name, or one that is not available on ``device`` (names the fix).
    """
    if name == AUTO:
        name = "gsplat" if "gsplat" in RASTERIZERS and RASTERIZERS.get("gsplat").available(device) else "torch"
    entry = RASTERIZERS.get(name)
    if not entry.available(device):
        raise InputError(f"The {name} rasteriser is not available here ({RASTERIZERS.help(name)}); use 'auto' or 'torch'.")
    return name, entry


def render_gaussians(g: Gaussians, K, cam_to_world, height: int, width: int, background=None,
                     backend: str = "auto", isotropic: bool = False, **kwargs) -> dict:
    """Render a :class:`Gaussians` set (colours from SH degree 0) with a registered rasteriser.

    Args:
        backend: a name of :func:`rasterizer_names` (``"auto"``: gsplat on CUDA when importable, else torch).
        isotropic: use ``log_scales[:, :1]`` on all three axes (rotation-free splats).
    Returns:
        see :func:`rasterize_torch`.
    Raises:
        InputError: an unknown or unavailable rasteriser.
    """
    scales = g.log_scales[:, :1].exp().expand(-1, 3) if isotropic else g.scales
    _, entry = resolve_rasterizer(backend, g.means.device)
    return entry.rasterize(g.means, g.quats, scales, g.opacities, g.colors, K, cam_to_world, height, width, background,
                           **kwargs)
