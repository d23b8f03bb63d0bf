"""Novel-view rendering of coloured points with a z-buffer (issue 4, point 4).

Points (e.g. one frame of a :class:`~fourd_core.geometry.registration.CameraFit`'s ``points`` with
the RGB frame as colours) are projected into any pinhole camera and splatted as squares of
``point_size`` pixels; the nearest point wins each pixel.  The z-buffer is one vectorised
``scatter_reduce(amin)`` over 64-bit keys ``(float32 bits of the depth) << 32 | point index``:
for positive floats the bit pattern orders like the value, so the minimum key is the nearest
point, and its low 32 bits say which point it is.  Works on CPU and GPU.

Conventions: OpenCV camera axes (x right, y down, z forward), ``K`` in pixels, ``cam_to_world``
[4,4]; pixel (row i, column j) has its centre at (u, v) = (j, i), so a point lands in pixel
``(round(v), round(u))``.  Depth is z in the camera frame.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from ..errors import InputError

__all__ = ["render_points", "project_points"]

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

    Source: issue 4 point 4; used by the grid sampler for its freeze-time input.
    """
    if not isinstance(points, torch.Tensor) or points.shape[-1] != 3 or not points.is_floating_point():
        raise InputError("points must be a floating-point tensor [N,3] or [H,W,3].")
    if not isinstance(colors, torch.Tensor) or colors.shape != points.shape:
        raise InputError(f"colors must be a tensor shaped like points {list(points.shape)}; got "
                         f"{None if not isinstance(colors, torch.Tensor) else list(colors.shape)}.")
    height, width, point_size = int(height), int(width), int(point_size)
    if height < 1 or width < 1:
        raise InputError(f"height and width must be positive; got {height}x{width}.")
    if point_size < 1:
        raise InputError(f"point_size must be >= 1; got {point_size}.")
    dev = points.device
    P = points.reshape(-1, 3)
    C = colors.reshape(-1, 3)
    C = C.to(torch.float32) / 255.0 if not C.is_floating_point() else C.to(torch.float32)
    if P.shape[0] >= 2**32:
        raise InputError("render_points supports fewer than 2^32 points.")
    bg = torch.as_tensor(background, dtype=torch.float32, device=dev).flatten()
    if bg.numel() not in (1, 3) or not torch.isfinite(bg).all():
        raise InputError("background must be a number or 3 numbers in [0, 1].")

    uv, z = project_points(P, K, cam_to_world)
    ok = torch.isfinite(P).all(-1) & torch.isfinite(z) & (z > near)
    idx = torch.nonzero(ok).flatten()
    col = torch.floor(uv[idx, 0] + 0.5).to(torch.int64)
    row = torch.floor(uv[idx, 1] + 0.5).to(torch.int64)
    zk = z[idx].contiguous()
    key = (zk.view(torch.int32).to(torch.int64) << 32) | idx  # positive float bits order like the value

    offs = torch.arange(point_size, device=dev) - (point_size - 1) // 2
    dr, dc = torch.meshgrid(offs, offs, indexing="ij")
    rr = (row[None, :] + dr.reshape(-1, 1)).reshape(-1)
    cc = (col[None, :] + dc.reshape(-1, 1)).reshape(-1)
    kk = key[None, :].expand(dr.numel(), -1).reshape(-1)
    inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
    pix = rr[inside] * width + cc[inside]
    buf = torch.full((height * width,), _NO_HIT, dtype=torch.int64, device=dev)
    buf.scatter_reduce_(0, pix, kk[inside], reduce="amin", include_self=True)

    valid = buf != _NO_HIT
    winner = (buf[valid] & 0xFFFFFFFF)
    image = bg.expand(3).repeat(height * width, 1).clone()
    image[valid] = C[winner].clamp(0.0, 1.0)
    depth = torch.zeros(height * width, dtype=torch.float32, device=dev)
    depth[valid] = z[winner]
    return image.reshape(height, width, 3), valid.reshape(height, width), depth.reshape(height, width)
