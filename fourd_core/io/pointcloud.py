"""Point-cloud files: PLY through open3d, GLB (glTF binary, POINTS primitive with COLOR_0) through
trimesh - the format ComfyUI's core Preview3D node shows. Both written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .atomic import atomic_path, write_bytes_atomic


def _as_points(points, colors) -> tuple[np.ndarray, np.ndarray]:
    p = torch.as_tensor(points).detach().float().reshape(-1, 3).cpu().numpy()
    c = torch.as_tensor(colors).detach().float().reshape(-1, 3).cpu().numpy()
    if p.shape != c.shape:
        raise InputError(f"points and colors must have the same number of entries, got {p.shape} and {c.shape}.")
    if not np.isfinite(p).all():
        raise InputError("Point cloud contains NaN/inf coordinates; filter them (e.g. with a confidence mask).")
    return p, np.clip(c, 0.0, 1.0)


def write_ply(path: str | Path, points, colors) -> Path:
    """Write a coloured point cloud as binary PLY with open3d.

    Args:
        points: ``[..., 3]`` float coordinates. colors: ``[..., 3]`` float in [0, 1].
    """
    import open3d as o3d

    p, c = _as_points(points, colors)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p.astype(np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(c.astype(np.float64))
    with atomic_path(path) as tmp:
        if not o3d.io.write_point_cloud(str(tmp), pcd, write_ascii=False):
            raise OSError(f"open3d could not write {path}.")
    return Path(path)


def read_ply(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a PLY point cloud: ``(points [N, 3] float32, colors [N, 3] float32 in [0, 1])``."""
    import open3d as o3d

    if not Path(path).is_file():
        raise InputError(f"PLY file not found: {path}.")
    pcd = o3d.io.read_point_cloud(str(path))
    return (torch.from_numpy(np.asarray(pcd.points)).float(), torch.from_numpy(np.asarray(pcd.colors)).float())


def glb_bytes(points, colors) -> bytes:
    """A GLB document with one POINTS primitive (POSITION + COLOR_0 as RGBA8), via trimesh."""
    import trimesh

    p, c = _as_points(points, colors)
    rgba = np.concatenate([(c * 255 + 0.5).astype(np.uint8), np.full((len(c), 1), 255, np.uint8)], axis=1)
    return trimesh.PointCloud(p, colors=rgba).export(file_type="glb")


def write_glb(path: str | Path, points, colors) -> Path:
    """Write a coloured point cloud as GLB (POINTS with COLOR_0), atomically."""
    return write_bytes_atomic(path, glb_bytes(points, colors))


def clean_points(points: torch.Tensor, colors: torch.Tensor, *, confidence: torch.Tensor | None = None,
                 min_confidence: float = 0.0, voxel_size: float = 0.0, outlier_neighbors: int = 0,
                 outlier_std: float = 2.0, max_points: int | None = None, seed: int = 0):
    """Filter a point cloud for export.

    Steps, each optional: drop points with ``confidence < min_confidence``; voxel down-sampling
    (open3d, ``voxel_size`` in scene units); statistical outlier removal (open3d,
    ``outlier_neighbors`` neighbours, ``outlier_std`` standard deviations); a random subset of at
    most ``max_points`` (seeded). Non-finite points are always dropped.

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
    if (voxel_size > 0 or outlier_neighbors > 0) and len(p):
        import open3d as o3d

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
