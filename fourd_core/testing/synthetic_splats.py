"""A synthetic dynamic Gaussian scene with known cameras, for tests and benchmarks.

Ground truth: a textured back wall and floor (static) and a textured ball that moves sideways over
time, all made of small Gaussians, rendered with :func:`~fourd_core.splats.rasterize.rasterize_torch`
from any camera. Cameras look down +z (OpenCV) at the scene from a short arc; a "grid" is the same
arc of views at every time, as FourD Camera Path + the grid sampler would give.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .synthetic_scene import look_at
from ..scene import Scene4D
from ..splats.gaussians import Gaussians
from ..splats.rasterize import render_gaussians

__all__ = ["SplatScene", "make_splat_scene"]


@dataclasses.dataclass
class SplatScene:
    """Ground truth: ``frame(t)`` Gaussians, intrinsics ``K`` [3, 3], image size, and helpers."""

    static: Gaussians
    ball: Gaussians
    ball_shift: torch.Tensor  # [T, 3]
    K: torch.Tensor
    height: int
    width: int

    @property
    def num_frames(self) -> int:
        return int(self.ball_shift.shape[0])

    def frame(self, t: int) -> Gaussians:
        return Gaussians.cat([self.static, self.ball.translated(self.ball_shift[t].expand_as(self.ball.means))])

    def camera(self, angle_deg: float, t: int = 0) -> torch.Tensor:
        """cam-to-world ``[4, 4]`` on an arc about the ball's rest position (angle 0 = straight on)."""
        a = math.radians(angle_deg)
        target = torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
        eye = target + 3.0 * torch.tensor([math.sin(a), -0.15, -math.cos(a)], dtype=torch.float64)
        return look_at(eye, target, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)).float()

    def render(self, t: int, cam_to_world: torch.Tensor) -> dict:
        return render_gaussians(self.frame(t), self.K, cam_to_world, self.height, self.width, backend="torch")

    def scene(self, angles: list[float]) -> Scene4D:
        """A Scene4D: frame t is seen from ``angles[t]`` (its depth = the rendered z, alpha-normalised)."""
        rgb, depth, c2w = [], [], []
        for t, ang in enumerate(angles):
            pose = self.camera(ang, t)
            out = self.render(t, pose)
            rgb.append(out["image"].clamp(0, 1))
            depth.append(out["depth"] / out["alpha"].clamp_min(1e-6))
            c2w.append(pose)
        f = len(angles)
        rgb = torch.stack(rgb)
        return Scene4D(rgb=rgb, xyz=torch.zeros_like(rgb), K=self.K.expand(f, 3, 3).clone(),
                       cam_to_world=torch.stack(c2w), depth=torch.stack(depth), metadata={"synthetic": True})


def _texture(p: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    freq = torch.rand(3, 3, generator=g) * 3 + 1
    phase = torch.rand(3, generator=g) * 6.28
    return (0.5 + 0.35 * torch.sin(p @ freq.T + phase)).clamp(0, 1)


def make_splat_scene(frames: int = 3, height: int = 36, width: int = 48, seed: int = 0, spacing: float = 0.05,
                     motion: float = 0.3) -> SplatScene:
    """Build the ground truth (see the module docstring). ``spacing`` is the Gaussian pitch in world units;
    ``motion`` the ball's total sideways travel."""
    g = torch.Generator().manual_seed(seed)
    s = torch.arange(-1.6, 1.6 + 1e-6, spacing)
    yy, xx = torch.meshgrid(s, s, indexing="ij")
    wall = torch.stack([xx, yy, torch.full_like(xx, 4.2)], -1).reshape(-1, 3)
    fz = torch.arange(2.0, 4.2, spacing)
    fx_, fz_ = torch.meshgrid(s, fz, indexing="ij")
    floor = torch.stack([fx_, torch.full_like(fx_, 0.7), fz_], -1).reshape(-1, 3)
    pts = torch.cat([wall, floor])
    static = Gaussians.from_values(pts, _texture(pts, seed), torch.full((len(pts),), spacing * 0.7),
                                   torch.full((len(pts),), 0.95))
    n = 1500
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    ball_pts = torch.tensor([0.0, 0.0, 3.0]) + 0.45 * d
    ball = Gaussians.from_values(ball_pts, _texture(d * 2, seed + 1), torch.full((n,), spacing * 0.6),
                                 torch.full((n,), 0.95))
    shift = torch.zeros(frames, 3)
    shift[:, 0] = torch.linspace(-motion / 2, motion / 2, frames)
    f = 0.9 * width
    K = torch.tensor([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], dtype=torch.float32)
    return SplatScene(static, ball, shift, K, height, width)
