"""Render splats along a camera orbit (previews, the README picture, the nodes' IMAGE output)."""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..geometry.camera_paths import orbit
from .gaussians import Gaussians4D
from .rasterize import render_gaussians

__all__ = ["render_orbit"]


@torch.no_grad()
def render_orbit(g4d: Gaussians4D, degrees: float = 30.0, steps: int = 8, frame: int | None = None,
                 height: int | None = None, width: int | None = None, background=(0.0, 0.0, 0.0),
                 backend: str = "auto", device: str | torch.device = "cpu", distance: float | None = None) -> torch.Tensor:
    """Render ``steps`` views on an orbit about the scene centre, starting at frame 0's camera (a horizontal
    orbit about its down axis, :func:`fourd_core.geometry.camera_paths.orbit`); the time runs with the views
    (``frame=None``) or is fixed. The centre lies ``distance`` scene units along frame 0's optical axis
    (``None``: the median depth of the splats in front of it).

    Returns:
        ``[steps, H, W, 3]`` float32 in [0, 1] (ComfyUI IMAGE batch).

    Raises:
        InputError: splats without cameras; a ``distance`` that is not a finite number > 0.
    """
    if g4d.K is None or g4d.cam_to_world is None:
        raise InputError("These splats carry no cameras to orbit around.")
    try:
        ok = distance is None or (math.isfinite(float(distance)) and float(distance) > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"Orbit distance must be a finite number > 0 (scene units in front of frame 0's camera), "
                         f"got {distance}; pass None to orbit about the median depth of the splats.")
    h, w = int(height or g4d.height), int(width or g4d.width)
    K = g4d.K[0].clone().float()
    K[0] *= w / g4d.width
    K[1] *= h / g4d.height
    K[0, 2] = w / g4d.width * (g4d.K[0, 0, 2] + 0.5) - 0.5
    K[1, 2] = h / g4d.height * (g4d.K[0, 1, 2] + 0.5) - 0.5
    c2w0 = g4d.cam_to_world[0].double()
    g0 = g4d.frame(0 if frame is None else frame)
    z = ((g0.means.double() - c2w0[:3, 3]) @ c2w0[:3, 2])
    depth = float(distance) if distance is not None else (float(z[z > 0].median()) if (z > 0).any() else 1.0)
    center = c2w0[:3, 3] + depth * c2w0[:3, 2]
    poses = orbit(center, c2w0, degrees=degrees, steps=steps)
    out = []
    for i, pose in enumerate(poses):
        t = frame if frame is not None else round(i * (g4d.num_frames - 1) / max(steps - 1, 1))
        g = g4d.frame(t).to(device)
        out.append(render_gaussians(g, K.to(device), pose.float().to(device), h, w, background=list(background),
                                    backend=backend)["image"].clamp(0, 1).float().cpu())
    return torch.stack(out)
