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
    x_buf = xr_buf = None  # per-chunk buffers, reused
    for a in range(0, F, step):
        b = min(F, a + step)
        c = b - a
        Rs = (R[a:b] / sig[a:b, None, None]).to(f32)
        q = points[a:b].reshape(c, N, 3)
        q = (q.to(F64) - mu[a:b, None]).to(f32) if q.dtype == F64 else q.to(f32) - mu[a:b, None].to(f32)
        if not all_valid:
            q = q.masked_fill(~valid[a:b].reshape(c, N, 1), 0.0)  # invalid pixels may hold NaN
        if x_buf is None or x_buf.shape[0] != c:
            x_buf = torch.empty(c, 3, N, dtype=f32, device=dev)
            xr_buf = torch.empty(c, H, W, 3, dtype=f32, device=dev)  # ray points of a chunk, rows
        # X = Rs q + t [c,3,N]; matmul into a buffer: MKL's fast path (baddbmm copies q first)
        X = torch.matmul(Rs, q.transpose(1, 2), out=x_buf).add_(t[a:b, :, None].to(f32))
        x, y, z = (X[:, k].view(c, H, W) for k in range(3))
        mx = xs[a:b].to(f32)[:, None, :]
        my = ys[a:b].to(f32)[:, :, None]
        imm = 1 / (1 + mx * mx + my * my)  # [c,H,W]
        # ray parameter = camera z of the ray point (normalised): (x mx + y my + z) / |m|^2
        al = torch.addcmul(z, x, mx).addcmul_(y, my).mul_(imm)
        # |X - al m|^2, in place (the output pass is memory-bound: few temporaries)
        r = torch.addcmul(x, al, mx, value=-1).square_()
        r.add_(torch.addcmul(y, al, my, value=-1).square_()).add_((z - al).square_()).sqrt_()
        bh = al <= 0
        v = valid[a:b]
        if not all_valid:
            bh &= v
        if bool(bh.any()):
            r = torch.where(bh, torch.sqrt(x * x + y * y + z * z), r)
        sg = sig[a:b].to(f32)[:, None, None]
        r.mul_(sg)
        if not all_valid:
            r = r.masked_fill(~v, 0.0)
        resid[a:b] = r
        nv = torch.full((c,), float(N), dtype=F64, device=dev) if all_valid else v.reshape(c, -1).sum(1).to(F64)
        behind[a:b] = bh.reshape(c, -1).sum(1).to(F64) / nv.clamp_min(1)
        sub = max(1, N // 20_000)  # the median from ~20k pixels a frame (about 1 % precision)
        rr = r.reshape(c, N)[:, ::sub]
        if all_valid:
            med[a:b] = rr.median(dim=1).values.to(F64)
        else:
            vv = v.reshape(c, N)[:, ::sub]
            med[a:b] = torch.nanmedian(torch.where(vv, rr, torch.nan), 1).values.to(F64)
        rms[a:b] = torch.linalg.vector_norm(r.reshape(c, N), dim=1, dtype=F64) / nv.clamp_min(1).sqrt()
        nz = torch.maximum(noise[a:b], 1e-6 * sig[a:b]).to(f32)[:, None, None]
        torch.mul(r, 1 / (3 * nz), out=conf[a:b]).square_().mul_(-0.5).exp_()
        conf[a:b].masked_fill_(bh, 0.0)
        if not all_valid:
            conf[a:b].masked_fill_(~v, 0.0)
        al.clamp_min_(1e-6)
        torch.mul(al, sg, out=depth[a:b])
        # world point of the ray, as rows: mu + sig (al m - t)^T R = (al m)^T (sig R) + (mu - sig t^T R)
        Rs_wt = (R[a:b] * sig[a:b, None, None]).transpose(1, 2).contiguous().to(f32)
        bias = (mu[a:b] - sig[a:b, None] * torch.einsum("fb,fba->fa", t[a:b], R[a:b])).to(f32)
        torch.mul(al, mx, out=xr_buf[..., 0])
        torch.mul(al, my, out=xr_buf[..., 1])
        xr_buf[..., 2] = al
        out = pts[a:b].view(c, N, 3)
        # rows times (sig R): a transposed view of a contiguous matrix takes MKL's fast path
        torch.matmul(xr_buf.view(c, N, 3), Rs_wt.transpose(1, 2), out=out)
        out.add_(bias[:, None, :])
    return depth, resid, conf, pts, behind, med, rms
