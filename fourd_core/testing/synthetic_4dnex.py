"""An independent generator of 4DNeX-like point maps, for evaluating the camera solver.

:mod:`fourd_core.testing.synthetic_scene` is the generator the solver was developed on.  This one is
built separately, from the description of real 4DNeX output (4DNeX paper Sec. 4.3 and
official 3DTopia/4DNeX @ 1101bc6: ``inference.py``, ``build_wan_dataset.py``, ``wan_dataset.py``), and is used to *evaluate* the solver on seeds it
was never tuned on (tuning used seeds 0-15; the benchmark and tests use seeds >= 1000).

A scene, per frame f and pixel (row i, column j) at (u, v) = (j, i):

* one square-pixel K (horizontal FOV 45-75 deg, principal point within +-``pp_range`` of the
  image centre, as a fraction of W and H), or with ``zoom`` > 1 a per-frame focal that grows
  smoothly to ``zoom`` times the first one;
* a smooth trajectory: a total rotation of 6-15 deg about a random axis (eased), a small wobble,
  and a dolly of 0.3-0.8 times the mean depth in a random forward/sideways direction;
* depth = a sloped plane plus 3-5 Gaussian blobs (bumps toward the camera) that move over time;
* the 4DNeX target mapping: points in the first camera's axes, a random extra rotation, the
  per-frame bounding-box centre removed, one global scale to [-1, 1], then ``(p + 1) / 2`` in
  [0, 1] and x, y shifted by -0.5 (what the registration consumes); with ``jitter`` each frame
  also gets its own scale ``1 + jitter * N(0, 1)`` (VAE re-centring);
* corruption: Gaussian noise of std ``noise`` (in those [0, 1] units) per coordinate; a fraction
  ``outliers`` of the pixels replaced by points uniform in the frame's bounding box; with
  ``edges``, pixels at depth discontinuities blurred (3x3 mean of the point map) and a third of
  them turned into flying pixels (a random blend of the nearest and farthest neighbour).

Every ground-truth camera is transformed with the points, so it stays exact.  OpenCV axes;
depth is the camera-frame z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..geometry.solver.rotation import exp_so3

__all__ = ["HeldOutScene", "SETTINGS", "make_heldout_scene"]


@dataclass
class HeldOutScene:
    """A generated scene (float32 tensors, except ``setting``).

    points [F,H,W,3] (corrupted, registration frame); clean_points [F,H,W,3]; K [F,3,3];
    cam_to_world [F,4,4]; depth [F,H,W]; outlier_mask [F,H,W] (outliers, blurred and flying
    pixels); scale (RMS distance of the clean points to their frame centroid, mean over frames).
    """

    points: torch.Tensor
    clean_points: torch.Tensor
    K: torch.Tensor
    cam_to_world: torch.Tensor
    depth: torch.Tensor
    outlier_mask: torch.Tensor
    scale: float
    setting: dict


#: the evaluation settings of the camera-recovery benchmark (name -> keyword arguments of :func:`make_heldout_scene`)
SETTINGS = {
    "clean": dict(),
    "0.5% noise": dict(noise=0.005),
    "1% + 10% outliers": dict(noise=0.01, outliers=0.10),
    "2% + 20% outliers": dict(noise=0.02, outliers=0.20),
    "3% + 30% outliers": dict(noise=0.03, outliers=0.30),
    "zoom 1.3x, 0.5% noise": dict(noise=0.005, zoom=1.3),
    "edges (blur + flying), 0.5%": dict(noise=0.005, edges=True),
    "re-centring jitter 2%, 0.5%": dict(noise=0.005, jitter=0.02),
    # beyond the list: every corruption of real output at once, and a zoom in heavy noise
    "edges + jitter, 1% + 10%": dict(noise=0.01, outliers=0.10, edges=True, jitter=0.02),
    "zoom 1.3x, 2% + 20%": dict(noise=0.02, outliers=0.20, zoom=1.3),
}


def _smoothstep(t):
    return 3 * t**2 - 2 * t**3


def make_heldout_scene(frames: int = 49, height: int = 60, width: int = 90, *, seed: int = 1000,
                       noise: float = 0.0, outliers: float = 0.0, zoom: float = 1.0, edges: bool = False,
                       jitter: float = 0.0, pp_range: float = 0.03) -> HeldOutScene:
    """Build one scene (see the module docstring); the same arguments give the same scene.

    Args:
        frames, height, width: F, H, W.
        seed: seeds everything.
        noise: std of the Gaussian point noise per coordinate, in the [0, 1] units of the map.
        outliers: fraction of pixels replaced by uniform points in the frame's bounding box.
        zoom: focal of the last frame over the first (1 = no zoom).
        edges: blur and flying pixels at depth discontinuities.
        jitter: std of the per-frame relative scale of the re-centred maps.
        pp_range: the principal point is uniform within +- pp_range * (W, H) of the centre.

    Returns:
        :class:`HeldOutScene`.
    """
    g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    F, H, W = int(frames), int(height), int(width)
    f64 = torch.float64

    def U(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=f64) if shape else \
            float(lo + (hi - lo) * torch.rand((), generator=g, dtype=f64))

    # intrinsics
    fov = math.radians(U(45.0, 75.0))
    f0 = (W / 2) / math.tan(fov / 2)
    cx = (W - 1) / 2 + U(-pp_range, pp_range) * W
    cy = (H - 1) / 2 + U(-pp_range, pp_range) * H
    t = torch.linspace(0, 1, F, dtype=f64)
    foc = f0 * (1 + (zoom - 1) * _smoothstep(t))
    K = torch.zeros(F, 3, 3, dtype=f64)
    K[:, 0, 0] = K[:, 1, 1] = foc
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = cx, cy, 1.0

    # depth: sloped plane + moving blobs
    d0 = U(1.5, 5.0)
    uu = torch.arange(W, dtype=f64)[None, None, :]
    vv = torch.arange(H, dtype=f64)[None, :, None]
    xn = (uu - cx) / foc[:, None, None]
    yn = (vv - cy) / foc[:, None, None]
    # plane n . X = d0 in camera 0 coordinates, tilted by 10-40 deg (ground-like, or a side wall)
    tilt = math.radians(U(10.0, 40.0))
    az = U(0, 2 * math.pi)
    n = torch.tensor([math.sin(tilt) * math.cos(az), math.sin(tilt) * math.sin(az), math.cos(tilt)], dtype=f64)
    den = (n[0] * xn + n[1] * yn + n[2]).clamp_min(0.25)
    depth = d0 / den
    depth = depth.clamp(max=3 * d0)
    tt = t[:, None, None]
    for _ in range(int(U(3, 6))):
        amp = U(0.1, 0.35) * d0
        bu, bv = U(0.15, 0.85) * W, U(0.15, 0.85) * H
        mu_, mv_ = U(-0.2, 0.2) * W, U(-0.2, 0.2) * H
        s = U(0.06, 0.16) * W
        r2 = (uu - bu - mu_ * tt) ** 2 + (vv - bv - mv_ * tt) ** 2
        sharp = U(0, 1) < 0.5  # half the blobs have a steep rim (depth edges)
        prof = torch.exp(-((r2 / (2 * s * s)) ** (3 if sharp else 1)))
        depth = depth - amp * prof
    depth = depth.clamp_min(0.2 * d0)

    # trajectory (world = camera 0 axes before the extra rotation)
    axis = torch.randn(3, generator=g, dtype=f64)
    axis[2] *= 0.3  # mostly pan / tilt
    axis = axis / axis.norm()
    total = math.radians(U(6.0, 15.0))
    wob_amp = math.radians(U(0.2, 0.8))
    wob_axis = torch.randn(3, generator=g, dtype=f64)
    wob_axis = wob_axis / wob_axis.norm()
    wob_ph, wob_fr = U(0, 2 * math.pi), U(1.0, 3.0)
    ang = total * _smoothstep(t)[:, None] * axis + wob_amp * (torch.sin(2 * math.pi * wob_fr * t + wob_ph)
                                                              - math.sin(wob_ph))[:, None] * wob_axis
    Rc2w = exp_so3(ang)  # [F,3,3]
    ddir = torch.tensor([U(-1, 1), U(-0.4, 0.4), U(-1, 1)], dtype=f64)
    ddir = ddir / ddir.norm()
    dolly = U(0.3, 0.8) * float(depth.mean())
    C = dolly * _smoothstep(t)[:, None] * ddir
    Xc = torch.stack([xn.expand(F, H, W) * depth, yn.expand(F, H, W) * depth, depth], -1)
    X = torch.einsum("fab,fhwb->fhwa", Rc2w, Xc) + C[:, None, None]

    # 4DNeX target mapping: camera-0 axes (already), extra rotation Q, per-frame bbox centring,
    # one global scale to [-1, 1] (official 3DTopia/4DNeX @ 1101bc6: ``build_wan_dataset.py``, ``wan_dataset.py``), then [0, 1] and -0.5 on x, y (the official registration)
    Q = exp_so3(torch.randn(3, generator=g, dtype=f64) * math.radians(U(2.0, 20.0)) / math.sqrt(3))
    X = torch.einsum("ab,fhwb->fhwa", Q, X)
    Rc2w = Q @ Rc2w
    C = C @ Q.T
    flat = X.reshape(F, -1, 3)
    centre = (flat.amax(1) + flat.amin(1)) / 2
    half = ((flat.amax(1) - flat.amin(1)) / 2).max()
    sf = (1 + jitter * torch.randn(F, generator=g, dtype=f64)) / (2 * half) if jitter else torch.full((F,), 1 / (2 * half), dtype=f64)
    shift = torch.tensor([0.0, 0.0, 0.5], dtype=f64)
    X = (X - centre[:, None, None]) * sf[:, None, None, None] + shift
    C = (C - centre) * sf[:, None] + shift
    depth = depth * sf[:, None, None]
    c2w = torch.zeros(F, 4, 4, dtype=f64)
    c2w[:, :3, :3], c2w[:, :3, 3], c2w[:, 3, 3] = Rc2w, C, 1.0

    clean = X.clone()
    flat = clean.reshape(F, -1, 3)
    scale = float(((flat - flat.mean(1, keepdim=True)) ** 2).sum(-1).mean(1).sqrt().mean())
    P = clean.clone()
    bad = torch.zeros(F, H, W, dtype=torch.bool)
    if edges:
        # depth discontinuities: relative depth jump to a 4-neighbour above 4 %
        dz = torch.zeros(F, H, W, dtype=f64)
        dz[:, 1:] = torch.maximum(dz[:, 1:], (depth[:, 1:] - depth[:, :-1]).abs())
        dz[:, :-1] = torch.maximum(dz[:, :-1], (depth[:, 1:] - depth[:, :-1]).abs())
        dz[:, :, 1:] = torch.maximum(dz[:, :, 1:], (depth[:, :, 1:] - depth[:, :, :-1]).abs())
        dz[:, :, :-1] = torch.maximum(dz[:, :, :-1], (depth[:, :, 1:] - depth[:, :, :-1]).abs())
        edge = dz > 0.04 * depth
        pad = torch.nn.functional.pad(clean.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate")
        blur = torch.nn.functional.avg_pool2d(pad, 3, stride=1).permute(0, 2, 3, 1)
        P = torch.where(edge[..., None], blur, P)
        fly = edge & (torch.rand(F, H, W, generator=g, dtype=f64) < 1 / 3)
        dpad = torch.nn.functional.pad(depth[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
        cpad = pad.permute(0, 2, 3, 1)
        nb = torch.stack([cpad[:, 1 + di:H + 1 + di, 1 + dj:W + 1 + dj] for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1))], 3)
        nd = torch.stack([dpad[:, 1 + di:H + 1 + di, 1 + dj:W + 1 + dj] for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1))], 3)
        near = torch.gather(nb, 3, nd.argmin(3)[..., None, None].expand(F, H, W, 1, 3))[:, :, :, 0]
        far = torch.gather(nb, 3, nd.argmax(3)[..., None, None].expand(F, H, W, 1, 3))[:, :, :, 0]
        lam = torch.rand(F, H, W, 1, generator=g, dtype=f64)
        P = torch.where(fly[..., None], lam * near + (1 - lam) * far, P)
        bad |= edge
    if noise:
        P = P + noise * torch.randn(P.shape, generator=g, dtype=f64)
    if outliers:
        om = torch.rand(F, H, W, generator=g, dtype=f64) < outliers
        lo, hi = flat.amin(1), flat.amax(1)
        rnd = lo[:, None, None] + (hi - lo)[:, None, None] * torch.rand(F, H, W, 3, generator=g, dtype=f64)
        P = torch.where(om[..., None], rnd, P)
        bad |= om
    f32 = torch.float32
    return HeldOutScene(points=P.to(f32), clean_points=clean.to(f32), K=K.to(f32), cam_to_world=c2w.to(f32),
                        depth=depth.to(f32), outlier_mask=bad, scale=scale,
                        setting=dict(noise=noise, outliers=outliers, zoom=zoom, edges=edges, jitter=jitter))
