"""The compact binary file read by the pack's web 4D viewer (``web/fourd/viewer.js``).

Layout (little endian)::

    b"FD4D"  u32 version (2)  u32 header_length  header (UTF-8 JSON, space-padded to 4 bytes)  body

The JSON header has ``frames`` (the time slider's length), ``width``, ``height`` (the cameras' image
size), ``fps``, ``space`` (``"world"`` when cameras were recovered, else ``"pointmap"``), ``K`` and
``cam_to_world`` (per frame, OpenCV axes and pixels, or null), ``bbox_min`` / ``bbox_max`` (over all
layers) and up to two layers, each null or a dict of per-frame ``counts`` and per-frame byte offsets
into the body (every array starts on a 4-byte boundary):

``points`` (a point cloud, drawn as three.js points)
    ``positions`` float32 ``[n, 3]``, ``colors`` uint8 ``[n, 3]`` (sRGB).

``splats`` (3D Gaussians, drawn by Spark)
    ``positions`` float32 ``[n, 3]`` (means), ``colors`` float32 ``[n, 3]`` (the degree-0 colour
    ``max(0, 0.5 + SH_C0 f_dc)`` of the 3DGS reference, not clamped above), ``scales`` float32
    ``[n, 3]`` (standard deviations, world units), ``rotations`` float32 ``[n, 4]`` (unit quaternions
    w, x, y, z), ``opacities`` float32 ``[n]`` in (0, 1).

A layer may have fewer frames than ``frames`` (the viewer then holds its last one). Arrays that are the
same in several frames are stored once and their offsets repeated (a deformable splat set moves only
its means, so its colours, scales, rotations and opacities are written once).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..scene import Scene4D
from ..util.atomic import write_bytes_atomic

MAGIC = b"FD4D"
VERSION = 2
POINT_FIELDS = {"positions": ("<f4", 3), "colors": ("u1", 3)}
SPLAT_FIELDS = {"positions": ("<f4", 3), "colors": ("<f4", 3), "scales": ("<f4", 3), "rotations": ("<f4", 4),
                "opacities": ("<f4", 1)}

__all__ = ["MAGIC", "VERSION", "gaussians_viewer_asset_bytes",
           "viewer_asset_bytes", "write_viewer_asset"]


def _scene_points(scene: Scene4D, points_per_frame: int, min_confidence: float, seed: int) -> tuple[list, str]:
    """Per-frame ``{"positions", "colors"}`` numpy arrays of a scene (see :func:`viewer_asset_bytes`)."""
    f, h, w = scene.num_frames, *scene.size
    if scene.has_cameras:
        pts, space = scene.points(), "world"
    else:
        from ..geometry.registration import prepare_4dnex_points

        pts, space = prepare_4dnex_points(scene.xyz), "pointmap"
    pts = pts.reshape(f, h * w, 3).float()
    cols = (scene.rgb.reshape(f, h * w, 3).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    n = min(int(points_per_frame), h * w)
    subset = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    frames = []
    for i in range(f):
        p, c = pts[i, subset], cols[i, subset]
        keep = torch.isfinite(p).all(-1)
        if scene.confidence is not None and min_confidence > 0:
            keep &= scene.confidence[i].reshape(-1)[subset] >= min_confidence
        frames.append({"positions": p[keep].numpy(), "colors": c[keep].numpy()})
    return frames, space


def _gaussian_frames(gaussians, splats_per_frame: int, min_opacity: float, seed: int) -> list:
    """Per-frame splat arrays (see :func:`gaussians_viewer_asset_bytes`); a deformable set's frames share
    one colour/scale/rotation/opacity array object each, so the encoder writes them once."""
    gen = torch.Generator().manual_seed(seed)
    frames, shared, fixed = [], None, None
    for t in range(gaussians.num_frames):
        g = gaussians.frame(t).detach()
        if fixed is None or not gaussians.is_deformable:
            n = len(g)
            fixed = torch.randperm(n, generator=gen)[:splats_per_frame].sort().values if n > splats_per_frame else None
        if fixed is not None:
            g = g.subset(fixed)
        if shared is None or not gaussians.is_deformable:
            op = g.opacities.float()
            q = g.quats.float()
            q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            keep = op >= min_opacity
            if not gaussians.is_deformable:  # independent sets: drop a frame's non-finite splats
                keep &= torch.isfinite(g.means).all(-1)
            shared = {"keep": keep, "colors": g.colors.float()[keep].numpy(), "scales": g.scales.float()[keep].numpy(),
                      "rotations": q[keep].numpy(), "opacities": op[keep].numpy()}
        keep = shared["keep"]
        means = g.means.float()
        if not torch.isfinite(means[keep]).all():
            raise InputError(f"Frame {t} of these deformable Gaussians has non-finite means (NaN or inf): refit them.")
        frames.append({"positions": means[keep].numpy(), **{k: v for k, v in shared.items() if k != "keep"}})
    return frames


def gaussians_viewer_asset_bytes(gaussians, splats_per_frame: int = 100000, min_opacity: float = 0.0, seed: int = 0,
                                 scene: Scene4D | None = None, points_per_frame: int = 40000,
                                 min_confidence: float = 0.0) -> bytes:
    """Encode :class:`~fourd_core.splats.gaussians.Gaussians4D` (and optionally a scene's points) for the viewer.

    Args:
        gaussians: the splats; each frame's means, colours (degree-0 SH), standard deviations, unit
            quaternions (w, x, y, z) and opacities are stored as float32.
        splats_per_frame: at most this many splats per frame (a seeded random subset; the same indices in
            every frame of a deformable set, so splats do not flicker).
        min_opacity: splats below this opacity are left out (0 keeps every fitted splat; the viewer's
            renderer, like the 3DGS rasteriser, skips only fragments whose alpha is below 1/255).
        seed: seeds the subset.
        scene: also store this scene's point cloud (a second layer, see :func:`viewer_asset_bytes`).
        points_per_frame, min_confidence: for ``scene``'s points.

    Returns:
        the asset bytes (module docstring); cameras from ``scene`` when it has them, else from ``gaussians``.

    Raises:
        InputError: a deformable set with non-finite means (independent per-frame sets drop such splats).
    """
    header = _base_header(gaussians.num_frames, int(gaussians.width), int(gaussians.height), float(gaussians.fps),
                          "world", gaussians.K, gaussians.cam_to_world)
    layers = {"splats": _gaussian_frames(gaussians, int(splats_per_frame), float(min_opacity), seed)}
    if scene is not None:
        layers["points"], space = _scene_points(scene, points_per_frame, min_confidence, seed)
        header["frames"] = max(header["frames"], scene.num_frames)
        if scene.has_cameras:
            h, w = scene.size
            header.update(width=w, height=h, space=space, K=scene.K.float().tolist(),
                          cam_to_world=scene.cam_to_world.float().tolist())
    return _encode(header, layers)


def viewer_asset_bytes(scene: Scene4D, points_per_frame: int = 40000, min_confidence: float = 0.0, fps: float = 24.0,
                       seed: int = 0) -> bytes:
    """Encode ``scene``'s point cloud for the web viewer (the ``points`` layer).

    The same pixel subset (seeded, at most ``points_per_frame``) is used in every frame so points do not
    flicker; pixels with confidence below ``min_confidence`` or non-finite points are dropped. World
    points when the scene has cameras, else the 4DNeX point maps (``space`` ``"pointmap"``).
    """
    frames, space = _scene_points(scene, points_per_frame, min_confidence, seed)
    h, w = scene.size
    header = _base_header(scene.num_frames, w, h, float(fps), space, scene.K if scene.has_cameras else None,
                          scene.cam_to_world if scene.has_cameras else None)
    return _encode(header, {"points": frames})


def _base_header(frames, width, height, fps, space, K, cam_to_world) -> dict:
    has_cams = K is not None and cam_to_world is not None
    return {"frames": int(frames), "width": int(width), "height": int(height), "fps": float(fps), "space": space,
            "K": K.float().tolist() if has_cams else None,
            "cam_to_world": cam_to_world.float().tolist() if has_cams else None, "points": None, "splats": None}


def _encode(header: dict, layers: dict[str, list[dict]]) -> bytes:
    """Pack the layers' per-frame arrays after ``header`` (module docstring); an array object used by
    several frames is written once."""
    body = bytearray()
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for name, frames in layers.items():
        fields = POINT_FIELDS if name == "points" else SPLAT_FIELDS
        layer = {"counts": [int(len(f["positions"])) for f in frames], **{k: [] for k in fields}}
        written: dict[int, int] = {}
        for f in frames:
            p = f["positions"]
            if len(p):
                lo, hi = np.minimum(lo, p.min(0)), np.maximum(hi, p.max(0))
            for key, (dtype, width) in fields.items():
                a = f[key]
                if id(a) not in written:
                    written[id(a)] = len(body)
                    body += np.ascontiguousarray(a, dtype=dtype).reshape(len(p), width).tobytes()
                    body += b"\0" * (-len(body) % 4)
                layer[key].append(written[id(a)])
        header[name] = layer
    if not np.isfinite(lo).all():
        lo, hi = np.zeros(3), np.ones(3)
    header["bbox_min"], header["bbox_max"] = [float(x) for x in lo], [float(x) for x in hi]
    js = json.dumps(header).encode("utf-8")
    js += b" " * (-len(js) % 4)
    return MAGIC + struct.pack("<II", VERSION, len(js)) + js + bytes(body)


def write_viewer_asset(path: str | Path, scene: Scene4D, **kwargs) -> Path:
    """Write :func:`viewer_asset_bytes` atomically to ``path``."""
    return write_bytes_atomic(path, viewer_asset_bytes(scene, **kwargs))
