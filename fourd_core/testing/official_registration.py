"""Baselines for the camera solver's benchmark: the official 4DNeX post-optimisation.

Not used by the production path (:func:`fourd_core.geometry.registration.fit_cameras`); kept so
that ``bench/bench_registration.py`` and the tests can compare against the original scheme in the
same process (official 3DTopia/4DNeX @ 1101bc6: ``pm_registration.py``).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from ..errors import GeometryError
from ..geometry.solver.data import as_points
from ..geometry.solver.fit import CameraFit, _callback

__all__ = ["official_registration", "rotation_6d_to_matrix"]


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """6D rotation representation (Zhou et al. 2019) [...,6] -> [...,3,3], rows b1, b2, b3.

    Gram-Schmidt on the two 3-vectors with ``max(norm, 1e-12)`` in the divisions, the rows of the
    result being b1, b2 and b3 = b1 x b2, as in the common implementation the 4DNeX code uses
    (official 3DTopia/4DNeX @ 1101bc6: ``pm_registration.py``).  With x = [1,0,0,1,0,0] (the official "identity") b2 is zero: degenerate.
    """
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = b2 / b2.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b3 = torch.linalg.cross(b1, b2)
    return torch.stack([b1, b2, b3], dim=-2)


def official_registration(
    points: torch.Tensor,
    iterations: int = 1500,
    lr: float = 5e-3,
    callback: Optional[Callable[[int, int], object]] = None,
) -> CameraFit:
    """The official 4DNeX post-optimisation, reimplemented as the baseline (official 3DTopia/4DNeX @ 1101bc6: ``pm_registration.py``).

    Faithful to the description: parameters are a per-pixel depth ``d`` [F,N] initialised to
    ``||p||``, one shared (fx, fy, cx, cy) initialised to (1.2 W, 1.2 H, W/2, H/2), per-frame 6D
    rotations initialised to [1,0,0,1,0,0] (degenerate), per-frame translations initialised to 0;
    model ``X = R (max(d, 1e-4) K^-1 [u, v, 1]^T) + t`` at integer pixel coordinates; plain MSE over
    all frames, pixels and axes; Adam with lr 5e-3 for every parameter, full batch.  Runs on the
    device of ``points`` (the original is CUDA only).

    Args:
        points: [F,H,W,3] (or [H,W,3]) prepared points (see :func:`prepare_4dnex_points`).
        iterations: Adam steps (1500 in the official code).
        lr: Adam learning rate (5e-3).
        callback: ``callback(step, total)`` every 10 steps; raise or return False to cancel.

    Returns:
        :class:`CameraFit`; ``info`` has "losses" (every 100 steps), "seconds",
        "seconds_per_iteration", "seconds_per_iteration_steady" (from the third iteration on) and
        "iterations".  confidence is all ones (the official code has none).

    Raises:
        InputError: bad shapes; GeometryError: NaN/inf in the points or a non-finite loss;
        CancelledError: cancelled.
    """
    points, single = as_points(points)
    if not torch.isfinite(points).all():
        raise GeometryError("points contain NaN/inf; the official registration has no mask. Clean the map first.")
    F, H, W, _ = points.shape
    N = H * W
    dev = points.device
    p = points.reshape(F, N, 3).to(torch.float32)
    with torch.no_grad():
        d = p.norm(dim=-1).clone()
    d.requires_grad_(True)
    fx = torch.tensor(1.2 * W, device=dev, requires_grad=True)
    fy = torch.tensor(1.2 * H, device=dev, requires_grad=True)
    cx = torch.tensor(W / 2, device=dev, requires_grad=True)
    cy = torch.tensor(H / 2, device=dev, requires_grad=True)
    rot6d = torch.eye(3, device=dev)[:, :2].reshape(-1)[None].repeat(F, 1).requires_grad_(True)  # [1,0,0,1,0,0]
    tr = torch.zeros(F, 3, device=dev, requires_grad=True)
    opt = torch.optim.Adam([d, fx, fy, cx, cy, rot6d, tr], lr=lr)
    uu = torch.arange(W, device=dev, dtype=torch.float32)[None, :].expand(H, W).reshape(-1)
    vv = torch.arange(H, device=dev, dtype=torch.float32)[:, None].expand(H, W).reshape(-1)
    losses = []
    t0 = time.perf_counter()

    def model():
        R = rotation_6d_to_matrix(rot6d)
        dirs = torch.stack([(uu - cx) / fx, (vv - cy) / fy, torch.ones_like(uu)], -1)  # K^-1 [u,v,1]
        Xc = d.clamp_min(1e-4)[..., None] * dirs[None]
        return torch.einsum("fab,fnb->fna", R, Xc) + tr[:, None, :]

    t_warm = None
    for it in range(int(iterations)):
        if it == 2:
            t_warm = time.perf_counter()  # steady state starts after two iterations (allocations)
        opt.zero_grad(set_to_none=True)
        loss = ((model() - p) ** 2).mean()
        loss.backward()
        opt.step()
        if it % 100 == 0 or it == iterations - 1:
            lv = float(loss.detach())
            losses.append((it, lv))
            if not math.isfinite(lv):
                raise GeometryError(f"the official registration diverged (loss {lv}) at step {it}.")
        if callback is not None and (it % 10 == 0 or it == iterations - 1):
            _callback(callback, it + 1, int(iterations))
    t_end = time.perf_counter()
    elapsed = t_end - t0
    steady = (t_end - t_warm) / (int(iterations) - 2) if t_warm is not None else elapsed / max(int(iterations), 1)
    with torch.no_grad():
        X = model()
        R = rotation_6d_to_matrix(rot6d)
        K = torch.zeros(F, 3, 3, device=dev)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, cx, cy, 1.0
        c2w = torch.zeros(F, 4, 4, device=dev)
        c2w[:, :3, :3] = R
        c2w[:, :3, 3] = tr
        c2w[:, 3, 3] = 1
        res = (X - p).norm(dim=-1)
    return CameraFit(
        K=K,
        cam_to_world=c2w,
        depth=d.detach().clamp_min(1e-4).reshape(F, H, W),
        confidence=torch.ones(F, H, W, device=dev),
        residual=res.reshape(F, H, W),
        info={
            "method": "official-adam",
            "iterations": int(iterations),
            "losses": losses,
            "seconds": elapsed,
            "seconds_per_iteration": elapsed / max(int(iterations), 1),
            "seconds_per_iteration_steady": steady,
        },
    )
