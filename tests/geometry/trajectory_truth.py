"""Ground truth for the trajectory-render tests: a synthetic scene with known geometry and a
brute-force numpy z-buffer (imported by tests/geometry/test_trajectory.py and tests/test_novel_view.py).

The scene has a background plane and a square in front of it that moves to the right by 3 pixels
per frame.  Every pixel's colour encodes which point it is (red = row, green = column, blue =
frame, in units of 1/255, exact in a saved scene's uint8 colours), so a rendered pixel says which
scene point won it.  The expectations are computed in numpy, in float64, from the depth maps and
the cameras, independently of the renderer's torch code.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fourd_core.scene import Scene4D

F, H, W = 5, 24, 32
BOX = (8, 16)  # rows of the moving square
EPS = 1e-4  # pixels: projections this close to a pixel border are ambiguous in float32 and not asserted


def box_cols(f: int) -> tuple[int, int]:
    return 6 + 3 * f, 14 + 3 * f


def make_scene(moving_cameras: bool = False) -> Scene4D:
    K = torch.tensor([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])
    depth = torch.full((F, H, W), 4.0)
    for f in range(F):
        c0, c1 = box_cols(f)
        depth[f, BOX[0]:BOX[1], c0:c1] = 2.0
    rows = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
    cols = torch.arange(W, dtype=torch.float32)[None, :].expand(H, W)
    rgb = torch.stack([torch.stack([rows, cols, torch.full((H, W), float(f))], -1) for f in range(F)]) / 255.0
    c2w = torch.eye(4).repeat(F, 1, 1)
    if moving_cameras:  # a handheld camera: sideways drift and a small pan
        for f in range(F):
            a = math.radians(2.0 * f)
            c2w[f, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
            c2w[f, 0, 3] = 0.05 * f
    return Scene4D(rgb=rgb, xyz=torch.zeros(F, H, W, 3), K=K.repeat(F, 1, 1), cam_to_world=c2w, depth=depth)


def world_points(scene: Scene4D, f: int) -> np.ndarray:
    """Unproject frame f in numpy: X = R (d K^-1 [u, v, 1]) + t, pixel centres at integers."""
    K = scene.K[f].double().numpy()
    T = scene.cam_to_world[f].double().numpy()
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    d = scene.depth[f].double().numpy()
    rays = np.linalg.solve(K, np.stack([u.ravel(), v.ravel(), np.ones(H * W)]))
    cam = rays * d.ravel()
    return (T[:3, :3] @ cam).T + T[:3, 3]


def project(X: np.ndarray, K: np.ndarray, c2w: np.ndarray):
    cam = (X - c2w[:3, 3]) @ c2w[:3, :3]  # R^T (X - t)
    z = cam[:, 2]
    uv = (K @ cam.T).T
    return uv[:, 0] / z, uv[:, 1] / z, z


def decode(rgb: np.ndarray):
    """(row, col, frame) encoded in a pixel colour."""
    r, c, f = np.round(rgb * 255.0).astype(int).transpose(2, 0, 1)
    return r, c, f


def check_frame(scene, img, hole, K, c2w, src_frame, point_size=1, out_hw=None):
    """Assert the render of one frame against a brute-force z-buffer of that frame's points."""
    ho, wo = out_hw or hole.shape
    X = world_points(scene, src_frame)
    u, v, z = project(X, np.asarray(K, np.float64), np.asarray(c2w, np.float64))
    front = z > 0
    lo = (point_size - 1) // 2
    # the square a point covers: rows/cols round(v) - lo .. round(v) - lo + point_size - 1
    near_border = (np.abs((u + 0.5) % 1.0 - 0.0) < EPS) | (np.abs((u + 0.5) % 1.0 - 1.0) < EPS) | \
                  (np.abs((v + 0.5) % 1.0 - 0.0) < EPS) | (np.abs((v + 0.5) % 1.0 - 1.0) < EPS)
    cu, cv = np.floor(u + 0.5).astype(np.int64), np.floor(v + 0.5).astype(np.int64)
    best = np.full((ho, wo), np.inf)
    sure = np.zeros((ho, wo), bool)  # some unambiguous point covers the pixel
    maybe = np.zeros((ho, wo), bool)  # some point (ambiguous or not) may cover it
    for n in np.nonzero(front)[0]:
        a = int(near_border[n])  # an ambiguous point may land one pixel either way
        for dr in range(-a, point_size + a):
            for dc in range(-a, point_size + a):
                r, c = cv[n] - lo + dr, cu[n] - lo + dc
                if 0 <= r < ho and 0 <= c < wo:
                    maybe[r, c] = True
                    if not a:
                        sure[r, c] = True
                        best[r, c] = min(best[r, c], z[n])
    covered = hole < 0.5
    # holes exactly where nothing projects (up to ambiguous border cases, which must be rare)
    assert not np.any(covered & ~maybe), "rendered a pixel no point projects to"
    assert not np.any(~covered & sure), "a hole where a point projects"
    assert (maybe & ~sure).sum() <= 0.01 * ho * wo
    rows, cols, frames = decode(img)
    rr, cc = np.nonzero(covered)
    assert np.all(frames[rr, cc] == src_frame), "frame t must show frame s(t)'s points"
    n = rows[rr, cc] * W + cols[rr, cc]  # the point that won each pixel
    # it projects into the pixel's window (one pixel of slack for projections on a pixel border) ...
    slack = near_border[n].astype(np.int64)
    assert np.all((cu[n] - lo - slack <= cc) & (cc <= cu[n] - lo + point_size - 1 + slack)), "winner off its column"
    assert np.all((cv[n] - lo - slack <= rr) & (rr <= cv[n] - lo + point_size - 1 + slack)), "winner off its row"
    # ... and is the nearest one there (z-buffer)
    ok = sure[rr, cc]
    assert np.all(z[n][ok] <= best[rr, cc][ok] * (1 + 1e-5) + 1e-6), "a farther point won a pixel"
    return covered
