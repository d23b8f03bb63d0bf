"""Synthetic point-map scenes with known cameras, for tests and benchmarks.

A scene is built the way a point map is defined (4DNeX paper, Sec. 4.3, Eq. 10): per frame, a depth
map ``d`` over the pixel grid, one pinhole ``K`` and a camera-to-world pose are unprojected into world
points ``X = R (d K^-1 [u, v, 1]^T) + t``.  Everything is known, so a solver's output can be compared
with the truth.

Conventions (the ones of :mod:`fourd_core.geometry.registration`): OpenCV camera axes (x right,
y down, z forward); pixel (row i, column j) has its centre at (u, v) = (j, i); depth is the z
coordinate in the camera frame.

Optionally the points are brought into the 4DNeX convention (official 3DTopia/4DNeX @ 1101bc6: ``inference.py``, ``build_wan_dataset.py``, ``wan_dataset.py``): first-camera axes, per-frame bounding-box centre removed, one global scale to
[-1, 1], then mapped to [0, 1] and shifted by -0.5 on x and y (what registration consumes).  The
ground-truth cameras are transformed with the points, so they stay exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..geometry.solver.rotation import exp_so3, rotation_angle_deg

__all__ = ["SyntheticScene", "make_synthetic_scene", "look_at", "rotation_angle_deg"]


@dataclass
class SyntheticScene:
    """A synthetic scene; every tensor is float32 on ``device``.

    points:        [F,H,W,3] world points as given to a solver (noise and outliers included).
    clean_points:  [F,H,W,3] the exact unprojection of ``depth``.
    K:             [F,3,3] intrinsics in pixels.
    cam_to_world:  [F,4,4] OpenCV cam-to-world poses.
    depth:         [F,H,W] z-depth in the camera frame, world units.
    outlier_mask:  [F,H,W] bool, True where the point was replaced by a gross outlier.
    scale:         scene scale: RMS distance of the clean points to their frame centroid, averaged
                   over frames (noise and tolerances are expressed relative to it).
    """

    points: torch.Tensor
    clean_points: torch.Tensor
    K: torch.Tensor
    cam_to_world: torch.Tensor
    depth: torch.Tensor
    outlier_mask: torch.Tensor
    scale: float


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor, roll: torch.Tensor | float = 0.0) -> torch.Tensor:
    """OpenCV cam-to-world [...,4,4] (float64) of cameras at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear up in the image (OpenCV y points down, so the
    camera y axis is built opposite to it).  ``roll`` (radians) then rotates the camera about its
    optical axis.
    """
    eye, target, up = (x.to(torch.float64) for x in (eye, target, up))
    z = target - eye
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(z, -up.expand_as(z))
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z], dim=-1)
    roll = torch.as_tensor(roll, dtype=torch.float64).expand(eye.shape[:-1])
    c, s = torch.cos(roll), torch.sin(roll)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    Rz = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(*roll.shape, 3, 3)
    R = R @ Rz
    T = torch.zeros(*eye.shape[:-1], 4, 4, dtype=torch.float64)
    T[..., :3, :3] = R
    T[..., :3, 3] = eye
    T[..., 3, 3] = 1
    return T


def _depth_maps(F: int, H: int, W: int, g: torch.Generator, d0: float) -> torch.Tensor:
    """Smooth, non-planar, slowly changing depth maps [F,H,W] (float64) with a foreground box."""
    a = torch.linspace(-1, 1, W, dtype=torch.float64)[None, None, :]
    b = torch.linspace(-1, 1, H, dtype=torch.float64)[None, :, None] * (H / W)
    t = torch.linspace(0, 1, F, dtype=torch.float64)[:, None, None]

    def rnd(*shape, lo=-1.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    # slanted background: a ground-plane-like gradient (farther at the top) plus a side slope
    d = 1.0 + rnd(1, lo=0.15, hi=0.35) * (-b) + rnd(1, lo=-0.2, hi=0.2) * a
    # gaussian bumps and dents that drift over time (a dynamic scene)
    for _ in range(4):
        amp, ca, cb, s = rnd(1, lo=-0.3, hi=0.15), rnd(1), rnd(1) * 0.6, rnd(1, lo=0.15, hi=0.4)
        va, vb = rnd(1) * 0.3, rnd(1) * 0.2
        d = d + amp * torch.exp(-((a - ca - va * t) ** 2 + (b - cb - vb * t) ** 2) / (2 * s**2))
    # a box in front (a depth discontinuity), moving sideways
    ca, cb = rnd(1) * 0.4, rnd(1) * 0.2
    box = ((a - ca - 0.3 * t).abs() < 0.25) & ((b - cb).abs() < 0.2)
    d = torch.where(box, d * 0.6, d)
    return d.clamp_min(0.2) * d0


def make_synthetic_scene(
    frames: int = 8,
    height: int = 48,
    width: int = 72,
    *,
    seed: int = 0,
    fov_deg: float | None = None,
    noise: float = 0.0,
    outliers: float = 0.0,
    fourdnex: bool = False,
    principal_offset: tuple[float, float] = (0.0, 0.0),
    aspect: float = 1.0,
    zoom: float = 0.0,
    orbit_deg: float | None = None,
    device: str | torch.device = "cpu",
) -> SyntheticScene:
    """Build a scene with known K, a smooth camera trajectory and depth maps.

    Args:
        frames, height, width: F, H, W.
        seed: seeds everything (the same seed gives the same scene).
        fov_deg: horizontal field of view; random in [40, 80] deg when None.
        noise: standard deviation of i.i.d. Gaussian noise per coordinate, as a fraction of
            ``scale`` (e.g. 0.01 for 1 %).
        outliers: fraction of pixels replaced by points drawn uniformly in the frame's bounding
            box enlarged by 20 %.
        fourdnex: express points and cameras in the 4DNeX registration convention (first-camera
            axes, per-frame centred, one global scale, z >= 0; official 3DTopia/4DNeX @ 1101bc6: ``inference.py``, ``build_wan_dataset.py``, ``wan_dataset.py``).
        principal_offset: (dx, dy) of the principal point from the image centre, as a fraction of
            (W, H).
        aspect: fy / fx.
        zoom: relative focal change over the clip (f_t = f (1 + zoom t), t in [0, 1]).
        orbit_deg: total orbit of the camera around the scene; random in [10, 40] when None.
        device: where the returned tensors live.

    Returns:
        :class:`SyntheticScene` (float32 tensors).  The K, poses and depth are the truth for
        ``clean_points``; ``points`` adds the requested corruption.
    """
    g = torch.Generator().manual_seed(int(seed))
    F, H, W = int(frames), int(height), int(width)

    def rnd(lo, hi):
        return float(lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64))

    fov = math.radians(fov_deg if fov_deg is not None else rnd(40.0, 80.0))
    fx = (W / 2) / math.tan(fov / 2)
    fy = fx * aspect
    cx = (W - 1) / 2 + principal_offset[0] * W
    cy = (H - 1) / 2 + principal_offset[1] * H
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float64).expand(F, 3, 3).clone()
    zf = 1 + zoom * torch.linspace(0, 1, F, dtype=torch.float64)
    K[:, 0, 0] *= zf
    K[:, 1, 1] *= zf

    d0 = rnd(2.0, 6.0)
    depth = _depth_maps(F, H, W, g, d0)

    # smooth trajectory: orbit around a target at distance d0, with a little rise and roll
    orbit = math.radians(orbit_deg if orbit_deg is not None else rnd(10.0, 40.0)) * (1 if rnd(0, 1) > 0.5 else -1)
    t = torch.linspace(0, 1, F, dtype=torch.float64)
    phi = orbit * (3 * t**2 - 2 * t**3)  # eased
    rise = rnd(-0.3, 0.3) * d0 * t
    target = torch.tensor([0.0, 0.0, d0], dtype=torch.float64)
    eye = torch.stack([d0 * torch.sin(phi), rise, d0 - d0 * torch.cos(phi)], -1)
    up = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    roll = rnd(-0.1, 0.1) * torch.sin(math.pi * t)
    c2w = look_at(eye, target.expand_as(eye), up, roll)
    # a random rigid world frame, so that camera 0 is not the identity
    G = torch.eye(4, dtype=torch.float64)
    G[:3, :3] = exp_so3(torch.randn(3, generator=g, dtype=torch.float64) * 0.7)
    G[:3, 3] = torch.randn(3, generator=g, dtype=torch.float64) * d0
    c2w = G @ c2w

    # unprojection (Eq. 10 of the paper; the inverse model of the solver)
    jj = torch.arange(W, dtype=torch.float64)
    ii = torch.arange(H, dtype=torch.float64)
    xn = (jj[None, None, :] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    yn = (ii[None, :, None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    Xc = torch.stack([xn.expand(F, H, W) * depth, yn.expand(F, H, W) * depth, depth], -1)
    pts = torch.einsum("fab,fhwb->fhwa", c2w[:, :3, :3], Xc) + c2w[:, None, None, :3, 3]

    if fourdnex:
        # first-camera axes, per-frame bbox centre removed, one global scale to [-1, 1]
        # (official 3DTopia/4DNeX @ 1101bc6: ``build_wan_dataset.py``, ``wan_dataset.py``), then [0, 1] and -0.5 on x, y (the official registration): an affine map per frame.
        inv0 = torch.linalg.inv(c2w[0])
        pts = torch.einsum("ab,fhwb->fhwa", inv0[:3, :3], pts) + inv0[:3, 3]
        c2w = inv0 @ c2w
        flat = pts.reshape(F, -1, 3)
        centre = (flat.amax(1) + flat.amin(1)) / 2  # [F,3]
        half = ((flat.amax(1) - flat.amin(1)) / 2).max()
        shift = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
        pts = (pts - centre[:, None, None, :]) / (2 * half) + shift
        c2w = c2w.clone()
        c2w[:, :3, 3] = (c2w[:, :3, 3] - centre) / (2 * half) + shift
        depth = depth / (2 * half)

    flat = pts.reshape(F, -1, 3)
    scale = float(((flat - flat.mean(1, keepdim=True)) ** 2).sum(-1).mean(1).sqrt().mean())
    clean = pts.clone()
    noisy = pts + noise * scale * torch.randn(pts.shape, generator=g, dtype=torch.float64)
    out_mask = torch.zeros(F, H, W, dtype=torch.bool)
    if outliers > 0:
        out_mask = torch.rand(F, H, W, generator=g, dtype=torch.float64) < outliers
        lo, hi = flat.amin(1), flat.amax(1)
        mid, half_ext = (lo + hi) / 2, (hi - lo) / 2 * 1.2
        rand_pts = mid[:, None, None, :] + half_ext[:, None, None, :] * (
            2 * torch.rand(F, H, W, 3, generator=g, dtype=torch.float64) - 1
        )
        noisy = torch.where(out_mask[..., None], rand_pts, noisy)

    f32 = dict(dtype=torch.float32, device=device)
    return SyntheticScene(
        points=noisy.to(**f32),
        clean_points=clean.to(**f32),
        K=K.to(**f32),
        cam_to_world=c2w.to(**f32),
        depth=depth.to(**f32),
        outlier_mask=out_mask.to(device),
        scale=scale,
    )


def write_pointmap_scenes(folder, n: int, frames: int = 5, h: int = 32, w: int = 48):
    """Write ``n`` small scenes ``folder/s<k>/scene.safetensors`` for the 4DNeX training cache: random RGB and a
    point map in [0, 1] (a gently curved sheet ``z = 0.5 + 0.2 sin(3 x + k)`` plus 1 % noise, the same every frame),
    prompt ``"scene <k>"``. Seeded by ``k``; no cameras. Returns ``folder`` (a :class:`pathlib.Path`)."""
    from pathlib import Path

    from ..scene import Scene4D

    folder = Path(folder)
    for k in range(n):
        g = torch.Generator().manual_seed(k)
        y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        xyz = torch.stack([x, y, 0.5 + 0.2 * torch.sin(3 * x + k)], -1).expand(frames, h, w, 3).clone()
        xyz += 0.01 * torch.rand(frames, h, w, 3, generator=g)
        Scene4D(rgb=torch.rand(frames, h, w, 3, generator=g), xyz=xyz.clamp(0, 1),
                metadata={"prompt": f"scene {k}"}).save(folder / f"s{k}" / "scene.safetensors")
    return folder
