"""Camera and depth exports: ``cameras.json`` (OpenCV), nerfstudio ``transforms.json``, depth as
16-bit PNG plus a ``.npy`` array. All written atomically.

Conventions of ``cameras.json``: OpenCV camera axes (x right, y down, z forward); ``K`` in pixels
with pixel centres at integer coordinates (pixel (row i, col j) is at u = j, v = i);
``cam_to_world`` 4x4 maps camera to world coordinates; depth is z in the camera frame.
nerfstudio (``transforms.json``) uses OpenGL camera axes (y up, z backward) and pixel centres at
``+0.5``; the conversion is ``c2w_gl = c2w_cv @ diag(1, -1, -1, 1)`` and ``c_ns = c_cv + 0.5``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..util.atomic import atomic_path, write_bytes_atomic, write_text_atomic

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


def _check(K: torch.Tensor, cam_to_world: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    K = torch.as_tensor(K).double().cpu().numpy()
    c2w = torch.as_tensor(cam_to_world).double().cpu().numpy()
    if K.ndim != 3 or K.shape[1:] != (3, 3) or c2w.shape != (K.shape[0], 4, 4):
        raise InputError(f"Need K [F,3,3] and cam_to_world [F,4,4], got {K.shape} and {c2w.shape}.")
    if not (np.isfinite(K).all() and np.isfinite(c2w).all()):
        raise InputError("Cameras contain NaN/inf.")
    return K, c2w


def cameras_dict(K, cam_to_world, height: int, width: int, extra: dict | None = None) -> dict:
    """The ``cameras.json`` document (see module docstring for conventions)."""
    K, c2w = _check(K, cam_to_world)
    frames = []
    for i in range(K.shape[0]):
        frames.append({"index": i, "K": K[i].tolist(), "cam_to_world": c2w[i].tolist(),
                       "fx": float(K[i, 0, 0]), "fy": float(K[i, 1, 1]), "cx": float(K[i, 0, 2]), "cy": float(K[i, 1, 2])})
    doc = {"convention": "opencv", "axes": "x right, y down, z forward",
           "pixel_centers": "integer coordinates (u = column, v = row)", "width": int(width), "height": int(height),
           "frames": frames}
    if extra:
        doc.update(extra)
    return doc


def write_cameras_json(path: str | Path, K, cam_to_world, height: int, width: int, extra: dict | None = None) -> Path:
    """Write ``cameras.json`` atomically."""
    return write_text_atomic(path, json.dumps(cameras_dict(K, cam_to_world, height, width, extra), indent=1))


def read_cameras_json(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``(K [F,3,3], cam_to_world [F,4,4])`` float32 from a ``cameras.json``."""
    doc = json.loads(Path(path).read_text())
    K = torch.tensor([f["K"] for f in doc["frames"]], dtype=torch.float32)
    c2w = torch.tensor([f["cam_to_world"] for f in doc["frames"]], dtype=torch.float32)
    return K, c2w


def transforms_dict(K, cam_to_world, height: int, width: int, image_paths: list[str],
                    depth_paths: list[str] | None = None, depth_unit_scale: float | None = None) -> dict:
    """A nerfstudio ``transforms.json`` document (per-frame intrinsics, OpenGL axes)."""
    K, c2w = _check(K, cam_to_world)
    if len(image_paths) != K.shape[0]:
        raise InputError(f"{len(image_paths)} image paths for {K.shape[0]} cameras.")
    frames = []
    for i in range(K.shape[0]):
        fr = {"file_path": image_paths[i], "transform_matrix": (c2w[i] @ OPENCV_TO_OPENGL).tolist(),
              "fl_x": float(K[i, 0, 0]), "fl_y": float(K[i, 1, 1]),
              "cx": float(K[i, 0, 2]) + 0.5, "cy": float(K[i, 1, 2]) + 0.5, "w": int(width), "h": int(height)}
        if depth_paths:
            fr["depth_file_path"] = depth_paths[i]
        frames.append(fr)
    doc = {"camera_model": "OPENCV", "w": int(width), "h": int(height), "frames": frames}
    if depth_unit_scale is not None:
        doc["depth_unit_scale_factor"] = float(depth_unit_scale)
    return doc


def write_transforms_json(path: str | Path, *args, **kwargs) -> Path:
    """Write nerfstudio ``transforms.json`` atomically (arguments of :func:`transforms_dict`)."""
    return write_text_atomic(path, json.dumps(transforms_dict(*args, **kwargs), indent=1))


def depth_png_scale(depth: torch.Tensor) -> float:
    """Scale ``s`` so that ``round(depth * s)`` uses the uint16 range: ``65535 / max(depth)``."""
    m = float(depth[torch.isfinite(depth)].max()) if torch.isfinite(depth).any() else 0.0
    return 65535.0 / m if m > 0 else 1.0


def write_depth_png(path: str | Path, depth: torch.Tensor, scale: float) -> Path:
    """Write one depth map ``[H, W]`` as a 16-bit PNG: ``value = round(depth * scale)``, 0 = invalid."""
    import imageio.v2 as imageio

    d = torch.nan_to_num(depth.double(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    arr = np.clip(np.round(d.cpu().numpy() * scale), 0, 65535).astype(np.uint16)
    buf = io.BytesIO()
    imageio.imwrite(buf, arr, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())


def write_npy(path: str | Path, array: torch.Tensor) -> Path:
    """Save a tensor as ``.npy`` (plain array, loadable with ``np.load(allow_pickle=False)``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array.detach().cpu().numpy(), allow_pickle=False)
    return Path(path)
