"""Freeze-time input for the grid sampler: one frame of a :class:`~fourd_core.scene.Scene4D`
rendered along a camera path (the first column of the 4Real-Video grid, Sec. 3.3).

The path starts at the camera of the chosen frame (so view 0 is that frame seen from its own
camera) and turns about the scene centre on the frame's optical axis (median depth of the frame).
Rendering is :func:`~fourd_core.geometry.render.render_points` (square splats, z-buffer); pixels
no point covers are holes, returned as a mask (1 = hole) and filled with mid-gray, the colour the
Wan I2V condition uses for unknown pixels.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .camera_paths import arc, dolly, look_at_center, orbit
from .render import render_points

__all__ = ["PATHS", "scene_camera_path", "render_scene_views"]

PATHS = ("orbit", "arc", "dolly")
HOLE_GRAY = 0.5


def _check_scene(scene, frame: int) -> int:
    if not scene.has_cameras:
        raise InputError("The scene has no cameras/depth yet: run FourD Recover Cameras (fit_cameras) first.")
    n = scene.num_frames
    if isinstance(frame, bool) or int(frame) != frame or not -n <= int(frame) < n:
        raise InputError(f"frame must be an integer in [0, {n - 1}] (or negative from the end), got {frame!r}.")
    return int(frame) % n


def scene_camera_path(scene, path: str = "orbit", degrees: float = 30.0, steps: int = 8, axis: str = "y",
                      distance: float = 0.3, elevation_degrees: float = 0.0, frame: int = 0):
    """Camera poses around one frame of a scene.

    Args:
        scene: a Scene4D with cameras (``K``, ``cam_to_world``, ``depth``).
        path: ``"orbit"`` (constant angular speed about ``axis`` through the scene centre),
            ``"arc"`` (eased azimuth + optional elevation) or ``"dolly"`` (straight along the
            optical axis).
        degrees: total angle for orbit / arc. steps: number of views N >= 1 (the grid's V).
        axis: ``"x"``, ``"y"`` or ``"z"`` of the frame's camera ("y" = horizontal orbit).
        distance: dolly travel as a fraction of the scene depth (median depth of the frame;
            positive moves forward).
        elevation_degrees: arc only, see :func:`~fourd_core.geometry.camera_paths.arc`.
        frame: the frame whose camera starts the path.
    Returns:
        ``(K [N, 3, 3], cam_to_world [N, 4, 4])`` float32, OpenCV; pose 0 is the frame's camera and
        every view keeps the frame's intrinsics.
    Raises:
        InputError: no cameras, bad frame, unknown path, or bad numbers (from camera_paths).
    """
    f = _check_scene(scene, frame)
    c2w = scene.cam_to_world[f].float()
    depth = scene.depth[f].float()
    if path == "orbit":
        poses = orbit(depth, c2w, degrees=degrees, steps=steps, axis=axis)
    elif path == "arc":
        poses = arc(depth, c2w, degrees=degrees, steps=steps, axis=axis, elevation_degrees=elevation_degrees)
    elif path == "dolly":
        centre = look_at_center(c2w, depth)
        scale = float((centre - c2w[:3, 3].double()).norm())
        poses = dolly(c2w, distance * scale, steps=steps)
    else:
        raise InputError(f"path must be one of {PATHS}, got {path!r}.")
    K = scene.K[f].float().expand(poses.shape[0], 3, 3).clone()
    return K, poses.float()


def render_scene_views(scene, cam_to_world: torch.Tensor, K: torch.Tensor | None = None, frame: int = 0,
                       point_size: int = 2, height: int | None = None, width: int | None = None,
                       background: float = HOLE_GRAY):
    """Render the point cloud of one scene frame into every camera of a path.

    Args:
        scene: a Scene4D with cameras; points = ``scene.points(frame)``, colours = ``scene.rgb[frame]``.
        cam_to_world: ``[N, 4, 4]`` OpenCV poses (e.g. from :func:`scene_camera_path`).
        K: ``[N, 3, 3]`` or ``[3, 3]`` intrinsics in pixels (default: the frame's).
        point_size: splat side in pixels (2-3 closes most cracks between neighbouring points).
        height, width: output size (default: the scene's).
        background: gray level of holes.
    Returns:
        ``(images [N, H, W, 3] float32 in [0, 1], holes [N, H, W] float32: 1 where no point landed)``
        on the CPU. This is the IMAGE + MASK pair the grid sampler takes as its freeze-time input.
    Raises:
        InputError: no cameras, bad frame, or mismatched shapes.
    """
    f = _check_scene(scene, frame)
    c2w = torch.as_tensor(cam_to_world).float()
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or c2w.shape[0] < 1:
        raise InputError(f"cam_to_world must be [N, 4, 4], got {list(c2w.shape)}.")
    n = c2w.shape[0]
    Ks = scene.K[f].float() if K is None else torch.as_tensor(K).float()
    if Ks.ndim == 2:
        Ks = Ks.expand(n, 3, 3)
    if tuple(Ks.shape) != (n, 3, 3):
        raise InputError(f"K must be [3, 3] or [{n}, 3, 3], got {list(Ks.shape)}.")
    h, w = scene.size
    height, width = int(height or h), int(width or w)
    points = scene.points(f).float()
    colors = scene.rgb[f].float()
    images, holes = [], []
    for i in range(n):
        img, valid, _ = render_points(points, colors, Ks[i], c2w[i], height, width, point_size=point_size,
                                      background=background)
        images.append(img.cpu())
        holes.append((~valid).float().cpu())
    return torch.stack(images), torch.stack(holes)
