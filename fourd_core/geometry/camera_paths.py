"""Camera-path helpers for novel-view rendering (orbit, arc, dolly around a scene camera).

Every function returns ``[N,4,4]`` OpenCV cam-to-world poses (x right, y down, z forward) whose
first pose equals the input pose ``cam_to_world0``, in its dtype (float32 unless float64 is given).
The rotations move the camera rigidly about an axis through a look-at centre, so a camera that
looks at the centre keeps looking at it (and keeps its distance to it).

The look-at centre can be given as a world point, as a distance along the optical axis of the
first camera, or as a depth map of that camera (its median positive depth: the scene centre along
the optical axis), see :func:`look_at_center`.
"""

from __future__ import annotations

import math
from typing import Union

import torch

from ..errors import InputError
from .solver.rotation import exp_so3

__all__ = ["look_at_center", "orbit", "arc", "dolly"]

CenterLike = Union[torch.Tensor, float, int, None]


def _pose(cam_to_world0) -> tuple[torch.Tensor, torch.dtype]:
    T = torch.as_tensor(cam_to_world0)
    if tuple(T.shape) != (4, 4):
        raise InputError(f"cam_to_world0 must be a [4,4] pose; got shape {list(T.shape)}.")
    out_dtype = torch.float64 if T.dtype == torch.float64 else torch.float32
    T = T.to(torch.float64)
    if not torch.isfinite(T).all():
        raise InputError("cam_to_world0 contains NaN or inf.")
    R = T[:3, :3]
    if (R.T @ R - torch.eye(3, dtype=torch.float64, device=T.device)).abs().max() > 1e-4 or torch.linalg.det(R) <= 0:
        raise InputError("cam_to_world0[:3,:3] must be a rotation matrix (orthonormal, det +1).")
    return T, out_dtype


def _steps(steps) -> int:
    if isinstance(steps, bool) or int(steps) != steps or int(steps) < 1:
        raise InputError(f"steps must be a positive integer; got {steps!r}.")
    return int(steps)


def look_at_center(cam_to_world0: torch.Tensor, center: CenterLike) -> torch.Tensor:
    """The look-at centre (world point, [3] float64) of a camera path.

    Args:
        cam_to_world0: [4,4] OpenCV pose of the first camera.
        center: a world point [3]; or a distance (world units, > 0) along the camera's optical
            axis; or a depth map [H,W] of that camera, whose median positive finite depth is used
            (the scene centre along the optical axis).

    Returns:
        [3] float64 world point.

    Raises:
        InputError: a non-finite or non-positive distance, an empty depth map, or a bad shape.
    """
    T, _ = _pose(cam_to_world0)
    if center is None:
        raise InputError("center is required: a world point [3], a distance along the optical axis, or a depth map.")
    if isinstance(center, (int, float)):
        d = float(center)
    else:
        c = torch.as_tensor(center).to(torch.float64).to(T.device)
        if c.dim() == 0:
            d = float(c)
        elif tuple(c.shape) == (3,):
            if not torch.isfinite(c).all():
                raise InputError("center contains NaN or inf.")
            return c
        elif c.dim() == 2:
            good = c[torch.isfinite(c) & (c > 0)]
            if good.numel() == 0:
                raise InputError("the depth map given as center has no positive finite value.")
            d = float(good.median())
        else:
            raise InputError(f"center must be [3], a number or a depth map [H,W]; got shape {list(c.shape)}.")
    if not (math.isfinite(d) and d > 0):
        raise InputError(f"the look-at distance must be positive and finite; got {d}.")
    return T[:3, 3] + d * T[:3, 2]


def _axis(T: torch.Tensor, axis) -> torch.Tensor:
    if isinstance(axis, str):
        names = {"x": 0, "y": 1, "z": 2}
        if axis.lower() not in names:
            raise InputError(f"axis must be 'x', 'y', 'z' (axes of the first camera) or a world vector [3]; got {axis!r}.")
        return T[:3, names[axis.lower()]].clone()
    a = torch.as_tensor(axis).to(torch.float64).to(T.device)
    if tuple(a.shape) != (3,) or not torch.isfinite(a).all() or a.norm() < 1e-12:
        raise InputError("axis must be 'x', 'y', 'z' or a non-zero finite world vector [3].")
    return a / a.norm()


def _rotations(axis: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """[N,3,3] rotations by ``angles`` (radians, right-hand rule) about the unit ``axis``."""
    a = axis.to(torch.float64)
    return exp_so3(angles.to(torch.float64)[:, None] * (a / a.norm())[None, :])


def _about_center(T: torch.Tensor, center: torch.Tensor, Rs: torch.Tensor) -> torch.Tensor:
    """Apply world rotations Rs [N,3,3] about ``center`` to the pose T: [N,4,4]."""
    N = Rs.shape[0]
    out = T.expand(N, 4, 4).clone()
    out[:, :3, :3] = Rs @ T[:3, :3]
    out[:, :3, 3] = torch.einsum("nab,b->na", Rs, T[:3, 3] - center) + center
    out[0] = T  # exactly the input (no rounding)
    return out


def orbit(center: CenterLike, cam_to_world0: torch.Tensor, degrees: float = 360.0, steps: int = 49,
          axis: Union[str, torch.Tensor] = "y") -> torch.Tensor:
    """Orbit the camera about an axis through a look-at centre, at constant angular speed.

    Args:
        center: look-at centre, see :func:`look_at_center` (world point, distance along the
            optical axis, or depth map).
        cam_to_world0: [4,4] OpenCV pose of the first camera.
        degrees: total angle swept; pose k is rotated by ``degrees * k / (steps - 1)`` (right-hand
            rule about ``axis``).  360 gives a full circle whose last pose equals the first.
        steps: number of poses N >= 1.
        axis: "x", "y" or "z" (axes of the first camera: "y" is its down vector, a horizontal
            orbit) or a world vector [3].

    Returns:
        [N,4,4] cam-to-world poses; pose 0 equals ``cam_to_world0``.

    Raises:
        InputError: bad pose, centre, axis or steps.
    """
    T, dt = _pose(cam_to_world0)
    n = _steps(steps)
    c = look_at_center(T, center)
    a = _axis(T, axis)
    ang = torch.linspace(0.0, math.radians(float(degrees)), n, dtype=torch.float64, device=T.device) if n > 1 \
        else torch.zeros(1, dtype=torch.float64, device=T.device)
    return _about_center(T, c, _rotations(a, ang)).to(dt)


def arc(center: CenterLike, cam_to_world0: torch.Tensor, degrees: float = 30.0, steps: int = 49,
        axis: Union[str, torch.Tensor] = "y", elevation_degrees: float = 0.0) -> torch.Tensor:
    """A smooth arc: azimuth sweep (about ``axis``) and optional elevation (about the first camera's
    x axis) around the look-at centre, both eased in and out (``(1 - cos(pi s)) / 2``).

    Args:
        center: look-at centre, see :func:`look_at_center`.
        cam_to_world0: [4,4] OpenCV pose of the first camera.
        degrees: final azimuth angle (right-hand rule about ``axis``).
        steps: number of poses N >= 1.
        axis: azimuth axis: "x", "y", "z" (first camera's axes) or a world vector [3].
        elevation_degrees: final elevation angle about the first camera's x axis (right-hand
            rule; since OpenCV y points down, positive moves the camera down and makes it look up
            at the centre, negative raises it over the centre).

    Returns:
        [N,4,4] cam-to-world poses; pose 0 equals ``cam_to_world0``; the camera keeps its distance
        to the centre and keeps looking at it if it did.

    Raises:
        InputError: bad pose, centre, axis or steps.
    """
    T, dt = _pose(cam_to_world0)
    n = _steps(steps)
    c = look_at_center(T, center)
    a = _axis(T, axis)
    s = torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=T.device) if n > 1 \
        else torch.zeros(1, dtype=torch.float64, device=T.device)
    ease = (1 - torch.cos(math.pi * s)) / 2
    Ra = _rotations(a, ease * math.radians(float(degrees)))
    Re = _rotations(T[:3, 0].clone(), ease * math.radians(float(elevation_degrees)))
    return _about_center(T, c, Ra @ Re).to(dt)


def dolly(cam_to_world0: torch.Tensor, distance: float, steps: int = 49) -> torch.Tensor:
    """Move the camera along its optical axis at constant speed (no rotation).

    Args:
        cam_to_world0: [4,4] OpenCV pose of the first camera.
        distance: total travel in world units (positive: forward, into the scene).
        steps: number of poses N >= 1.

    Returns:
        [N,4,4] cam-to-world poses; pose 0 equals ``cam_to_world0``; pose k is translated by
        ``distance * k / (steps - 1)`` along the camera z axis.

    Raises:
        InputError: bad pose, non-finite distance or bad steps.
    """
    T, dt = _pose(cam_to_world0)
    n = _steps(steps)
    if not math.isfinite(float(distance)):
        raise InputError(f"distance must be finite; got {distance}.")
    s = torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=T.device) if n > 1 \
        else torch.zeros(1, dtype=torch.float64, device=T.device)
    out = T.expand(n, 4, 4).clone()
    out[:, :3, 3] = T[:3, 3] + (s * float(distance))[:, None] * T[:3, 2]
    return out.to(dt)
