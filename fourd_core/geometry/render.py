"""Novel-view rendering of coloured points with a z-buffer (the freeze-time column of 4Real-Video
Sec. 3.3 and the trajectory render of 4DNeX Sec. 4).

Points (e.g. one frame of a :class:`~fourd_core.geometry.registration.CameraFit`'s ``points`` with
the RGB frame as colours) are projected into any pinhole camera and splatted as squares of
``point_size`` pixels; the nearest point wins each pixel.  The z-buffer (:func:`zbuffer_splat`) is
one vectorised ``scatter_reduce(amin)`` over 64-bit keys ``(float32 bits of the depth) << 32 |
point index``: for positive floats the bit pattern orders like the value, so the minimum key is the
nearest point, and its low 32 bits say which point it is.  Larger splats are a minimum filter over
that 1-pixel buffer (the same result as scattering every pixel of every square, at the cost of
one scatter).  Works on CPU and GPU.  The freeze-time render (:mod:`.novel_view`) and the
trajectory render (:mod:`.trajectory`) both use it.

Conventions: OpenCV camera axes (x right, y down, z forward), ``K`` in pixels, ``cam_to_world``
[4,4]; pixel (row i, column j) has its centre at (u, v) = (j, i), so a point lands in pixel
``(round(v), round(u))``.  Depth is z in the camera frame.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from ..errors import InputError

__all__ = ["render_points", "project_points", "zbuffer_splat"]

_NO_HIT = torch.iinfo(torch.int64).max


def _as_matrix(x, shape, name, device):
    t = torch.as_tensor(x, device=device)
    if tuple(t.shape) != shape:
        raise InputError(f"{name} must have shape {list(shape)}; got {list(t.shape)}.")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or inf.")
    return t


def project_points(points: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor):
    """Project world points into a camera (pinhole, OpenCV axes).

    Args:
        points: [...,3] world points (any float dtype).
        K: [3,3] intrinsics in pixels.
        cam_to_world: [4,4] camera-to-world pose.

    Returns:
        (uv [...,2] pixel coordinates (u = column, v = row, integer at pixel centres),
        z [...] depth in the camera frame), float32.  Points with z <= 0 get meaningless uv.

    Raises:
        InputError: on wrong shapes or non-finite K / pose.
    """
    if not isinstance(points, torch.Tensor) or points.shape[-1] != 3 or not points.is_floating_point():
        raise InputError("points must be a floating-point tensor [...,3].")
    dev = points.device
    Kd = _as_matrix(K, (3, 3), "K", dev)
    T = _as_matrix(cam_to_world, (4, 4), "cam_to_world", dev)
    R, t = T[:3, :3], T[:3, 3]
    P = points.reshape(-1, 3).to(torch.float64)
    X = (P - t) @ R  # R^T (p - t), row vectors
    z = X[:, 2]
    zs = torch.where(z.abs() > 1e-300, z, torch.ones_like(z))
    x, y = X[:, 0] / zs, X[:, 1] / zs
    u = Kd[0, 0] * x + Kd[0, 1] * y + Kd[0, 2]
    v = Kd[1, 1] * y + Kd[1, 2]
    uv = torch.stack([u, v], -1).reshape(*points.shape[:-1], 2)
    return uv.to(torch.float32), z.reshape(points.shape[:-1]).to(torch.float32)


def render_points(
    points: torch.Tensor,
    colors: torch.Tensor,
    K: torch.Tensor,
    cam_to_world: torch.Tensor,
    height: int,
    width: int,
    point_size: int = 1,
    background: Union[float, Sequence[float], torch.Tensor] = 0.0,
    near: float = 1e-6,
):
    """Render coloured points into a camera with a z-buffer.

    Args:
        points: [N,3] or [H',W',3] world points; non-finite points are skipped.
        colors: same leading shape with 3 channels, float in [0, 1] (uint8 is divided by 255).
        K: [3,3] intrinsics in pixels; cam_to_world: [4,4] OpenCV pose of the rendering camera.
        height, width: output size in pixels.
        point_size: side of the square splat in pixels (1 = one pixel; 3 = the pixel and its
            8 neighbours; even sizes extend right/down).
        background: grey level or RGB in [0, 1] for pixels no point covers.
        near: points with camera depth z <= near (behind or on the camera) are dropped.

    Returns:
        (image [height,width,3] float32 in [0,1], valid [height,width] bool (covered pixels),
        depth [height,width] float32 camera z of the visible point, 0 where not covered), on the
        device of ``points``.

    Raises:
        InputError: mismatched shapes, non-positive sizes, more than 2^32 points, bad background.

    Used by the grid sampler for its freeze-time input (4Real-Video Sec. 3.3) and the trajectory render.
    """
    if not isinstance(points, torch.Tensor) or points.shape[-1] != 3 or not points.is_floating_point():
        raise InputError("points must be a floating-point tensor [N,3] or [H,W,3].")
    if not isinstance(colors, torch.Tensor) or colors.shape != points.shape:
        raise InputError(f"colors must be a tensor shaped like points {list(points.shape)}; got "
                         f"{None if not isinstance(colors, torch.Tensor) else list(colors.shape)}.")
    bg = background_color(background, points.device)
    index, depth = zbuffer_splat(points, K, cam_to_world, height, width, point_size=point_size, near=near)
    valid = index >= 0
    return gather_colors(colors.reshape(-1, 3), index, bg), valid, depth


def background_color(background: Union[float, Sequence[float], torch.Tensor], device=None) -> torch.Tensor:
    """``background`` (a grey level or 3 values in [0, 1]) as a float32 [3] tensor.

    Raises:
        InputError: not 1 or 3 finite numbers.
    """
    bg = torch.as_tensor(background, dtype=torch.float32, device=device).flatten()
    if bg.numel() not in (1, 3) or not torch.isfinite(bg).all():
        raise InputError("background must be a number or 3 numbers in [0, 1].")
    return bg.expand(3).clone()


def gather_colors(colors: torch.Tensor, index: torch.Tensor, background: torch.Tensor, out: torch.Tensor | None = None):
    """The image of a z-buffer: ``colors[index]`` where ``index >= 0``, ``background`` elsewhere.

    Args:
        colors: [N,3] float in [0, 1] (clamped) or uint8 (divided by 255).
        index: [H,W] int64 from :func:`zbuffer_splat` (-1 = no point).
        background: [3] float32 (:func:`background_color`).
        out: optional [H,W,3] float32 tensor to write into (e.g. a frame of a preallocated video).

    Returns:
        [H,W,3] float32 (``out`` when given).
    """
    table = colors.to(torch.float32) / 255.0 if not colors.is_floating_point() else colors.to(torch.float32).clamp(0.0, 1.0)
    table = torch.cat([table, background.to(table.device, torch.float32).reshape(1, 3)])
    img = table[index]  # index -1 picks the appended background row
    if out is None:
        return img
    out.copy_(img)
    return out


def zbuffer_splat(
    points: torch.Tensor,
    K: torch.Tensor,
    cam_to_world: torch.Tensor,
    height: int,
    width: int,
    point_size: int = 1,
    near: float = 1e-6,
    with_depth: bool = True,
):
    """The z-buffer: which point is visible in each pixel of a camera (square splats).

    Every point is projected (pinhole, OpenCV axes, see the module docstring) and covers the square
    of ``point_size`` pixels around the pixel it lands in (offsets ``-(s-1)//2 .. s-1-(s-1)//2``
    in rows and columns, so even sizes extend right/down); in each pixel the nearest covering
    point wins (ties: the lower index).  Implementation: one 1-pixel ``scatter_reduce(amin)`` of
    64-bit keys (depth bits << 32 | index) into a buffer padded by ``point_size - 1``, then a
    separable ``point_size x point_size`` minimum filter.  The filter gives exactly the splat
    result: pixel p is covered by the point landing in q iff q lies in p's (shifted) window.

    Args:
        points: [N,3] or [...,3] world points (float; projected in float32, or float64 when given
            float64); non-finite points are skipped.
        K: [3,3] intrinsics in pixels (the last row is taken as [0, 0, 1]).
        cam_to_world: [4,4] OpenCV camera-to-world pose.
        height, width: image size in pixels (>= 1). point_size: splat side in pixels (>= 1).
        near: points with camera depth z <= max(near, 0) are dropped.
        with_depth: also return the depth map (else ``None`` in its place).

    Returns:
        (index [height,width] int64: the visible point's index into ``points.reshape(-1, 3)``, -1
        where no point covers the pixel; depth [height,width] float32: its camera z, 0 where
        none, or None), on the device of ``points``.

    Raises:
        InputError: wrong shapes, non-finite K / pose, non-positive sizes, 2^32 - 1 points or more.
    """
    if not isinstance(points, torch.Tensor) or points.shape[-1] != 3 or not points.is_floating_point():
        raise InputError("points must be a floating-point tensor [N,3] or [H,W,3].")
    height, width, point_size = int(height), int(width), int(point_size)
    if height < 1 or width < 1:
        raise InputError(f"height and width must be positive; got {height}x{width}.")
    if point_size < 1:
        raise InputError(f"point_size must be >= 1; got {point_size}.")
    dev = points.device
    P = points.reshape(-1, 3)
    n = P.shape[0]
    if n >= 2**32 - 1:
        raise InputError("render_points supports fewer than 2^32 - 1 points.")
    dt = torch.float64 if P.dtype == torch.float64 else torch.float32
    Kd = _as_matrix(K, (3, 3), "K", dev)
    T = _as_matrix(cam_to_world, (4, 4), "cam_to_world", dev)
    R, t = T[:3, :3], T[:3, 3]
    Kp = torch.cat([Kd[:2], torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64, device=dev)])
    M = R @ Kp.T  # row vectors: [u z, v z, z] = (p - t) R K^T = p M - t M
    # transposed product: rows u z, v z, z, each contiguous
    Y = torch.addmm((-(t @ M))[:, None].to(dt), M.T.to(dt), P.to(dt).T)
    z = Y[2] if dt == torch.float32 else Y[2].to(torch.float32)
    inv = torch.reciprocal(Y[2])
    lo = (point_size - 1) // 2
    hi = point_size - 1 - lo
    hp, wp = height + point_size - 1, width + point_size - 1
    # padded coordinates: a point landing in column c covers c - lo .. c + hi, so it matters iff
    # c + hi is in [0, wp - 1]; NaN and inf fail these comparisons, so non-finite points drop out
    cu = torch.addcmul(torch.full((), 0.5 + hi, dtype=dt, device=dev), Y[0], inv).floor_()
    cv = torch.addcmul(torch.full((), 0.5 + hi, dtype=dt, device=dev), Y[1], inv).floor_()
    keep = Y[2] > max(float(near), 0.0)
    keep &= cu >= 0
    keep &= cu < wp
    keep &= cv >= 0
    keep &= cv < hp
    if hp * wp < 2**24 or dt == torch.float64:  # exact in floating point
        pix = torch.where(keep, cv.mul_(wp).add_(cu), hp * wp).to(torch.int64)
    else:
        pix = torch.where(keep, cv.to(torch.int64) * wp + cu.to(torch.int64), hp * wp)
    key = z.contiguous().view(torch.int32).to(torch.int64)  # positive float bits order like the value
    key <<= 32
    key |= torch.arange(n, device=dev)
    buf = torch.full((hp * wp + 1,), _NO_HIT, dtype=torch.int64, device=dev)  # the last slot takes dropped points
    buf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
    buf = buf[:-1].view(hp, wp)
    if point_size > 1:  # pixel (r, c) is covered by the points landing in padded rows/cols [r, r + s - 1]
        rows = buf[:height]
        for k in range(1, point_size):
            rows = torch.minimum(rows, buf[k:k + height])
        buf = rows[:, :width]
        for k in range(1, point_size):
            buf = torch.minimum(buf, rows[:, k:k + width])
    index = buf & 0xFFFFFFFF  # _NO_HIT's low half is 0xFFFFFFFF, never a point index (n < 2^32 - 1)
    index.masked_fill_(index == 0xFFFFFFFF, -1)
    if not with_depth:
        return index, None
    depth = torch.cat([z, z.new_zeros(1)])[index]  # index -1 picks the appended 0
    return index, depth
