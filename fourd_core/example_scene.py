"""A small 4D scene built from the shipped example photo, with no model weights: what a newcomer can run in
seconds to see what camera recovery, splats, export and the previews do on something that looks like a scene.

The photo (a coffee cup on its saucer on a wooden table, seen from above at an angle) is given a depth layout
and a camera move, and turned into a point map in the format 4DNeX generates, so it goes through the same
nodes as a generated scene:

* camera: square pixels, horizontal field of view 55 degrees, principal point at the image centre; frame f
  dollies ``dolly`` scene units forward per frame (OpenCV axes, frame 0 at the origin);
* depth: the table is one plane in the world, seen by frame 0 at depth 2.4 on the bottom row and 5.5 on
  the top row; each frame's rays meet it (so its depth shrinks as the camera dollies in). The saucer and the
  cup are rounded domes in front of it at their places in the photo; over the frames the cup rises towards
  the camera (``rise`` times its height by the last frame). The photo's colours stay on their pixels, so
  with a dolly the wood grain slides a little over the table;
* point map: world points in the first camera's axes, the bounding-box centre of all frames removed, one
  global scale into [-1, 1], then ``(p + 1) / 2`` in [0, 1] (4DNeX's XYZ target, 4DNeX paper Sec. 3-4, except
  that 4DNeX centres each frame on its own, which loses how the frames line up; one centre keeps the world
  consistent), which :func:`fourd_core.api.recover_geometry` turns back into cameras and depth.

The ground truth (cameras, depth) is returned beside the scene, so tests can check the recovery.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .errors import InputError
from .scene import Scene4D

__all__ = ["ExampleScene", "example_scene"]

#: horizontal field of view of the example camera, degrees
FOV_DEGREES = 55.0
#: the cup's place in the photo (column, row as fractions of the width / height) and its half sizes
CUP = (0.48, 0.36, 0.21, 0.27)
#: the saucer around it
SAUCER = (0.46, 0.55, 0.34, 0.38)


@dataclasses.dataclass
class ExampleScene:
    """:func:`example_scene`'s result: the scene (RGB + 4DNeX point map, no cameras) and its ground truth
    (``K`` ``[F, 3, 3]`` pixels, ``cam_to_world`` ``[F, 4, 4]`` OpenCV, ``depth`` ``[F, H, W]``, ``points``
    ``[F, H, W, 3]`` world), float32."""

    scene: Scene4D
    K: torch.Tensor
    cam_to_world: torch.Tensor
    depth: torch.Tensor
    points: torch.Tensor


def example_scene(frames: int = 12, width: int = 384, dolly: float = 0.06, rise: float = 0.5) -> ExampleScene:
    """Build the example 4D scene from the shipped photo (see the module docstring).

    Args:
        frames: number of frames F (2-97).
        width: image width W in pixels (96-1024, a multiple of 8); the height is ``2/3 W`` rounded to 8 (the
            photo's and 4DNeX's 3:2 aspect).
        dolly: camera move per frame in scene units (0-0.5).
        rise: how far the cup rises by the last frame, as a fraction of its height (0-2).
    Returns:
        :class:`ExampleScene`.
    Raises:
        InputError: an argument out of range.
    """
    from .assets import example_image
    from .io.images import prepare_image

    if not 2 <= int(frames) <= 97:
        raise InputError(f"frames must be 2-97; got {frames}.")
    if not (96 <= int(width) <= 1024 and int(width) % 8 == 0):
        raise InputError(f"width must be a multiple of 8 in 96-1024; got {width}.")
    if not (0 <= dolly <= 0.5 and 0 <= rise <= 2):
        raise InputError(f"dolly must be in 0-0.5 and rise in 0-2; got {dolly} and {rise}.")
    F, W = int(frames), int(width)
    H = max(8, round(W * 2 / 3 / 8) * 8)
    rgb = prepare_image(example_image(), H, W)
    f64 = torch.float64
    fx = (W / 2) / math.tan(math.radians(FOV_DEGREES) / 2)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    K = torch.tensor([[fx, 0, cx], [0, fx, cy], [0, 0, 1]], dtype=f64)
    i = torch.arange(H, dtype=f64).view(H, 1).expand(H, W) / (H - 1)
    j = torch.arange(W, dtype=f64).view(1, W).expand(H, W) / (W - 1)
    ray = torch.stack([(torch.arange(W, dtype=f64).view(1, W).expand(H, W) - cx) / fx,
                       (torch.arange(H, dtype=f64).view(H, 1).expand(H, W) - cy) / fx, torch.ones(H, W, dtype=f64)], -1)
    # the table plane n . X = 1 (world = camera 0): 1 / depth_0 = n . ray, linear in the row from 1/5.5 to 1/2.4
    c0, c1 = 1 / 5.5, 1 / 2.4 - 1 / 5.5
    n = torch.tensor([0.0, c1 * fx / (H - 1), c0 + c1 * cy / (H - 1)], dtype=f64)

    def dome(spec, power):
        c_j, c_i, r_j, r_i = spec
        r2 = ((j - c_j) / r_j) ** 2 + ((i - c_i) / r_i) ** 2
        return (1 - r2).clamp_min(0) ** power

    cup_height = 0.55
    saucer = 0.08 * dome(SAUCER, 0.3)
    depths, c2ws, pts = [], [], []
    for k in range(F):
        t = k / (F - 1)
        c2w = torch.eye(4, dtype=f64)
        c2w[2, 3] = dolly * k                                                # the camera moves forward
        table = (1 - n[2] * c2w[2, 3]) / (ray @ n)                           # where this frame's rays meet the table
        depth = table - saucer - cup_height * (1 + rise * t) * dome(CUP, 0.5)
        depths.append(depth)
        c2ws.append(c2w)
        pts.append(ray * depth[..., None] + c2w[:3, 3])
    points = torch.stack(pts)
    # 4DNeX's target: first-camera axes (camera 0 = world), the bounding-box centre, one global scale
    flat = points.reshape(-1, 3)
    centred = points - (flat.min(0).values + flat.max(0).values) / 2
    xyz = (centred / centred.abs().max() + 1) / 2
    scene = Scene4D(rgb=rgb.expand(F, H, W, 3).contiguous(), xyz=xyz.float(),
                    metadata={"kind": "example", "prompt": "the shipped example photo (example_coffee.jpg) with a "
                              "depth layout and a camera dolly; no model", "fps": 8.0})
    return ExampleScene(scene, K.expand(F, 3, 3).float().clone(), torch.stack(c2ws).float(),
                        torch.stack(depths).float(), points.float())
