"""Level 5: outputs.  One pass over every pixel with the final cameras.

Each point is snapped on its pixel's ray (the free per-pixel depth of paper Eq. 9: the orthogonal
projection of the point on the ray), which gives the depth (camera z of the ray point), the
residual (the point-to-ray distance, world units), a per-pixel confidence
``exp(-(residual / (3 sigma))^2 / 2)`` (sigma the frame's noise scale; 0 behind the camera and at
invalid pixels) and the re-projected world points.  Frames are processed in chunks, in float32
on points centred per frame, so memory stays at the outputs plus a few frames of temporaries.
"""

from __future__ import annotations

import torch

from .data import F64, pixel_norm
from .model import rays


def write_outputs(points, valid, mu, sig, R, t, kap, noise, chunk_pixels: int = 400_000):
    """Depth, residual, confidence [F,H,W], points [F,H,W,3] (float32) and per-frame statistics
    (fraction behind the camera, median and RMS residual, float64 [F]).

    points [F,H,W,3]; valid [F,H,W] bool; mu [F,3], sig [F] frame normalisation; R [F,3,3],
    t [F,3], kap [F,4] cameras in normalised coordinates (float64); noise [F] (world units).
    """
    F, H, W, _ = points.shape
    dev = points.device
    N = H * W
    s, c0x, c0y = pixel_norm(H, W)
    uh = (torch.arange(W, device=dev, dtype=F64) - c0x) / s
    vh = (torch.arange(H, device=dev, dtype=F64) - c0y) / s
    f32 = torch.float32
    depth = torch.empty(F, H, W, dtype=f32, device=dev)
    resid = torch.empty(F, H, W, dtype=f32, device=dev)
    conf = torch.empty(F, H, W, dtype=f32, device=dev)
    pts = torch.empty(F, H, W, 3, dtype=f32, device=dev)
    behind = torch.zeros(F, dtype=F64, device=dev)
    med = torch.zeros(F, dtype=F64, device=dev)
    rms = torch.zeros(F, dtype=F64, device=dev)
    all_valid = bool(valid.all())
    step = max(1, int(chunk_pixels) // N)
    xs, ys = rays(kap, uh, vh)  # [F,W], [F,H]
    for a in range(0, F, step):
        b = min(F, a + step)
        c = b - a
        Rs = (R[a:b] / sig[a:b, None, None]).to(f32)
        q = points[a:b].reshape(c, N, 3)
        q = (q.to(F64) - mu[a:b, None]).to(f32) if q.dtype == F64 else q.to(f32) - mu[a:b, None].to(f32)
        if not all_valid:
            q = q.masked_fill(~valid[a:b].reshape(c, N, 1), 0.0)  # invalid pixels may hold NaN
        X = torch.baddbmm(t[a:b, :, None].to(f32), Rs, q.transpose(1, 2))  # [c,3,N]
        x, y, z = (X[:, k].view(c, H, W) for k in range(3))
        mx = xs[a:b].to(f32)[:, None, :]
        my = ys[a:b].to(f32)[:, :, None]
        mm = 1 + mx * mx + my * my  # [c,H,W]
        al = (x * mx + y * my + z) / mm  # ray parameter = camera z of the ray point (normalised)
        rx, ry, rz = x - al * mx, y - al * my, z - al
        r = torch.sqrt(rx * rx + ry * ry + rz * rz)
        bh = al <= 0
        v = valid[a:b]
        if not all_valid:
            bh &= v
        if bool(bh.any()):
            r = torch.where(bh, torch.sqrt(x * x + y * y + z * z), r)
        sg = sig[a:b].to(f32)[:, None, None]
        r = r * sg
        if not all_valid:
            r = r.masked_fill(~v, 0.0)
        resid[a:b] = r
        nv = torch.full((c,), float(N), dtype=F64, device=dev) if all_valid else v.reshape(c, -1).sum(1).to(F64)
        behind[a:b] = bh.reshape(c, -1).sum(1).to(F64) / nv.clamp_min(1)
        rr = r.reshape(c, N)[:, :: max(1, N // 100_000)]
        if all_valid:
            med[a:b] = rr.median(dim=1).values.to(F64)
        else:
            vv = v.reshape(c, N)[:, :: max(1, N // 100_000)]
            med[a:b] = torch.nanmedian(torch.where(vv, rr, torch.nan), 1).values.to(F64)
        rms[a:b] = torch.sqrt((r.reshape(c, N).to(F64) ** 2).sum(1) / nv.clamp_min(1))
        nz = torch.maximum(noise[a:b], 1e-6 * sig[a:b]).to(f32)[:, None, None]
        cf = torch.exp(-0.5 * (r / (3 * nz)) ** 2)
        cf = cf.masked_fill(bh, 0.0)
        if not all_valid:
            cf = cf.masked_fill(~v, 0.0)
        conf[a:b] = cf
        al = al.clamp_min(1e-6)
        depth[a:b] = al * sg
        # world point of the ray: mu + sig R^T (al m - t)
        Xr = torch.stack([al * mx, al * my, al], 1).reshape(c, 3, N) - t[a:b, :, None].to(f32)
        Pw = torch.bmm(R[a:b].transpose(1, 2).to(f32), Xr) * sg.reshape(c, 1, 1) + mu[a:b, :, None].to(f32)
        pts[a:b] = Pw.transpose(1, 2).reshape(c, H, W, 3)
    return depth, resid, conf, pts, behind, med, rms
