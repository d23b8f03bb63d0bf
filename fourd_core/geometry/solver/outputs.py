"""Level 5: outputs.  One pass over every pixel with the final cameras, and unprojection.

Each point is snapped on its pixel's ray (the free per-pixel depth of paper Eq. 9: the orthogonal
projection of the point on the ray), which gives the depth (camera z of the ray point), the
residual (the point-to-ray distance, world units) and a per-pixel confidence
``exp(-(residual / (3 sigma))^2 / 2)`` (sigma the frame's noise scale; 0 behind the camera and at
invalid pixels).  The snapped world points are not stored: they are the unprojection of that
depth (:func:`points_from_depth`, computed when asked for).  Pixels are processed in blocks of
rows, in float32, so memory stays at the outputs plus a few blocks of temporaries.
"""

from __future__ import annotations

import torch

from ...errors import InputError
from .data import F64, pixel_norm
from .model import rays


def write_outputs(points, valid, mu, sig, R, t, kap, noise, chunk_pixels: int = 400_000):
    """Depth, residual, confidence [F,H,W] (float32) and per-frame statistics (fraction behind
    the camera, median and RMS residual, float64 [F]).

    points [F,H,W,3]; valid [F,H,W] bool; mu [F,3], sig [F] frame normalisation; R [F,3,3],
    t [F,3], kap [F,4] cameras in normalised coordinates (float64); noise [F] (world units);
    ``chunk_pixels``: pixels per block (whole rows; at least one row).
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
    behind = torch.zeros(F, dtype=F64, device=dev)
    med = torch.zeros(F, dtype=F64, device=dev)
    rms = torch.zeros(F, dtype=F64, device=dev)
    all_valid = bool(valid.all())
    rows = max(1, min(H, int(chunk_pixels) // W))
    xs, ys = rays(kap, uh, vh)  # [F,W], [F,H]
    # confidence = exp(k r^2), k = -1 / (2 (3 sigma)^2)
    ks = (-0.5 / (3 * torch.maximum(noise, 1e-6 * sig)) ** 2).tolist()
    sigs = sig.tolist()
    # camera coordinates (normalised) X = (R / sig) (p - mu) + t; for float32 maps without invalid
    # pixels, mu is folded into the offset: X = (R / sig) p + (t - R mu / sig), saving a pass
    Rs_all = (R / sig[:, None, None]).to(f32)
    t_all = t.to(f32)
    t_fold = (t - torch.einsum("fab,fb->fa", R, mu) / sig[:, None]).to(f32)
    mu32 = mu.to(f32)
    fold = all_valid and points.dtype != F64
    Xbuf = torch.empty(3, rows * W, dtype=f32, device=dev)
    Rbuf = torch.empty(3, rows * W, dtype=f32, device=dev)
    for f in range(F):
        mx = xs[f].to(f32)[None, :]  # [1,W]
        my_f = ys[f].to(f32)[:, None]  # [H,1]
        sg = sigs[f]
        nb = 0
        for i0 in range(0, H, rows):
            i1 = min(H, i0 + rows)
            h, n = i1 - i0, (i1 - i0) * W
            p = points[f, i0:i1].reshape(n, 3)
            Xb, Rv = Xbuf[:, :n], Rbuf[:, :n]
            if fold:
                X = torch.addmm(t_fold[f, :, None], Rs_all[f], p.to(f32).T, out=Xb)  # [3,n]
            else:
                q = (p.to(F64) - mu[f]).to(f32) if p.dtype == F64 else p.to(f32) - mu32[f]
                if not all_valid:
                    q.masked_fill_(~valid[f, i0:i1].reshape(n, 1), 0.0)  # invalid pixels may hold NaN
                X = torch.addmm(t_all[f, :, None], Rs_all[f], q.T, out=Xb)
            x, y, z = (X[k].view(h, W) for k in range(3))
            my = my_f[i0:i1]
            imm = (1 + mx * mx + my * my).reciprocal_()  # 1 / |m|^2, m = (mx, my, 1) the ray
            # ray parameter = camera z of the ray point (normalised): (x mx + y my + z) / |m|^2
            al = torch.addcmul(z, x, mx).addcmul_(y, my).mul_(imm)
            rx, ry, rz = (Rv[k].view(h, W) for k in range(3))
            torch.addcmul(x, al, mx, value=-1, out=rx)
            torch.addcmul(y, al, my, value=-1, out=ry)
            torch.sub(z, al, out=rz)
            r = resid[f, i0:i1]
            torch.mul(rx, rx, out=r).addcmul_(ry, ry).addcmul_(rz, rz).sqrt_()  # |X - al m|
            bh = al <= 0
            if not all_valid:
                bh &= valid[f, i0:i1]
            any_bh = bool(bh.any())
            if any_bh:  # behind the camera: the distance to the camera centre
                nb += int(bh.sum())
                r.copy_(torch.where(bh, (x * x + y * y + z * z).sqrt(), r))
            r.mul_(sg)
            if not all_valid:
                r.masked_fill_(~valid[f, i0:i1], 0.0)
            c = conf[f, i0:i1]
            torch.mul(r, r, out=c).mul_(ks[f]).exp_()
            if any_bh:
                c.masked_fill_(bh, 0.0)
            if not all_valid:
                c.masked_fill_(~valid[f, i0:i1], 0.0)
            torch.mul(al.clamp_min_(1e-6), sg, out=depth[f, i0:i1])
        v = valid[f].reshape(-1)
        nv = float(N) if all_valid else float(v.sum())
        behind[f] = nb / max(nv, 1.0)
        sub = max(1, N // 20_000)  # the median from ~20k pixels a frame (about 1 % precision)
        rr = resid[f].reshape(-1)[::sub]
        if all_valid:
            med[f] = float(rr.median())
        else:
            med[f] = float(torch.nanmedian(torch.where(v[::sub], rr, torch.nan)))
        rms[f] = float(torch.linalg.vector_norm(resid[f], dtype=F64)) / max(nv, 1.0) ** 0.5
    return depth, resid, conf, behind, med, rms


def points_from_depth(depth: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    """Unproject depth maps into world points (paper Eq. 10: ``X = R (d K^-1 [u, v, 1]^T) + t``).

    Args:
        depth: [F,H,W] (or [H,W]) z-depth in the camera frame, world units.
        K: [F,3,3] or [3,3] pinhole intrinsics in pixels (skew allowed).
        cam_to_world: [F,4,4] or [4,4] OpenCV camera-to-world poses.

    Returns:
        [F,H,W,3] world points (or [H,W,3] when ``depth`` is [H,W]), in the dtype of ``depth``
        (float32 at least); pixel (i, j) is taken at (u, v) = (j, i) (OpenCV, integer centres).

    Raises:
        InputError: on shapes that do not match or a non-floating ``depth``.
    """
    if not isinstance(depth, torch.Tensor) or not depth.is_floating_point():
        raise InputError("depth must be a floating-point tensor [F,H,W] or [H,W].")
    single = depth.dim() == 2
    d = depth[None] if single else depth
    if d.dim() != 3:
        raise InputError(f"depth must be [F,H,W] or [H,W]; got {tuple(depth.shape)}.")
    F, H, W = d.shape
    K = torch.as_tensor(K, device=d.device)
    T = torch.as_tensor(cam_to_world, device=d.device)
    if K.shape[-2:] != (3, 3) or T.shape[-2:] != (4, 4):
        raise InputError(f"K must be [...,3,3] and cam_to_world [...,4,4]; got {tuple(K.shape)} and {tuple(T.shape)}.")
    K = K.expand(F, 3, 3) if K.dim() == 2 else K
    T = T.expand(F, 4, 4) if T.dim() == 2 else T
    if K.shape[0] != F or T.shape[0] != F:
        raise InputError(f"K and cam_to_world need {F} frames (or one); got {K.shape[0]} and {T.shape[0]}.")
    out_dtype = d.dtype if d.dtype == F64 else torch.float32
    Kinv = torch.linalg.inv(K.to(F64))
    Rw, tw = T[:, :3, :3].to(F64), T[:, :3, 3].to(out_dtype)
    jj = torch.arange(W, dtype=F64, device=d.device)
    ii = torch.arange(H, dtype=F64, device=d.device)
    pix = torch.stack([jj[None, :].expand(H, W), ii[:, None].expand(H, W), torch.ones(H, W, dtype=F64, device=d.device)], -1)
    X = torch.empty(F, H, W, 3, dtype=out_dtype, device=d.device)
    # frame by frame: the world direction of every pixel's ray (z = 1 in the camera, float64), then
    # X = depth * direction + t in the output dtype (a few frame-sized temporaries, whatever F)
    for f in range(F):
        ray = pix @ Kinv[f].T
        dirs = ((ray / ray[..., 2:3]) @ Rw[f].T).to(out_dtype)
        torch.addcmul(tw[f], dirs, d[f, ..., None].to(out_dtype), out=X[f])
    return X[0] if single else X
