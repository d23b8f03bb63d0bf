"""Point-cloud files: binary PLY through ``plyfile`` and GLB (glTF binary, a POINTS primitive with
COLOR_0, the format ComfyUI's core Preview3D node shows) through ``trimesh``. Both are pure pip
installs, written atomically. open3d is optional: it only serves the optional clean-up steps
(voxel down-sampling, statistical outlier removal) of :func:`clean_points`.

Axes: PLY keeps the scene's world frame (OpenCV: x right, y down, z forward, as 3DGS / COLMAP /
nerfstudio tools expect); GLB is converted to glTF's y-up frame (x right, y up, z towards the
viewer: ``(x, y, z) -> (x, -y, -z)``, a rotation by 180 degrees about x) so the scene shows upright
in glTF viewers (glTF 2.0 specification, section 3.4 "Coordinate System and Units").
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, brief
from ..util.atomic import write_bytes_atomic

#: What to do on a Debian/Ubuntu machine where ``import open3d`` fails for want of a system library.
OPEN3D_FIX = ("pip install open3d; on Debian/Ubuntu open3d also needs the system library libusb "
              "(apt-get install libusb-1.0-0)")

#: OpenCV (y down, z forward) -> glTF (y up, z backward): a 180 degree rotation about x.
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0]).astype(np.float32)


@functools.lru_cache(maxsize=1)
def open3d_status() -> tuple[object | None, str]:
    """Try to import open3d once: ``(module or None, reason it is unavailable or "")``.

    open3d wheels link system libraries pip cannot install (``libusb-1.0.so.0`` on Debian), so a
    failed import is an expected state, never a crash: callers skip their optional step and say so.
    """
    try:
        import open3d  # noqa: PLC0415 - optional heavy dependency
    except Exception as exc:  # ImportError, OSError from a missing shared library
        return None, f"open3d is not usable here ({brief(exc)}). Fix: {OPEN3D_FIX}."
    return open3d, ""


@functools.lru_cache(maxsize=1)
def warn_if_open3d_unusable() -> bool:
    """Whether open3d is unusable here; the first call that finds it so warns (``UserWarning``) that
    voxel down-sampling / outlier removal will be skipped and names the fix (:data:`OPEN3D_FIX`).

    Cached, so the note is shown at most once per process however many scenes, frames or option
    checks ask (before, one export showed it up to three times).
    """
    o3d, why = open3d_status()
    if o3d is None:
        warnings.warn(f"Voxel down-sampling / outlier removal will be skipped: {why}", stacklevel=2)
    return o3d is None


def _as_points(points, colors) -> tuple[np.ndarray, np.ndarray]:
    p = torch.as_tensor(points).detach().float().reshape(-1, 3).cpu().numpy()
    c = torch.as_tensor(colors).detach().float().reshape(-1, 3).cpu().numpy()
    if p.shape != c.shape:
        raise InputError(f"points and colors must have the same number of entries, got {p.shape} and {c.shape}.")
    if not np.isfinite(p).all():
        raise InputError("Point cloud contains NaN/inf coordinates; filter them (e.g. with a confidence mask).")
    return p, np.clip(c, 0.0, 1.0)


def _to_uint8(c: np.ndarray) -> np.ndarray:
    return (c * 255.0 + 0.5).astype(np.uint8)


def ply_bytes(points, colors) -> bytes:
    """A binary little-endian PLY document: ``vertex`` elements with float32 ``x y z`` and uchar
    ``red green blue`` (the property names three.js' PLYLoader, Blender, MeshLab and open3d read).

    Args:
        points: ``[..., 3]`` coordinates (scene units, world frame). colors: ``[..., 3]`` float in [0, 1].
    Raises:
        InputError: mismatched sizes or NaN/inf coordinates.
    """
    import io

    from plyfile import PlyData, PlyElement

    p, c = _as_points(points, colors)
    rgb = _to_uint8(c)
    vertex = np.empty(len(p), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = p[:, 0], p[:, 1], p[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    buf = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<",
            comments=["ComfyUI-FourD point cloud; OpenCV world axes (x right, y down, z forward)"]).write(buf)
    return buf.getvalue()


def write_ply(path: str | Path, points, colors) -> Path:
    """Write a coloured point cloud as binary PLY (see :func:`ply_bytes`), atomically."""
    return write_bytes_atomic(path, ply_bytes(points, colors))


def glb_bytes(points, colors) -> bytes:
    """A GLB document with one POINTS primitive (POSITION float32 + COLOR_0 as RGBA8), via trimesh.

    Points are given in the scene's OpenCV world frame and stored in glTF's y-up frame
    (:data:`OPENCV_TO_GLTF`), so viewers show the scene upright.
    """
    import trimesh

    p, c = _as_points(points, colors)
    rgba = np.concatenate([_to_uint8(c), np.full((len(c), 1), 255, np.uint8)], axis=1)
    return trimesh.PointCloud(p @ OPENCV_TO_GLTF.T, colors=rgba).export(file_type="glb")


def write_glb(path: str | Path, points, colors) -> Path:
    """Write a coloured point cloud as GLB (POINTS with COLOR_0, glTF y-up), atomically."""
    return write_bytes_atomic(path, glb_bytes(points, colors))


def needs_open3d(voxel_size: float = 0.0, outlier_neighbors: int = 0) -> bool:
    """Whether these :func:`clean_points` options use open3d."""
    return voxel_size > 0 or outlier_neighbors > 0


def clean_points(points: torch.Tensor, colors: torch.Tensor, *, confidence: torch.Tensor | None = None,
                 min_confidence: float = 0.0, voxel_size: float = 0.0, outlier_neighbors: int = 0,
                 outlier_std: float = 2.0, max_points: int | None = None, seed: int = 0):
    """Filter a point cloud for export.

    Steps, each optional: drop points with ``confidence < min_confidence``; voxel down-sampling
    (open3d, ``voxel_size`` in scene units); statistical outlier removal (open3d,
    ``outlier_neighbors`` neighbours, ``outlier_std`` standard deviations); a random subset of at
    most ``max_points`` (seeded). Non-finite points are always dropped. When open3d cannot be
    imported, its two steps are skipped with a warning that names the fix (:data:`OPEN3D_FIX`), shown
    once per process (:func:`warn_if_open3d_unusable`).

    Args:
        points: ``[..., 3]``; colors: ``[..., 3]`` in [0, 1]; confidence: ``[...]`` in [0, 1].
    Returns:
        ``(points [N, 3], colors [N, 3])`` float32 tensors.
    """
    p = points.reshape(-1, 3).float()
    c = colors.reshape(-1, 3).float()
    keep = torch.isfinite(p).all(-1)
    if confidence is not None and min_confidence > 0:
        keep &= confidence.reshape(-1) >= min_confidence
    p, c = p[keep], c[keep]
    if needs_open3d(voxel_size, outlier_neighbors) and len(p) and not warn_if_open3d_unusable():
        o3d, _ = open3d_status()
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p.double().numpy()))
        pcd.colors = o3d.utility.Vector3dVector(c.clamp(0, 1).double().numpy())
        if voxel_size > 0:
            pcd = pcd.voxel_down_sample(voxel_size)
        if outlier_neighbors > 0 and len(pcd.points) > outlier_neighbors:
            pcd, _ = pcd.remove_statistical_outlier(nb_neighbors=outlier_neighbors, std_ratio=outlier_std)
        p = torch.from_numpy(np.asarray(pcd.points)).float()
        c = torch.from_numpy(np.asarray(pcd.colors)).float()
    if max_points is not None and len(p) > max_points:
        idx = torch.randperm(len(p), generator=torch.Generator().manual_seed(seed))[:max_points].sort().values
        p, c = p[idx], c[idx]
    return p, c
