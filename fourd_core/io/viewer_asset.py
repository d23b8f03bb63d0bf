"""The compact binary file read by the pack's web 4D viewer (``web/fourd/viewer.js``).

Layout (little endian)::

    b"FD4D"  u32 version (1)  u32 header_length  header (UTF-8 JSON, space-padded to 4 bytes)  body

The JSON header has ``frames``, ``width``, ``height``, ``fps``, ``counts`` (points per frame),
``positions`` / ``colors`` (byte offsets into the body per frame), ``bbox_min`` / ``bbox_max``,
``K`` and ``cam_to_world`` (per frame, OpenCV, or null) and ``space`` (``"world"`` when cameras were
recovered, else ``"pointmap"``). Positions are float32 ``xyz``, colours uint8 ``rgb``.

Gaussian splats (:func:`gaussians_viewer_asset_bytes`) add ``"splats": true`` and per-frame byte
offsets ``scales`` (float32 standard deviation in world units, the largest axis) and ``opacities``
(uint8, opacity x 255); the viewer draws them as round splats of that size.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from ..scene import Scene4D
from ..util.atomic import write_bytes_atomic

MAGIC = b"FD4D"
VERSION = 1


def viewer_asset_bytes(scene: Scene4D, points_per_frame: int = 40000, min_confidence: float = 0.0, fps: float = 24.0,
                       seed: int = 0) -> bytes:
    """Encode ``scene`` for the web viewer.

    The same pixel subset (seeded, at most ``points_per_frame``) is used in every frame so points
    do not flicker; pixels with confidence below ``min_confidence`` or non-finite points are dropped.
    """
    f, h, w = scene.num_frames, *scene.size
    if scene.has_cameras:
        pts, space = scene.points(), "world"
    else:
        from ..geometry.registration import prepare_4dnex_points

        pts, space = prepare_4dnex_points(scene.xyz), "pointmap"
    pts = pts.reshape(f, h * w, 3).float()
    cols = (scene.rgb.reshape(f, h * w, 3).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    n = min(points_per_frame, h * w)
    subset = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    header = {"frames": f, "width": w, "height": h, "fps": fps, "space": space, "K": None, "cam_to_world": None}
    frames = []
    for i in range(f):
        p, c = pts[i, subset], cols[i, subset]
        keep = torch.isfinite(p).all(-1)
        if scene.confidence is not None and min_confidence > 0:
            keep &= scene.confidence[i].reshape(-1)[subset] >= min_confidence
        frames.append((p[keep], c[keep]))
    if scene.has_cameras:
        header["K"] = scene.K.float().tolist()
        header["cam_to_world"] = scene.cam_to_world.float().tolist()
    return _encode(header, frames)


def gaussians_viewer_asset_bytes(gaussians, splats_per_frame: int = 60000, min_opacity: float = 0.05,
                                 seed: int = 0) -> bytes:
    """Encode :class:`~fourd_core.splats.gaussians.Gaussians4D` for the web viewer (round splats).

    Per frame, at most ``splats_per_frame`` splats are kept (a seeded random subset; the same indices in
    every frame of a deformable set, so splats do not flicker), then those with opacity below
    ``min_opacity`` are dropped. Scales are the largest standard deviation of each splat.
    """
    header = {"frames": gaussians.num_frames, "width": int(gaussians.width), "height": int(gaussians.height),
              "fps": float(gaussians.fps), "space": "world", "splats": True, "K": None, "cam_to_world": None}
    gen = torch.Generator().manual_seed(seed)
    frames = []
    fixed = None
    for t in range(gaussians.num_frames):
        g = gaussians.frame(t)
        n = len(g)
        if fixed is None or not gaussians.is_deformable:
            idx = torch.randperm(n, generator=gen)[:splats_per_frame].sort().values if n > splats_per_frame else None
            fixed = idx
        idx = fixed
        if idx is not None:
            g = g.subset(idx)
        op = g.opacities.detach().float()
        keep = (op >= min_opacity) & torch.isfinite(g.means).all(-1)
        col = (g.colors.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        frames.append((g.means.detach().float()[keep], col[keep], g.scales.detach().float().max(-1).values[keep],
                       (op[keep] * 255 + 0.5).to(torch.uint8)))
    if gaussians.K is not None and gaussians.cam_to_world is not None:
        header["K"] = gaussians.K.float().tolist()
        header["cam_to_world"] = gaussians.cam_to_world.float().tolist()
    return _encode(header, frames)


def _encode(header: dict, frames: list[tuple]) -> bytes:
    """Pack ``(positions, colours[, scales, opacities])`` per frame after ``header`` (see the module docstring)."""
    body = bytearray()
    keys = ("positions", "colors", "scales", "opacities")
    for k in keys[:len(frames[0]) if frames else 2]:
        header[k] = []
    header["counts"] = []
    lo = torch.full((3,), float("inf"))
    hi = torch.full((3,), float("-inf"))
    for arrays in frames:
        p = arrays[0]
        if len(p):
            lo, hi = torch.minimum(lo, p.min(0).values), torch.maximum(hi, p.max(0).values)
        header["counts"].append(int(len(p)))
        for key, a in zip(keys, arrays):
            header[key].append(len(body))
            a = a.cpu().numpy()
            body += (a.astype("<f4") if a.dtype.kind == "f" else a).tobytes()
            body += b"\0" * (-len(body) % 4)
    if not torch.isfinite(lo).all():
        lo, hi = torch.zeros(3), torch.ones(3)
    header["bbox_min"], header["bbox_max"] = lo.tolist(), hi.tolist()
    js = json.dumps(header).encode("utf-8")
    js += b" " * (-len(js) % 4)
    return MAGIC + struct.pack("<II", VERSION, len(js)) + js + bytes(body)


def write_viewer_asset(path: str | Path, scene: Scene4D, **kwargs) -> Path:
    """Write :func:`viewer_asset_bytes` atomically to ``path``."""
    return write_bytes_atomic(path, viewer_asset_bytes(scene, **kwargs))


def read_viewer_asset(data: bytes) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    """Decode an asset: ``(header, positions per frame [N, 3] float32, colours per frame [N, 3] uint8)``.
    Splat assets also carry per-frame scales/opacities: see :func:`read_splat_extras`."""
    if data[:4] != MAGIC:
        raise ValueError("not a FD4D viewer asset")
    version, hlen = struct.unpack_from("<II", data, 4)
    header = json.loads(data[12:12 + hlen])
    body = memoryview(data)[12 + hlen:]
    pos, col = [], []
    for n, po, co in zip(header["counts"], header["positions"], header["colors"]):
        pos.append(np.frombuffer(body, dtype="<f4", count=3 * n, offset=po).reshape(n, 3))
        col.append(np.frombuffer(body, dtype=np.uint8, count=3 * n, offset=co).reshape(n, 3))
    return header, pos, col


def read_splat_extras(data: bytes) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-frame ``(scales [N] float32, opacities [N] uint8)`` of a splat asset."""
    hlen = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[12:12 + hlen])
    if not header.get("splats"):
        raise ValueError("not a splat asset")
    body = memoryview(data)[12 + hlen:]
    sc = [np.frombuffer(body, dtype="<f4", count=n, offset=o) for n, o in zip(header["counts"], header["scales"])]
    op = [np.frombuffer(body, dtype=np.uint8, count=n, offset=o) for n, o in zip(header["counts"], header["opacities"])]
    return sc, op
